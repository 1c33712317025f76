"""In-place optimizer kernels: the backend API of fastlr.

Each function updates a parameter and its optimizer state in place, on the caller's
float32 or float64 NumPy arrays, with torch.optim's update rule (its single-tensor path).
Everything is validated before any buffer is touched; the update itself runs in compiled
code without the GIL, split across OpenMP threads for large arrays.

>>> import numpy as np
>>> from fastlr import kernels
>>> p = np.ones(4, dtype=np.float32)
>>> g = np.full(4, 0.5, dtype=np.float32)
>>> state = kernels.make_state("adam", p)       # {'exp_avg': ..., 'exp_avg_sq': ...}
>>> kernels.adam(p, g, **state, step=1, lr=0.1)
>>> p
array([0.9, 0.9, 0.9, 0.9], dtype=float32)

``fastlr.reference`` holds pure-NumPy twins with the same names and signatures.
"""

from __future__ import annotations

from typing import Any, Sequence, Union

import numpy as np
from numpy.typing import DTypeLike, NDArray

from fastlr import _kernels, _specs
from fastlr._kernels import HAVE_OPENMP, get_num_threads, set_num_threads
from fastlr._core.args import NONNEG, checked_real, flag_arg
from fastlr._core.dispatch import module as _variant
from fastlr._core.sklearn_kernels import adam_sklearn, sgd_sklearn
from fastlr._core.muon import muon  # noqa: F401  (Muon's validated kernel: fastlr.Muon)

_ema = _variant("ema")      # fastlr._core.ema, or its x86-64-v3 build
ema_update, swap_buffers = _ema.ema_update, _ema.swap_buffers
# Adafactor's validated kernel (fastlr.Adafactor's), the build of this CPU as the class's
adafactor = _variant("adafactor").adafactor
adam_bf16_state = _kernels.adam_bf16_state      # Adam / AdamW with bfloat16 state
adam_int8_state = _variant("int8state").adam_int8_state   # ... with 8-bit block-wise state
adam_mixed = _variant("mixed").adam_mixed       # Adam / AdamW on float16 / bfloat16 params
adam_mixed_int8_state = _variant("mixed").adam_mixed_int8_state     # ... with 8-bit state

# the validated kernels (sgd, rmsprop, adam, ...): one per row of the table
globals().update({_name: getattr(_kernels, _name) for _name in _specs.kernels()})

__all__ = [
    *_specs.kernels(),
    "sgd_sklearn",
    "adam_sklearn",
    "ema_update",
    "swap_buffers",
    "make_state",
    "state_names",
    "get_num_threads",
    "set_num_threads",
    "HAVE_OPENMP",
    "KERNELS",
    # the validated kernels of the classes outside the table (not in KERNELS: no
    # make_state; their state has its own shapes)
    "muon",
    "adafactor",
    "adam_bf16_state",
    "adam_int8_state",
    "adam_mixed",
    "adam_mixed_int8_state",
]

#: The kernel names, the same in ``fastlr.kernels`` and ``fastlr.reference`` (the table's).
KERNELS = _specs.kernels()


def _kernel_row(kernel, who="state_names"):
    for row in _specs.OPTIMIZERS.values():
        if row.kernel == kernel:
            return row
    raise ValueError(f"fastlr.kernels.{who}: unknown kernel {kernel!r}; expected one of "
                     f"{', '.join(KERNELS)}")


def state_names(kernel: str, *, momentum: float = 0.0, centered: bool = False,
                amsgrad: bool = False, **options: Any) -> tuple[str, ...]:
    """The state buffers ``kernel`` needs with these options, in argument order.

    The buffers and their conditions are the table's (``fastlr._specs``, ``State.when``);
    an option the kernel's conditions do not use must be left at its default.

    Parameters
    ----------
    kernel : str
        A kernel name of :data:`KERNELS` (``"adam"``, ``"sgd"``, ...).
    momentum : float, default 0.0
        SGD and RMSprop: the momentum you will step with (a buffer exists when it is not 0).
    centered : bool, default False
        RMSprop: the centered variant (``grad_avg``).
    amsgrad : bool, default False
        Adam and AdamW: AMSGrad (``max_exp_avg_sq``).
    **options
        Other options a kernel's state conditions read.

    Returns
    -------
    tuple of str
        The buffers' names, which are the kernel's argument names.

    Examples
    --------
    >>> state_names("rmsprop", momentum=0.9, centered=True)
    ('square_avg', 'momentum_buffer', 'grad_avg')
    """
    return _state_names("fastlr.kernels.state_names", kernel, momentum, centered, amsgrad,
                        options)


def _state_names(fn, kernel, momentum, centered, amsgrad, options):
    momentum = checked_real(fn, "momentum", momentum, NONNEG)
    centered = flag_arg(fn, "centered", centered)
    amsgrad = flag_arg(fn, "amsgrad", amsgrad)
    row = _kernel_row(kernel)
    values = dict(momentum=momentum, centered=centered, amsgrad=amsgrad, **options)
    used = _specs.state_options(row.family)
    for name, value in values.items():
        if name not in used and value:
            raise ValueError(f"{fn}: {kernel} has no option {name} (got {name}={value!r})")
    for name in used:
        values.setdefault(name, 0)      # an option not given is off
    return _specs.state_names(row.family, values)


#: Large state buffers are placed this many bytes (64 KiB + one cache line) further apart
#: than their size: same-size buffers allocated back to back sit a multiple of a large power
#: of two apart, which on some CPUs makes their streams conflict in the memory system (an
#: Adam step at 16M elements measured ~1.6x slower on the development machine).
STAGGER_BYTES = 65536 + 64
_STAGGER_MIN_BYTES = 1 << 20


def zeros_like_many(count: int, shape: Union[int, Sequence[int]], dtype: DTypeLike,
                    order: str = "C") -> list[NDArray[Any]]:
    """``count`` zero-filled arrays of one shape, dtype and order, as views of one block,
    each 64-byte aligned and, when large, staggered (see STAGGER_BYTES)."""
    dtype = np.dtype(dtype)
    size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    gap = STAGGER_BYTES if size >= _STAGGER_MIN_BYTES else 0
    dist = (size + 63) // 64 * 64 + gap
    block = np.zeros(count * dist + 64, dtype=np.uint8)
    start = (-block.ctypes.data) % 64
    shape_: Any = shape
    order_: Any = order
    return [block[start + k * dist:start + k * dist + size].view(dtype).reshape(shape_,
                                                                               order=order_)
            for k in range(count)]


def make_state(kernel: str, param: NDArray[np.floating], *, momentum: float = 0.0,
               centered: bool = False, amsgrad: bool = False,
               initial_accumulator_value: float = 0.0,
               **options: Any) -> dict[str, NDArray[np.floating]]:
    """Allocate the zero-filled state buffers ``kernel`` needs for ``param``.

    Buffers have param's shape, dtype and memory layout (C or F order). For Adagrad,
    ``state_sum`` is filled with ``initial_accumulator_value`` (torch's option; in general:
    a buffer whose table row names a ``fill`` option starts at its value).

    Parameters
    ----------
    kernel : str
        A kernel name of :data:`KERNELS` (``"adam"``, ``"sgd"``, ...).
    param : numpy.ndarray
        A float32 or float64 array, C- or F-contiguous.
    momentum : float, default 0.0
        SGD and RMSprop: the momentum you will step with (no buffer without momentum).
    centered : bool, default False
        RMSprop: allocate ``grad_avg`` (the centered variant).
    amsgrad : bool, default False
        Adam and AdamW: allocate ``max_exp_avg_sq`` (AMSGrad).
    initial_accumulator_value : float, default 0.0
        Adagrad: the value ``state_sum`` starts at, >= 0.
    **options
        Other options a kernel's state conditions or fills read (Rprop's ``lr``: the value
        ``step_size`` starts at, default 1e-2).

    Returns
    -------
    dict of str to numpy.ndarray
        Keyed by the kernel's argument names, so ``kernel(param, grad, **state, ...)``
        works.

    Examples
    --------
    >>> state = make_state("adagrad", np.ones(3), initial_accumulator_value=0.1)
    >>> state["state_sum"]
    array([0.1, 0.1, 0.1])
    """
    if not isinstance(param, np.ndarray):
        raise TypeError(f"fastlr.kernels.make_state: param must be a numpy.ndarray, got "
                        f"{type(param).__name__}")
    if param.dtype not in (np.float32, np.float64):
        raise TypeError(f"fastlr.kernels.make_state: param must have dtype float32 or "
                        f"float64, got {param.dtype}")
    order = "F" if param.flags.f_contiguous and not param.flags.c_contiguous else "C"
    fills = dict(initial_accumulator_value=initial_accumulator_value)
    for key in list(options):
        if key in _specs.fill_options():
            fills[key] = options.pop(key)
    fn = "fastlr.kernels.make_state"
    names = _state_names(fn, kernel, momentum, centered, amsgrad, options)
    family = _specs.family(_kernel_row(kernel).family)
    for h in family.hypers:         # a hyperparameter that fills a buffer: its default
        if h.name not in fills and any(s.fill == h.name for s in family.state):
            fills[h.name] = h.default
    fills = {option: checked_real(fn, option, value, NONNEG) for option, value in fills.items()}
    state = dict(zip(names, zeros_like_many(len(names), param.shape, param.dtype, order)))
    filled = {s.fill: s.name for s in family.state if s.fill and s.name in state}
    for option, value in fills.items():
        if value == 0:
            continue
        if option not in filled:
            raise ValueError(f"{fn}: {option} is an {_specs.fill_owner(option)} option, not "
                             f"one of {kernel}")
        state[filled[option]][...] = value
    return state

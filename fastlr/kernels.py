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

import numbers

import numpy as np

from fastlr._kernels import (
    HAVE_OPENMP,
    adadelta,
    adagrad,
    adam,
    adamax,
    adamw,
    get_num_threads,
    lion,
    nadam,
    radam,
    rmsprop,
    set_num_threads,
    sgd,
)
from fastlr._core.ema import ema_update, swap_buffers
from fastlr._core.sklearn_kernels import adam_sklearn, sgd_sklearn

__all__ = [
    "sgd",
    "rmsprop",
    "adam",
    "adamw",
    "adagrad",
    "adadelta",
    "adamax",
    "nadam",
    "radam",
    "lion",
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
]

#: The kernel names, the same in ``fastlr.kernels`` and ``fastlr.reference``.
KERNELS = ("sgd", "rmsprop", "adam", "adamw", "adagrad", "adadelta", "adamax", "nadam", "radam",
           "lion")


def state_names(kernel, *, momentum=0.0, centered=False, amsgrad=False):
    """The state buffers ``kernel`` needs with these options, in argument order.

    >>> state_names("rmsprop", momentum=0.9, centered=True)
    ('square_avg', 'momentum_buffer', 'grad_avg')
    """
    if kernel == "sgd":
        _only(kernel, centered=centered, amsgrad=amsgrad)
        return ("momentum_buffer",) if momentum != 0 else ()
    if kernel == "rmsprop":
        _only(kernel, amsgrad=amsgrad)
        names = ("square_avg",)
        if momentum > 0:
            names += ("momentum_buffer",)
        if centered:
            names += ("grad_avg",)
        return names
    if kernel in ("adam", "adamw"):
        _only(kernel, momentum=momentum, centered=centered)
        return ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if amsgrad else ())
    if kernel in _FIXED_STATE:
        _only(kernel, momentum=momentum, centered=centered, amsgrad=amsgrad)
        return _FIXED_STATE[kernel]
    raise ValueError(f"fastlr.kernels.state_names: unknown kernel {kernel!r}; expected one of "
                     f"{', '.join(KERNELS)}")


_FIXED_STATE = {"adagrad": ("state_sum",), "adadelta": ("square_avg", "acc_delta"),
                "adamax": ("exp_avg", "exp_inf"), "nadam": ("exp_avg", "exp_avg_sq"),
                "radam": ("exp_avg", "exp_avg_sq"), "lion": ("exp_avg",)}


def _only(kernel, **unused):
    for name, value in unused.items():
        if value:
            raise ValueError(f"fastlr.kernels.make_state: {kernel} has no option {name} "
                             f"(got {name}={value!r})")


#: Large state buffers are placed this many bytes (64 KiB + one cache line) further apart
#: than their size: same-size buffers allocated back to back sit a multiple of a large power
#: of two apart, which on some CPUs makes their streams conflict in the memory system (an
#: Adam step at 16M elements measured ~1.6x slower on the development machine).
STAGGER_BYTES = 65536 + 64
_STAGGER_MIN_BYTES = 1 << 20


def zeros_like_many(count, shape, dtype, order="C"):
    """``count`` zero-filled arrays of one shape, dtype and order, as views of one block,
    each 64-byte aligned and, when large, staggered (see STAGGER_BYTES)."""
    dtype = np.dtype(dtype)
    size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    gap = STAGGER_BYTES if size >= _STAGGER_MIN_BYTES else 0
    dist = (size + 63) // 64 * 64 + gap
    block = np.zeros(count * dist + 64, dtype=np.uint8)
    start = (-block.ctypes.data) % 64
    return [block[start + k * dist:start + k * dist + size].view(dtype).reshape(shape,
                                                                               order=order)
            for k in range(count)]


def make_state(kernel, param, *, momentum=0.0, centered=False, amsgrad=False,
               initial_accumulator_value=0.0):
    """Allocate the zero-filled state buffers ``kernel`` needs for ``param``.

    Returns a dict keyed by the kernel's argument names, so ``kernel(param, grad, **state,
    ...)`` works. Buffers have param's shape, dtype and memory layout (C or F order).
    For SGD, pass the ``momentum`` you will step with (no buffer without momentum). For
    Adagrad, ``state_sum`` is filled with ``initial_accumulator_value`` (torch's option).

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
    names = state_names(kernel, momentum=momentum, centered=centered, amsgrad=amsgrad)
    state = dict(zip(names, zeros_like_many(len(names), param.shape, param.dtype, order)))
    if isinstance(initial_accumulator_value, (bool, np.bool_)) or \
            not isinstance(initial_accumulator_value, numbers.Real):
        raise TypeError(f"fastlr.kernels.make_state: initial_accumulator_value must be a real "
                        f"number, got {type(initial_accumulator_value).__name__}")
    if initial_accumulator_value != 0:
        if kernel != "adagrad":
            raise ValueError(f"fastlr.kernels.make_state: initial_accumulator_value is an "
                             f"Adagrad option, not one of {kernel}")
        value = float(initial_accumulator_value)
        if not (np.isfinite(value) and value >= 0):
            raise ValueError(f"fastlr.kernels.make_state: initial_accumulator_value must be a "
                             f"finite number >= 0, got {initial_accumulator_value!r}")
        state["state_sum"][...] = value
    return state

"""The optimizer base class, assembled from its concerns:

* :mod:`fastlr.optim.groups` -- construction, param groups, hyperparameter checks;
* :mod:`fastlr.optim.layout` -- spans of adjacent params, state buffers, the engine;
* :mod:`fastlr.optim.stepping` -- the step and its pure-NumPy twin;
* :mod:`fastlr.optim.checkpoint` -- state dicts and ``.npz`` checkpoints.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from fastlr._core.args import threads_arg
from fastlr._core.engine import Engine
from fastlr.optim.checkpoint import CheckpointMixin
from fastlr.optim.groups import (_FIXED_KEYS, GroupsMixin, ParamGroup,  # noqa: F401
                                 _some, named_groups)
from fastlr.optim.direct16 import Direct16Step
from fastlr.optim.fused16 import Fused16Step
from fastlr.optim.int8 import Int8Step
from fastlr.optim.layout import LayoutMixin, flat_buffer  # noqa: F401
from fastlr.optim.master import MasterWeightsMixin
from fastlr.optim.stepping import StepMixin

__all__ = ["Optimizer", "ParamGroup", "flat_buffer", "named_groups"]

#: The optimizer families with a bfloat16-state core loop (fastlr/_core/loops.pxd) and with
#: an 8-bit state kernel (fastlr/_core/int8state.pyx).
BF16_STATE_FAMILIES = ("adam",)
INT8_STATE_FAMILIES = ("adam",)
STATE_DTYPES = ("float32", "bfloat16", "int8")


def _state_dtype_arg(fn, value, family):
    """The checked ``state_dtype`` option: "float32", or "bfloat16" / "int8" where the
    family has a core for it."""
    if not isinstance(value, str):
        raise TypeError(f"{fn}: state_dtype must be 'float32', 'bfloat16' or 'int8' (a str), "
                        f"got {type(value).__name__} {value!r:.60}")
    if value not in STATE_DTYPES:
        raise ValueError(f"{fn}: state_dtype must be 'float32', 'bfloat16' or 'int8', got "
                         f"{value!r}")
    families = {"bfloat16": BF16_STATE_FAMILIES, "int8": INT8_STATE_FAMILIES}.get(value)
    if families is not None and family not in families:
        raise ValueError(f"{fn}: state_dtype={value!r} is implemented for Adam and AdamW; "
                         f"this optimizer keeps its state in the params' dtype (pass "
                         f"state_dtype='float32')")
    return value


class Optimizer(MasterWeightsMixin, GroupsMixin, LayoutMixin, StepMixin, CheckpointMixin):
    """Base class of the optimizers: param groups, state, checkpoints and the one-call step.

    Not instantiated directly: the optimizer classes (:class:`fastlr.SGD`,
    :class:`fastlr.Adam`, ...) build it with their hyperparameters.

    Parameters
    ----------
    params : array, list of arrays, dict, list of (name, array) pairs or list of dicts
        The float32/float64 arrays to update in place (float16 and bfloat16 ones too: see
        ``master_weights``), optionally named (a dict of name -> array) and in groups
        (``{"params": [...], hyperparameter: value}``); see :mod:`fastlr.optim`.
    defaults : dict
        The hyperparameters of every group that does not set its own (a number, a
        :mod:`fastlr.schedules` schedule or a callable ``step -> float`` where the
        optimizer allows a schedule).
    n_threads : int, optional
        Threads for the step; ``None`` uses :func:`fastlr.get_num_threads` at each step.
    max_grad_norm : float, optional
        Clip the grads to this global L2 norm inside each step (``None``: no clipping).
    skip_nonfinite : bool, default False
        Skip a step whose grads hold a NaN or Inf (False: propagate them, as torch).
    state_dtype : {"float32", "bfloat16", "int8"}, default "float32"
        How the state buffers are stored. ``"float32"``: in the params' dtype (float32
        for 16-bit params). ``"bfloat16"`` (Adam and AdamW, float32 or 16-bit params): as
        bfloat16 bits (``uint16`` arrays in :attr:`state`), half the state memory; each
        step widens the state
        exactly, updates it in float32, uses the unrounded values for the param update and
        stores them rounded stochastically. 20 bytes move per element instead of 28.
        ``"int8"`` (Adam and AdamW, float32 params or 16-bit ones, with or without
        masters; no AMSGrad): each moment block-wise quantized, ``uint8`` codes of the param's
        shape (``exp_avg``, ``exp_avg_sq``) and one float32 scale per block of 256 of the
        param's elements (``exp_avg_scale``, ``exp_avg_sq_scale``): 2 bytes per param
        plus 8 per 256, a quarter of float32 state; the step runs
        :func:`fastlr.kernels.adam_int8_state` once per param (after checking
        everything), not one call over all params. Not for
        :class:`fastlr.distributed.ShardedOptimizer` or steps in windows. See
        :doc:`/lowprecision`.
    master_weights : bool, optional
        For float16 and bfloat16 (``ml_dtypes.bfloat16``) params. ``None`` or True (the
        default, every optimizer): the optimizer keeps a float32 copy, the master weights:
        the optimizer's param (in ``param_groups`` and the state dict's ``"master"``); a
        step updates it from the grads (16-bit or float32) exactly as for float32 params
        and writes it into the 16-bit param rounded to nearest even. False (no AMSGrad):
        no copy; each step updates the 16-bit param in place from its widened value, in
        float32, and stores the result rounded stochastically. Adam and AdamW with float32
        or bfloat16 state: one pass per param (:func:`fastlr.kernels.adam_mixed`), 8 bytes
        of state per param with float32 state, 4 with bfloat16 (master weights add 4); the
        other optimizers of the table with float32 state: the step engine, one pass per
        block of the param (fastlr/_core/master16.pxd); int8 state: its kernel on the
        widened param, chunk by chunk (fastlr/optim/direct16.py). See
        :doc:`/lowprecision`.

    Attributes
    ----------
    defaults : dict
        The checked default hyperparameters.
    param_groups : list of ParamGroup
        The groups: dicts of ``"params"`` (and ``"param_names"`` when named) and the
        hyperparameters; writing a hyperparameter takes effect at the next step.

    Raises
    ------
    TypeError
        If a param is not a float32/float64 (or 16-bit) contiguous writeable array, or a
        hyperparameter or option has the wrong type.
    ValueError
        If a hyperparameter or option is out of range, or params overlap in memory.

    Examples
    --------
    >>> w = np.ones(3, dtype=np.float32)
    >>> opt = fastlr.Adam([w], lr=0.1)
    >>> isinstance(opt, fastlr.Optimizer)
    True
    >>> opt.step([np.array([0.5, -0.5, 0.0], dtype=np.float32)])
    >>> w
    array([0.9, 1.1, 1. ], dtype=float32)
    """

    defaults: Dict[str, Any]
    param_groups: List[ParamGroup]

    # the kernel family ("sgd", "adam", ...; see fastlr._specs), set by each optimizer class
    _kernel: str = None     # type: ignore[assignment]
    _schedulable = ()       # hyperparameters that take a schedule
    _slots = ()             # the kernel's state arguments, in order
    _optional_state = ()    # buffers torch creates on first use (absent before)
    _scalar = None          # the name of the per-param scalar state (NAdam's mu_product)
    _scalar_init = 1.0      # its value before the first update

    def __init__(self, params: Union[np.ndarray, Sequence[Any], Mapping[str, np.ndarray]],
                 defaults: Mapping[str, Any], n_threads: Optional[int] = None,
                 max_grad_norm: Optional[float] = None, skip_nonfinite: bool = False,
                 state_dtype: str = "float32", master_weights: Optional[bool] = None) -> None:
        self._state_dtype = _state_dtype_arg(self._name, state_dtype, self._kernel)
        self._init_masters(master_weights)
        self.defaults = dict(defaults)
        for key, value in self.defaults.items():
            self.defaults[key] = self._check_hyper(key, value, where="")
        self._n_threads = None if n_threads is None else threads_arg(self._name, n_threads)
        self.max_grad_norm = max_grad_norm
        self.skip_nonfinite = skip_nonfinite
        self.param_groups = []
        self._params = []
        self._names = None              # the params' names (a list) when they are named
        self._name_index = {}           # name -> flat index
        self._getter = None             # operator.itemgetter(*names): a grads dict in order
        self._counts = np.zeros(0, dtype=np.int64)     # per param: updates applied
        self._started = np.zeros(0, dtype=np.uint8)    # per param: SGD buffer in use
        self._used = np.zeros((0, 4), dtype=np.float64)  # per group: values of the last step
        self._mu_product = np.zeros(0, dtype=np.float64)  # per param: NAdam's product of mu_t
        self._lr_scale = np.zeros(0, dtype=np.float64)    # per group: factor on the lr
        self._skipped = 0               # steps skipped for non-finite grads
        self._plateau = None            # an attached ReduceLROnPlateau
        self._pending_plateau = None    # its checkpointed state, until one is attached
        self._state = []                # per param: {name: view}
        self._layout = None             # the span structure the state blocks were made for
        self._t = 0
        self._snapshot_id = uuid.uuid4().hex   # marks this object's own state dicts
        self._busy = threading.Lock()   # held while stepping or changing the layout
        self._engine = Engine(self._kernel, self._name)
        if self._state_dtype == "int8" and self._master_weights is not False:
            self._engine = Int8Step(self, self._engine)  # a kernel call per param (int8.py)
        elif self._master_weights is False and self._fused16_ok():
            # 16-bit params without masters, one pass per param (fastlr/optim/fused16.py;
            # with masters, _configure makes the front when the first 16-bit param comes:
            # an instance attribute more would slow every attribute read of the float32
            # step, CPython's shared-key instance dicts holding up to 30 names)
            self._engine = self._fused16 = Fused16Step(self, self._engine)
        elif self._master_weights is False and self._direct16_ok():
            # the other optimizers of the table: the engine steps 16-bit params itself
            # (fastlr/_core/master16.pxd), the front runs their twin (step_reference) and
            # int8 state's step: the float32 kernel per chunk of a 16-bit param, then
            # stochastic rounding (fastlr/optim/direct16.py)
            self._fused16 = Direct16Step(self, self._engine)
            if self._state_dtype == "int8":
                self._engine = self._fused16
        groups = self._groups_arg(params)
        for group in groups:
            self._add_group(group)
        self._configure()

    def _validate_group(self, group):
        if group.get("amsgrad") and self._direct_16bit() and self._state_dtype != "int8":
            raise ValueError(f"{self._name}: amsgrad=True is not available with "
                             f"master_weights=False (fastlr.kernels.adam_mixed keeps no "
                             f"running maximum); use master_weights=True for AMSGrad")
        if self._state_dtype == "int8" and group.get("amsgrad"):
            raise ValueError(f"{self._name}: amsgrad=True is not available with "
                             f"state_dtype='int8' (its running maximum would be a third "
                             f"quantized buffer); use state_dtype='bfloat16' or 'float32' "
                             f"for AMSGrad")
        super()._validate_group(group)

    def __repr__(self) -> str:
        """Like torch's: the class, then each group's hyperparameters (a schedule as its
        repr) and params (their names when named)."""
        lines = [f"{type(self).__name__} ("]
        for g, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {g}")
            names = group.get("param_names")
            n = len(group["params"])
            shown = f"{n} array{'' if n == 1 else 's'}"
            if names:
                shown += f" ({_some(names, 8)})"
            lines.append(f"    params: {shown}")
            for key in sorted(k for k in group if k not in _FIXED_KEYS):
                lines.append(f"    {key}: {group[key]!r}")
        extra = [f"{k}={v!r}" for k, v in (("max_grad_norm", self._max_grad_norm),
                                             ("skip_nonfinite", self._skip_nonfinite),
                                             ("n_threads", self._n_threads)) if v]
        if getattr(self, "_state_dtype", "float32") != "float32":
            extra.append(f"state_dtype={self._state_dtype!r}")
        if getattr(self, "_master_weights", None) is not None:
            extra.append(f"master_weights={self._master_weights!r}")
        if extra:
            lines.append(", ".join(extra))
        lines.append(")")
        return "\n".join(lines)

"""16-bit params with float32 master weights (part of :class:`fastlr.Optimizer`).

A param of dtype ``np.float16`` or ``ml_dtypes.bfloat16`` is kept by the optimizer as a
float32 copy, its master weights: the optimizer's own param (in ``param_groups``, the state
and the compiled step), created when the param is added. A step updates the masters from
the grads widened exactly (float32 grads of a 16-bit param are used as they are), like any
float32 params, and writes every master into its 16-bit param rounded to nearest even (the
bits of NumPy's and ml_dtypes' casts). The step engine does it in one pass per param
(``Engine.set_users``: fastlr/_core/master16.pxd, block by block in L1), Adam/AdamW's
fused step in ``fastlr.kernels.adam_mixed``, int8 state's in
``fastlr.kernels.adam_mixed_int8_state``; the reference mode takes passes (cast every grad
into a float32 buffer: ``_master_grads``; step; round every master:
``_publish_masters``), as do a 16-bit grad laid out otherwise than its param and a
misaligned 16-bit param (the engine raises ``WidenFirst`` for them, before writing).
So the masters hold exactly the bits a float32 optimizer over float32 copies of the params
would hold, on every optimizer of the table, and the caller's arrays follow them rounded.

The masters are optimizer state: ``state_dict()["master"]`` (param index -> float32 array)
and checkpoints hold them; loading restores them and rounds them into the params (a
checkpoint without them starts them at the params).
"""

import warnings
from typing import Any, Dict, List, Optional

import numpy as np

from fastlr._core import bf16 as _bf16

__all__ = ["is_16bit", "is_16bit_any_order", "MasterWeightsMixin"]


def is_16bit(dtype: np.dtype) -> bool:
    """float16 or bfloat16 (``ml_dtypes.bfloat16``), native byte order."""
    # (.char and .type: NumPy builds .name afresh on every read, 0.5-2 us, and steps ask)
    return dtype.isnative and dtype.itemsize == 2 and (
        dtype.char == "e" or dtype.type.__name__ == "bfloat16")


def is_16bit_any_order(dtype: np.dtype) -> bool:
    """float16 or bfloat16 in either byte order: one grad array of such a dtype is split
    per param (``_split_flat16``), so that a byte-swapped one meets the checks of the list
    form (the engine's ``WidenFirst`` for it is answered by widening a list only)."""
    if dtype.itemsize != 2:
        return False
    # a native dtype is answered without building its byte-swapped twin (a step's path)
    return is_16bit(dtype) if dtype.isnative else is_16bit(dtype.newbyteorder("="))


def _same_layout(a, b):
    return (a.flags.c_contiguous and b.flags.c_contiguous) or \
        (a.flags.f_contiguous and b.flags.f_contiguous)


_F16 = []      # fastlr._core.mixed (its float16 loops), imported on first use


def _loops(dtype):
    """(unpack, pack) compiled loops for a 16-bit dtype's bits."""
    if dtype.name == "bfloat16":
        return _bf16.unpack, _bf16.pack
    if not _F16:
        from fastlr._core import dispatch
        _F16.append(dispatch.module("mixed"))
    return _F16[0].f16_unpack, _F16[0].f16_pack


def _widen_into(dst, src):
    """float32 ``dst`` = the 16-bit ``src`` (exact), by a compiled loop."""
    if _same_layout(dst, src):
        _loops(src.dtype)[0](np.ravel(src.view(np.uint16), order="K"),
                             np.ravel(dst, order="K"))
    else:
        np.copyto(dst, src)


def _round_into(dst, src):
    """16-bit ``dst`` = float32 ``src`` rounded to nearest even, by a compiled loop with
    the bits of NumPy's and ml_dtypes' casts (a NaN stays a NaN)."""
    if _same_layout(dst, src):
        _loops(dst.dtype)[1](np.ravel(src, order="K"),
                             np.ravel(dst.view(np.uint16), order="K"))
    else:
        np.copyto(dst, src, casting="unsafe")


class MasterWeightsMixin:
    """Master weights for 16-bit params (see the module's notes)."""

    _name: str
    _params: List[np.ndarray]

    def _init_masters(self, master_weights: Optional[bool]) -> None:
        if master_weights is not None and not isinstance(master_weights, (bool, np.bool_)):
            raise TypeError(f"{self._name}: master_weights must be a bool or None, got "
                            f"{type(master_weights).__name__}")
        self._master_weights = None if master_weights is None else bool(master_weights)
        self._masters_of: Dict[int, Any] = {}    # id(master) -> (master, the caller's array)
        self._grad32: Dict[int, np.ndarray] = {}   # id(master) -> float32 grad buffer

    def _with_masters(self, params, start, names, g):
        """``params`` with a float32 master in place of each 16-bit array. The caller's
        arrays (16-bit ones in place of their masters) must not overlap in memory: the
        optimizer's own overlap check sees only the masters."""
        users = [u for u in map(self._user, self._params) if u is not None]
        if not users and not any(isinstance(p, np.ndarray) and is_16bit(p.dtype)
                                 for p in params):
            return params
        mine = [p if self._user(p) is None else self._user(p) for p in self._params]
        for j, p in enumerate(params):
            if not isinstance(p, np.ndarray):
                continue
            others = ([q for k, q in enumerate(params) if k != j and isinstance(q, np.ndarray)]
                      + mine if is_16bit(p.dtype) else users)
            if any(np.may_share_memory(p, q) for q in others):
                raise ValueError(f"{self._name}: {self._label(start + j, names, g, j)} "
                                 f"overlaps another param in memory (a param may appear "
                                 f"only once)")
        out = []
        for j, p in enumerate(params):
            if not (isinstance(p, np.ndarray) and is_16bit(p.dtype)):
                out.append(p)
                continue
            label = self._label(start + j, names, g, j)
            if self._master_weights is False:
                if self._direct_16bit():     # the param itself (fastlr/optim/fused16.py)
                    out.append(p)
                    continue
                raise ValueError(
                    f"{self._name}: {label} is {p.dtype}: master_weights=False (the 16-bit "
                    f"param updated in place, rounded stochastically) is available in "
                    f"the optimizers of the table (SGD, RMSprop, Adam, AdamW, Adagrad, "
                    f"Adadelta, Adamax, NAdam, RAdam, Lion, Rprop, ASGD) with float32 "
                    f"state, and in Adam and AdamW with bfloat16 or int8 state; keep "
                    f"master_weights=True (the default) here")
            if not (p.flags.c_contiguous or p.flags.f_contiguous):
                raise ValueError(f"{self._name}: {label} must be contiguous (C or F order), "
                                 f"got strides {p.strides}")
            if not p.flags.writeable:
                raise ValueError(f"{self._name}: {label} is read-only but is updated in "
                                 f"place")
            order = "F" if p.flags.f_contiguous and not p.flags.c_contiguous else "C"
            master = np.array(p, dtype=np.float32, order=order)
            # (kept even if the group is then refused: its masters are not in _params,
            # so _user never sees them)
            self._masters_of[id(master)] = (master, p)
            out.append(master)
        return out

    #: Adam/AdamW's front for 16-bit params (fastlr/optim/fused16.py), made when needed
    _fused16: Any = None
    #: whether this class may step 16-bit params through that front (SparseAdam: no)
    _fused16_class = True

    def _fused16_ok(self) -> bool:
        """Whether 16-bit params may take the fused pass per param: Adam/AdamW's kernel,
        float32 or bfloat16 state."""
        return (self._fused16_class and getattr(self, "_kernel", None) == "adam"
                and getattr(self, "_state_dtype", "float32") != "int8")

    def _direct16_ok(self) -> bool:
        """Whether 16-bit params without masters may take fastlr/optim/direct16.py's step:
        the other optimizers of the table (element-wise kernels) with float32 state, and
        Adam/AdamW with int8 state."""
        state = getattr(self, "_state_dtype", "float32")
        if getattr(self, "_kernel", None) == "adam":
            return state == "int8" and self._fused16_class
        return getattr(self, "_family", None) is not None and state == "float32"

    def _direct_16bit(self) -> bool:
        """Whether 16-bit params are stepped in place without masters (master_weights=False
        in Adam/AdamW with float32 or bfloat16 state: fastlr/optim/fused16.py; in the
        other optimizers of the table: fastlr/optim/direct16.py)."""
        return self._master_weights is False and self._fused16 is not None

    def _user(self, p):
        """The caller's 16-bit array behind param ``p`` (a master), or None."""
        pair = self._masters_of.get(id(p))
        return pair[1] if pair is not None and pair[0] is p else None

    def _master_grads(self, grads, what="step"):
        """The grads with each 16-bit grad of a 16-bit param cast into a float32 buffer
        (exact); float32 grads and anything the step checks itself unchanged. Raises (before
        anything is written) for a 16-bit param's grad of another dtype or shape."""
        if not isinstance(grads, (list, tuple)) or len(grads) != len(self._params):
            return grads
        out = list(grads)
        for i, (p, g) in enumerate(zip(self._params, grads)):
            user = self._user(p)
            if user is None or not isinstance(g, np.ndarray):
                continue
            if g.dtype != user.dtype and g.dtype != np.float32:
                raise TypeError(f"{self._name}.{what}: grads[{i}] has dtype {g.dtype} but "
                                f"params[{i}] is {user.dtype} (kept with float32 master "
                                f"weights): pass its grad in {user.dtype} or float32")
            if g.shape != p.shape:
                raise ValueError(f"{self._name}.{what}: grads[{i}] has shape {g.shape} but "
                                 f"params[{i}] has shape {p.shape}")
            if g.dtype == np.float32:
                continue
            buf = self._grad32.get(id(p))
            if buf is None:
                buf = self._grad32[id(p)] = np.empty_like(p)
            _widen_into(buf, g)
            out[i] = buf
        return out

    def _split_flat16(self, grads, what="step"):
        """One 16-bit grad array as one grad per param: the one param's own grad (an array
        of its shape) as ``[grads]``, checked later as the list form is; else a 1-D flat
        buffer as one view per param, each in its param's memory order (the step engine
        reads a 16-bit param's grad per param; a flat buffer it takes in float32 only),
        checked as a flat buffer is: nothing is written."""
        from fastlr.optim.front import bare_grad, check_flat_size_and_layout, flat_views
        fn = f"{self._name}.{what}"
        total = sum(p.size for p in self._params)
        if isinstance(bare_grad(fn, grads, [p.shape for p in self._params], total), list):
            return [grads]
        for i, p in enumerate(self._params):
            user = self._user(p)
            face = p if user is None else user
            if face.dtype != grads.dtype:
                raise TypeError(f"{fn}: the flat grad buffer has dtype {grads.dtype} but "
                                f"params[{i}] has dtype {face.dtype}; pass a list of grads "
                                f"for params of several dtypes (or a float32 flat buffer)")
        check_flat_size_and_layout(fn, grads, total)
        return flat_views(self._params, grads)

    def _publish_masters(self, done=()) -> None:
        """Every 16-bit param = its master rounded to nearest even (but those whose index is
        in ``done``: stored by the step itself)."""
        for i, p in enumerate(self._params):
            user = self._user(p)
            if user is not None and i not in done:
                _round_into(user, p)

    def _masters_state(self) -> Dict[int, np.ndarray]:
        return {i: p.copy() for i, p in enumerate(self._params) if self._user(p) is not None}

    def _checked_masters(self, name, sd):
        """{param index: float32 array} to load from ``sd["master"]`` (checked, nothing
        written); entries for params without a master are left out."""
        saved = sd.get("master")
        if saved is None:
            return {}
        if not isinstance(saved, dict):
            raise ValueError(f"{name}: 'master' must map param indices to arrays")
        out = {}
        for i, p in enumerate(self._params):
            v = saved.get(i, saved.get(str(i)))
            if v is None:
                continue
            v = np.asarray(v)
            if v.shape != p.shape or v.dtype not in (np.float32, np.float64):
                raise ValueError(f"{name}: master[{i}] must be a float32 or float64 array "
                                 f"of shape {p.shape}, got {v.dtype} {v.shape}")
            out[i] = v
        dropped = sorted(i for i in out if self._user(self._params[i]) is None)
        if dropped:
            warnings.warn(f"{name}: the checkpoint holds master weights for params "
                          f"{dropped[:5]} that this optimizer keeps in their own dtype; "
                          f"they were not loaded (load the params themselves as saved)",
                          UserWarning, stacklevel=4)
            for i in dropped:
                del out[i]
        return out

    def _load_masters(self, masters) -> None:
        """Masters from a checkpoint (else from the params), then into the params."""
        for i, p in enumerate(self._params):
            user = self._user(p)
            if user is not None:
                np.copyto(p, masters[i] if i in masters else user, casting="unsafe")
        self._publish_masters()

"""``master_weights=False`` in the optimizers of the table other than Adam/AdamW (SGD,
RMSprop, Adagrad, Adadelta, Adamax, NAdam, RAdam, Lion, Rprop, ASGD): a float16 or bfloat16
(``ml_dtypes.bfloat16``) param is the optimizer's own param, with float32 state, and no
float32 master copy is kept (part of :class:`fastlr.Optimizer`).

The step engine steps these params itself, in one pass per block of 512 elements
(``fastlr/_core/master16.pxd``); this module is their NumPy twin (``step_reference``) and
what Adam/AdamW with int8 state run. The update, per step and 16-bit param, in chunks of
:data:`CHUNK` elements (in memory order): the param's values are widened (exactly) into a
float32 scratch buffer, the grad too when it is 16-bit, the optimizer's own compiled kernel
(``fastlr.kernels.<name>``, the step engine's bits) updates the scratch and the chunk's
state, and the result is stored into the param rounded stochastically: up with
probability (the dropped part) / (the gap), so the expected stored value is the float32
result, with the random bits of
:func:`fastlr.kernels.adam_mixed`'s param without master (a hash of the element's value
before the update, its grad and the step: no random state, reproducible, the same for any
thread count). The kernels are element-wise, so chunks give the bits one call would.
The optimizer keeps the state only (4 bytes per param and buffer); the scratch buffers are
:data:`CHUNK` elements each, kept by the front.

Adam/AdamW with ``state_dtype="int8"`` come here too, and take one pass per 16-bit param:
:func:`fastlr.kernels.adam_mixed_int8_state` (widening, the 8-bit block update and the
stochastic rounding per block of 256 elements in L1), whose twin runs the passes above
(the codes' random bits take the element's index in its chunk of 65536: the same bits).

The front (int8 state's engine; the twin's checks) is :class:`Fused16Step`'s
(:mod:`fastlr.optim.fused16`: the grads' checks, schedules, clipping and the layout are the
same); only the per-param update differs. The NumPy twin (``step_reference``) runs
:mod:`fastlr.reference`'s kernel and ``fastlr.reference.mixed.round_stochastic_into`` the
same way, bit for bit (with the clipping factor, the key takes the clipped grad, as the
engine's pass does).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fastlr import kernels, reference
from fastlr.optim.front import memory_order, run_per_param
from fastlr.optim.fused16 import Fused16Step
from fastlr.optim.master import _loops, is_16bit
from fastlr.reference.mixed import round_stochastic_into as _round_twin

__all__ = ["CHUNK", "Direct16Step", "run"]

#: Elements per chunk of a 16-bit param (the scratch buffers' length)
CHUNK = 1 << 16

_MIXED = []      # fastlr._core.mixed (its round_stochastic_into), imported on first use


def _round():
    if not _MIXED:
        from fastlr._core import dispatch
        _MIXED.append(dispatch.module("mixed"))
    return _MIXED[0].round_stochastic_into


def _flat(a):
    """A contiguous array as a 1-D view in memory order."""
    return a.reshape(-1, order=memory_order(a))


def _widened(bits, dtype, out, twin):
    if twin:     # NumPy's and ml_dtypes' casts (exact)
        out[...] = bits.view(dtype).astype(np.float32)
    else:
        _loops(dtype)[0](bits, out)
    return out


def _chunked(front, p, grad, step, twin, kernel):
    """One 16-bit param's update, chunk by chunk: each chunk of the param (and of its grad
    when 16-bit) widened into the scratch, ``kernel(a, b, w, gw)`` on elements [a, b),
    then the param rounded stochastically. At least one call (a zero-size param's gives
    its scalar state: NAdam's mu_product); returns the last call's result."""
    bits = _flat(p).view(np.uint16)
    g = _flat(grad)
    wide_grad = g.dtype == np.float32
    gkey = g if wide_grad else g.view(np.uint16)
    rounding = _round_twin if twin else _round()
    bf16 = p.dtype.name == "bfloat16"
    out = None
    for a in range(0, max(bits.size, 1), CHUNK):
        b = min(a + CHUNK, bits.size)
        w = _widened(bits[a:b], p.dtype, front.scratch[0][:b - a], twin)
        gw = g[a:b] if wide_grad else _widened(gkey[a:b], p.dtype,
                                               front.scratch[1][:b - a], twin)
        out = kernel(a, b, w, gw)
        if b > a:
            rounding(bits[a:b], w, gkey[a:b], step, bf16)
    return out


def run(opt, grads, values, twin=False, n_threads=None):
    """Every param's update (``twin``: by the NumPy twins) with its group's values at this
    step, then the counts (:func:`fastlr.optim.front.run_per_param`)."""
    where = reference if twin else kernels
    front = opt._fused16
    if opt._state_dtype == "int8":
        fn16, fn8 = where.adam_mixed_int8_state, where.adam_int8_state

        def call8(i, grad, st, kwargs):
            p = opt._params[i]
            # a 16-bit param in one pass (its twin: the chunked passes, the same bits)
            fn = fn16 if is_16bit(p.dtype) else fn8
            fn(p, grad, st["exp_avg"], st["exp_avg_scale"], st["exp_avg_sq"],
               st["exp_avg_sq_scale"], **kwargs)

        run_per_param(opt, grads, values, call8, n_threads)
        return
    fn = getattr(where, opt._kernel)

    def call(i, grad, st, kwargs):
        p = opt._params[i]
        if not twin:
            kwargs["n_threads"] = n_threads
        if is_16bit(p.dtype):
            state = {k: _flat(v) for k, v in kwargs.items()
                     if isinstance(v, np.ndarray) and v.shape == p.shape}
            rest = {k: v for k, v in kwargs.items() if k not in state}

            def kernel(a, b, w, gw):
                return fn(w, gw, **{k: v[a:b] for k, v in state.items()}, **rest)

            out = _chunked(front, p, grad, int(opt._counts[i]) + 1, twin, kernel)
        else:
            out = fn(p, grad, **kwargs)
        if opt._scalar:
            opt._mu_product[i] = out

    run_per_param(opt, grads, values, call, n_threads, own_kwargs=True)


class Direct16Step(Fused16Step):
    """:class:`Fused16Step`'s front with the per-param update of this module."""

    __slots__ = ("scratch",)

    def __init__(self, owner: Any, engine: Any) -> None:
        super().__init__(owner, engine)
        #: float32 scratch for a chunk of a param and of its grad
        self.scratch = (np.empty(CHUNK, np.float32), np.empty(CHUNK, np.float32))

    @staticmethod
    def update(opt: Any, grads: Any, values: Any, twin: bool = False,
               n_threads: Any = None) -> None:
        """The per-param updates of a checked step (:func:`run`)."""
        run(opt, grads, values, twin, n_threads)

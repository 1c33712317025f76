"""``state_dtype="int8"`` in :class:`fastlr.Adam` / :class:`fastlr.AdamW` (part of
:class:`fastlr.Optimizer`): 8-bit block-wise quantized moments.

Each param keeps, per moment (``exp_avg``, ``exp_avg_sq``), ``uint8`` codes of its shape and
layout and one float32 scale per block of 256 of its elements (``exp_avg_scale``,
``exp_avg_sq_scale``): the state of :func:`fastlr.kernels.adam_int8_state`, whose blocks
must not straddle params. So the step is not the engine's one call over coalesced spans:
the engine checks everything first (grads, schedules, their values) and updates nothing,
then the compiled kernel runs once per param (docs/lowprecision.rst). The step's NumPy
twin runs :func:`fastlr.reference.adam_int8_state` per param.

Checkpoints hold the codes and scales as they are; loading converts between state dtypes
(:func:`decoded`, :func:`encoded`).
"""

from __future__ import annotations

import math
from typing import Any, Dict

import numpy as np

from fastlr import kernels
from fastlr.kernels import zeros_like_many
from fastlr.optim.front import (EngineFront, bare_grad, check_overlap, clipped, flat_views,
                                 memory_order, regions, run_per_param)
from fastlr.optim.master import _same_layout
from fastlr.reference.int8state import (BLOCK, int8_decode, int8_decode_signed,
                                       int8_encode)

#: moment -> its scales' state name
SCALES = {"exp_avg": "exp_avg_scale", "exp_avg_sq": "exp_avg_sq_scale"}
#: moment -> (largest exponent, largest code) of its code (fastlr/_core/int8state.pyx)
_CODES = {"exp_avg": (15, 127), "exp_avg_sq": (31, 255)}


def n_blocks(size: int) -> int:
    """Scales per moment of a param of ``size`` elements."""
    return (size + BLOCK - 1) // BLOCK


def span_state(opt, first, params, names):
    """The int8 state of a span of params: per moment one ``uint8`` block of codes and one
    float32 block of scales, viewed per param (existing views copied in). Fills
    ``opt._state`` and returns the blocks (for the grads' overlap check)."""
    sizes = [p.size for p in params]
    counts = [n_blocks(n) for n in sizes]
    codes = zeros_like_many(len(names), (sum(sizes),), np.uint8)
    scales = zeros_like_many(len(names), (sum(counts),), np.float32)
    for name, cblock, sblock in zip(names, codes, scales):
        offset = soffset = 0
        for j, (p, n, k) in enumerate(zip(params, sizes, counts)):
            view = cblock[offset:offset + n].reshape(p.shape, order=memory_order(p))
            sview = sblock[soffset:soffset + k]
            st = opt._state[first + j]
            for key, v in ((name, view), (SCALES[name], sview)):
                old = st.get(key)
                if old is not None:
                    v[...] = old
                st[key] = v
            offset += n
            soffset += k
    keep = set(names) | {SCALES[n] for n in names}
    for j in range(len(params)):
        for key in list(opt._state[first + j]):
            if key not in keep:
                del opt._state[first + j][key]
    return [*codes, *scales]


class Int8Step(EngineFront):
    """The engine front of an int8-state optimizer (:mod:`fastlr.optim.front`): the Adam
    engine holds the layout, evaluates the schedules and checks a step's grads and values
    (``begin_windows``); ``step`` then runs the kernel per param (the float32 step pays
    nothing for this mode)."""

    __slots__ = ("last_grad_norm", "published", "regions")

    def __init__(self, owner: Any, engine: Any) -> None:
        super().__init__(owner, engine)
        #: the state blocks, for the grads' overlap check (:func:`regions`)
        self.regions = regions([])
        #: the grads' norm of the last step that clipped (NaN before)
        self.last_grad_norm = math.nan
        #: indices of the params whose 16-bit param the last step stored (run)
        self.published: set = set()

    def step(self, grads: Any, t: int, n_threads: int, max_grad_norm: float,
             skip_nonfinite: bool) -> bool:
        """One update: everything checked by the engine (nothing written), clipping and the
        non-finite scan by one compiled reduction, then the kernel per param; counts as
        the engine does. Returns whether the update was applied."""
        opt = self._owner()
        engine = self._engine
        engine.begin_windows(grads, t)       # grads, schedules, values: raises, writes nothing
        engine.abandon_windows()
        values = engine.group_values(t, False)      # the values just checked (no new call)
        if isinstance(grads, np.ndarray):   # (checked by the engine: the rule of bare_grad)
            grads = bare_grad(f"{opt._name}.step", grads, [p.shape for p in opt._params],
                              engine.total_size)
        if isinstance(grads, np.ndarray):   # (its size and layout too: split unchecked)
            check_overlap(opt, [grads], "the flat grad buffer", "int8 state")
            grads = flat_views(opt._params, grads)
        else:
            check_overlap(opt, grads, "grads[{}]", "int8 state")
        grads = clipped(self, list(grads), n_threads, max_grad_norm, skip_nonfinite)
        if grads is None:
            return False
        self.published = set()
        run(opt, grads, values, kernels.adam_int8_state, n_threads, self.published)
        return True


def run(opt, grads, values, fn, n_threads=None, published=None):
    """``fn`` (the kernel or its twin) on every param with its group's values at this step,
    then the counts (:func:`fastlr.optim.front.run_per_param`). With ``published`` (a set;
    the compiled step), a float32 master of a 16-bit param in its layout is stepped by
    :func:`fastlr.kernels.adam_mixed_int8_state` instead (when it is aligned and native),
    which also stores the param (the master rounded to nearest even: what publishing the
    masters would store, in the same pass), and its index is added to ``published``."""
    def call(i, grad, st, kwargs):
        p = opt._params[i]
        state = (st["exp_avg"], st["exp_avg_scale"], st["exp_avg_sq"], st["exp_avg_sq_scale"])
        user = opt._user(p) if published is not None and getattr(opt, "_masters_of", None) \
            else None
        # (a misaligned or non-native 16-bit array is published as before: the kernel
        # refuses it, and nothing may be refused after the first param is updated)
        if user is not None and _same_layout(user, p) and user.flags.aligned and \
                user.dtype.isnative:
            kernels.adam_mixed_int8_state(user, grad, *state, p, **kwargs)
            published.add(i)
        else:
            # grads here are p's dtype: the engine (Int8Step.step) passes a 16-bit grad only
            # for a 16-bit param stored above (else WidenFirst: the caller widens it), and
            # the reference mode widens every one first (_master_grads). The cast is a guard
            # for a caller that passes a 16-bit grad of a master unchecked: widened exactly.
            fn(p, grad if grad.dtype == p.dtype else grad.astype(p.dtype), *state, **kwargs)

    run_per_param(opt, grads, values, call, n_threads)


# ---- checkpoints: conversions between state dtypes -------------------------------------
def decoded(p, codes, scales, moment, order=None):
    """The float32 values of a moment's int8 state (codes and scales) of param ``p``, in
    ``p``'s layout: the code's value times its block's scale (exact in float32). The
    blocks run in ``order`` (default: ``p``'s memory order)."""
    emax, _ = _CODES[moment]
    flat = np.ravel(codes, order=order or memory_order(p)).astype(np.uint32)
    value = (int8_decode_signed if moment == "exp_avg" else int8_decode)(flat, emax)
    with np.errstate(invalid="ignore", over="ignore"):
        out = value * np.repeat(np.asarray(scales, np.float32), BLOCK)[:flat.size]
    return out.reshape(p.shape, order=order or memory_order(p))


def _blocks_order(p, codes):
    """The memory order a checkpoint's codes cut their blocks in: their own (a state dict
    copies each param's codes in its layout, and files keep it); None where C and F order
    are the same for ``p``'s shape."""
    if sum(n > 1 for n in p.shape) < 2:
        return None
    if codes.flags.f_contiguous and not codes.flags.c_contiguous:
        return "F"
    return "C" if codes.flags.c_contiguous else "?"


def encoded(p, values, moment):
    """A moment's float values (float64 rounded to float32 first) as int8 state of param
    ``p``: (codes in ``p``'s layout, scales). Each block's scale is its largest magnitude
    (a NaN propagates into it, as in the kernel); each code is the value over the scale
    rounded to the nearest code (a one-time conversion: nothing to average out)."""
    emax, cmax = _CODES[moment]
    x = np.ravel(np.asarray(values, dtype=np.float32), order=memory_order(p))
    n = x.size
    nblk = n_blocks(n)
    mags = x.view(np.uint32) & np.uint32(0x7FFFFFFF)
    padded = np.zeros(nblk * BLOCK, dtype=np.uint32)
    padded[:n] = mags
    scales = padded.reshape(nblk, BLOCK).max(axis=1).view(np.float32) if nblk else \
        np.zeros(0, np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(scales > 0, np.float32(1) / scales, np.float32(0)).astype(np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        y = mags.view(np.float32) * np.repeat(inv, BLOCK)[:n]
    codes = int8_encode(y, np.full(n, 1 << 19, dtype=np.uint32), emax, cmax)
    if moment == "exp_avg":
        codes = codes | ((x.view(np.uint32) >> np.uint32(24)) & np.uint32(128))
    return codes.astype(np.uint8).reshape(p.shape, order=memory_order(p)), \
        np.ascontiguousarray(scales, dtype=np.float32)


def expected(p: np.ndarray, buf: str):
    """What int8 state buffer ``buf`` (codes or scales) of param ``p`` must be: (dtype,
    shape, in words)."""
    if buf in _CODES:
        return np.dtype(np.uint8), p.shape, f"uint8 codes (int8 state) of shape {p.shape}"
    k = n_blocks(p.size)
    return np.dtype(np.float32), (k,), (f"float32 of shape ({k},) (one scale per block of "
                                        f"{BLOCK} of the param's {p.size} elements)")


def checked(opt, name: str, i: int, p: np.ndarray, buf: str, arr: Any) -> np.ndarray:
    """``arr`` as int8 state buffer ``buf`` of param ``i`` (``p``); else ``ValueError``."""
    dtype, shape, text = expected(p, buf)
    if not isinstance(arr, np.ndarray) or arr.dtype != dtype or arr.shape != shape:
        raise ValueError(f"{name}: state[{i}][{buf!r}] must be {text} like "
                         f"{opt._label(i)}, got {getattr(arr, 'dtype', type(arr).__name__)} "
                         f"{getattr(arr, 'shape', '')}")
    return arr


def state_in(opt, name: str, i: int, p: np.ndarray, st: Dict[str, Any]) -> Dict[str, Any]:
    """Param ``i``'s checkpoint state ``st`` converted to the state dtype ``opt`` keeps:
    int8 state (codes and scales, checked here) decoded to float32 for float32/bfloat16
    state; float moments encoded for int8 state (:func:`encoded`). Anything else is left
    for the caller's checks. Raises ``ValueError`` naming the entry; ``st`` is not
    changed."""
    mine = getattr(opt, "_state_dtype", "float32") == "int8"
    out = st
    for moment, scale_key in SCALES.items():
        if moment not in st:
            continue
        if scale_key in st:                    # int8 state: its blocks' memory order
            codes = checked(opt, name, i, p, moment, st[moment])
            scales = checked(opt, name, i, p, scale_key, st[scale_key])
            order = _blocks_order(p, codes)
            if order == "?":
                raise ValueError(f"{name}: state[{i}][{moment!r}] must be contiguous (C or "
                                 f"F order: its memory order is the order of its blocks), "
                                 f"got strides {codes.strides}")
            if not mine:                        # into float state: decoded
                out = dict(out) if out is st else out
                out[moment] = decoded(p, codes, scales, moment, order)
                del out[scale_key]
            elif order is not None and order != memory_order(p):
                # int8 state saved from a param of the other layout: its blocks run across
                # this param's; decoded in theirs, encoded in this param's (a conversion)
                out = dict(out) if out is st else out
                out[moment], out[scale_key] = encoded(
                    p, decoded(p, codes, scales, moment, order), moment)
        elif scale_key not in st and mine:     # float state into int8 state
            v = st[moment]
            if not isinstance(v, np.ndarray) or v.shape != p.shape or v.dtype.kind != "f":
                continue                        # the caller's check names it
            if moment == "exp_avg_sq" and bool((v < 0).any()):
                raise ValueError(f"{name}: state[{i}]['exp_avg_sq'] holds negative values; "
                                 f"a second moment is >= 0 (it cannot be encoded as int8 "
                                 f"state)")
            out = dict(out) if out is st else out
            out[moment], out[scale_key] = encoded(p, v, moment)
    return out

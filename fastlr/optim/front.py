"""An engine front: an optimizer whose step is not the engine's one call (SparseAdam's rows,
int8 state's per-param kernel) keeps the engine for the layout, the schedules and the
checks, and puts this in its place, so that :meth:`fastlr.Optimizer.step` calls it as it
calls the engine (with the optimizer's lock, names lookup and error relabelling around
it). Not an ``Engine``: ``supports_windows`` is False for it."""

import bisect
import math
import weakref
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from fastlr._core.engine import bare_grad_error, grad_stats


class EngineFront:
    """Delegates the layout and the schedules to ``engine``; subclasses define ``step(grads,
    t, n_threads, max_grad_norm, skip_nonfinite) -> bool`` and ``last_grad_norm``."""

    __slots__ = ("_owner", "_engine")

    def __init__(self, owner: Any, engine: Any) -> None:
        self._owner = weakref.ref(owner)
        self._engine = engine

    def configure(self, *args: Any) -> None:
        self._engine.configure(*args)

    def set_groups(self, groups: Any) -> None:
        self._engine.set_groups(groups)

    def group_values(self, t: int) -> Any:
        return self._engine.group_values(t)


#: a param's step number must stay below it (the kernels' int64 step)
STEP_LIMIT = 2**63 - 1


def clipped(front: Any, grads: List[np.ndarray], n_threads: int, max_grad_norm: float,
            skip_nonfinite: bool) -> Optional[List[np.ndarray]]:
    """The grads a per-param step applies: scanned for NaN/Inf and clipped to
    ``max_grad_norm`` by one compiled reduction (``front.last_grad_norm`` set); None when
    a non-finite grad skips the step. A 16-bit grad is widened to float32 (exact) for
    both; clipped grads are new arrays (``g * float32(factor)``), the caller's stay."""
    if not (max_grad_norm or skip_nonfinite):
        return grads
    wide = [g if g.dtype in (np.float32, np.float64) else g.astype(np.float32)
            for g in grads]
    sumsq, nonfinite = grad_stats(wide, n_threads=n_threads)
    if max_grad_norm:
        front.last_grad_norm = math.sqrt(sumsq)
    if nonfinite and skip_nonfinite:
        return None
    if max_grad_norm:
        coef = max_grad_norm / (front.last_grad_norm + 1e-6)
        if not coef >= 1.0:         # torch's factor, a NaN kept (clip_scale)
            # the factor in each grad's dtype, as the engine applies it (a 0-d grad stays
            # an array)
            with np.errstate(invalid="ignore", over="ignore"):
                return [np.multiply(g, g.dtype.type(coef), out=np.empty_like(g))
                        for g in wide]
    return grads


def run_per_param(opt: Any, grads: Sequence[np.ndarray], values: List[Dict[str, Any]],
                  call: Callable[..., None], n_threads: Optional[int] = None,
                  own_kwargs: bool = False) -> None:
    """``call(i, grad, state, kwargs)`` for every param ``i`` (a kernel or its twin on it)
    with its group's values at this step and its step number, then the counts and the
    groups' used values. The params and groups are the layout the engine checked
    (``opt._layout``), not the ``param_groups`` lists, which a caller may have edited
    since; every param's next step number is checked before any is updated.
    ``own_kwargs``: kwargs are the optimizer's ``_reference_kwargs`` for the param (its
    state buffers and step included), made per param (SGD's marks its momentum buffer
    started), without ``n_threads``."""
    counts = opt._counts.tolist()
    if counts and max(counts) >= STEP_LIMIT:
        i = counts.index(max(counts))
        raise ValueError(f"{opt._name}.step: params[{i}] has taken {counts[i]} steps; "
                         f"its next step number must be < 2**63. Nothing was updated")
    user_of = getattr(opt, "_user", None) if getattr(opt, "_masters_of", None) else None
    for i, p in enumerate(opt._params):
        # the engine writes through its own pointers; the kernels refuse read-only views
        # (a master in param_groups, a live state view), so they are refused here first;
        # so is a 16-bit param kept with a master (the step stores it: int8.run)
        user = user_of(p) if user_of is not None else None
        if not p.flags.writeable or (user is not None and not user.flags.writeable):
            raise ValueError(f"{opt._name}.step: params[{i}] is read-only "
                             f"(flags.writeable=False) but is updated in place. Nothing "
                             f"was updated")
        for key, buf in opt._state[i].items():
            if isinstance(buf, np.ndarray) and not buf.flags.writeable:
                raise ValueError(f"{opt._name}.step: state[{i}][{key!r}] is read-only "
                                 f"(flags.writeable=False) but is updated in place. "
                                 f"Nothing was updated")
    base: Dict[int, Dict[str, Any]] = {}
    for first, n, g, _ in opt._layout:
        if own_kwargs:
            for i in range(first, first + n):
                call(i, grads[i], opt._state[i],
                     opt._reference_kwargs(opt.param_groups[g], values[g], i))
            continue
        if g not in base:
            kwargs = opt._reference_kwargs(opt.param_groups[g], values[g], first)
            for key in ("step", *opt._state[first]):
                kwargs.pop(key, None)
            base[g] = dict(kwargs, n_threads=n_threads)
        for i in range(first, first + n):
            call(i, grads[i], opt._state[i], dict(base[g], step=counts[i] + 1))
    for g, v in enumerate(values):
        opt._used[g] = [v["lr"], v["momentum"], v["beta1"], v["weight_decay"]]
    opt._counts += 1


def memory_order(p: np.ndarray) -> str:
    """"F" for an F-contiguous array that is not also C-contiguous, else "C"."""
    return "F" if (p.flags.f_contiguous and not p.flags.c_contiguous) else "C"


def check_flat_size(fn: str, flat: np.ndarray, total: int) -> None:
    """Raise unless the flat grad buffer ``flat`` holds ``total`` elements (``fn``: the
    caller's name for the message)."""
    if flat.size != total:
        raise ValueError(f"{fn}: the flat grad buffer has {flat.size} elements but the "
                         f"params have {total} in all")


def check_flat_size_and_layout(fn: str, flat: np.ndarray, total: int) -> None:
    """Raise unless the flat grad buffer ``flat`` holds ``total`` elements, C-contiguous,
    aligned and in native byte order (``fn``: the caller's name for the message)."""
    check_flat_size(fn, flat, total)
    if not (flat.flags.c_contiguous and flat.flags.aligned and flat.dtype.isnative):
        raise ValueError(f"{fn}: the flat grad buffer must be C-contiguous, aligned and "
                         f"in native byte order")


def bare_grad(fn: str, grads: np.ndarray, shapes: Sequence[Any], total: int) -> Any:
    """One grad array (not a list) passed for params of ``shapes`` (``total`` elements in
    all), as the step engine takes it: ``[grads]`` when there is one param and the array
    has its shape (the one param's grad: the list form's checks follow), else ``grads``, a
    flat grad buffer, which must be 1-D (its size, dtype and layout are the caller's to
    check). Raises ValueError (bare_grad_error: the engine's wording) for any other shape;
    ``fn`` names the caller in the message."""
    if len(shapes) == 1 and grads.shape == tuple(shapes[0]):
        return [grads]
    if grads.ndim != 1:
        raise bare_grad_error(fn, grads.shape, len(shapes),
                              tuple(shapes[0]) if shapes else (), total)
    return grads


def split_flat(params: Sequence[np.ndarray], flat: np.ndarray, fn: str,
               layout: bool = True) -> List[np.ndarray]:
    """One grad array as per-param grads (:func:`bare_grad`): the one param's own grad (an
    array of its shape) as ``[flat]``, else a 1-D flat grad buffer of the params' total
    size as per-param views, each in its param's memory order; with ``layout``, the buffer
    must also be C-contiguous, aligned and native (:func:`check_flat_size_and_layout`).
    ``fn`` names the caller in the messages. Raises before anything is written."""
    total = sum(p.size for p in params)
    one = bare_grad(fn, flat, [p.shape for p in params], total)
    if one is not flat:
        return one
    if layout:
        check_flat_size_and_layout(fn, flat, total)
    else:
        check_flat_size(fn, flat, total)
    return flat_views(params, flat)


def split_flat_same_dtype(params: Sequence[np.ndarray], flat: np.ndarray,
                          fn: str) -> List[np.ndarray]:
    """:func:`split_flat` (the buffer's layout checked) for a front whose every param takes
    a grad of its own dtype only (LAMB, LARS, Muon, Adafactor): a 1-D flat grad buffer
    over the params must also have the dtype of each (checked after its shape, before its
    size, as the step engine checks one), else a TypeError naming the first param that has
    another. The one param's own grad (an array of its shape) is left to the list form's
    checks. Raises before anything is written."""
    if flat.ndim == 1 and not (len(params) == 1 and flat.shape == params[0].shape):
        for i, p in enumerate(params):
            if p.dtype != flat.dtype:
                raise TypeError(f"{fn}: the flat grad buffer has dtype {flat.dtype} but "
                                f"params[{i}] has dtype {p.dtype}; a flat grad buffer has "
                                f"the dtype of every param (pass a list of grads for params "
                                f"of several dtypes). Nothing was updated")
    return split_flat(params, flat, fn)


def flat_views(params: Sequence[np.ndarray], flat: np.ndarray) -> List[np.ndarray]:
    """A flat grad buffer already checked (1-D, the params' total size: :func:`split_flat`
    without its checks, for a caller that ran them) as per-param views, each in its param's
    memory order."""
    out, off = [], 0
    for p in params:
        out.append(flat[off:off + p.size].reshape(p.shape, order=memory_order(p)))
        off += p.size
    return out


def _root(a):
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


def regions(blocks):
    """What :func:`check_overlap` needs of the arrays a per-param step writes (int8 state's
    blocks; the params, 16-bit arrays and state of fastlr/optim/fused16.py): the ids of the
    arrays that own their memory, and the sorted (start, end) addresses."""
    spans = []
    for b in blocks:
        if b.nbytes:
            lo = b.__array_interface__["data"][0]
            spans.append((lo, lo + b.nbytes))
    spans.sort()
    return {id(_root(b)) for b in blocks}, [lo for lo, _ in spans], spans


def check_overlap(opt, grads, what, owned):
    """A grad overlapping the arrays of ``opt._engine.regions`` (:func:`regions`; ``what``
    names the grad, with ``{}`` for its index, ``owned`` those arrays) is refused before
    anything is written. A grad whose memory belongs to another array that owns it (a
    fresh array, or a view of one) cannot overlap: only the others' addresses are looked
    at (an address costs a microsecond; an attribute, a tenth of that). (Where the step
    engine steps 16-bit params itself, their twin's front holds the regions.)"""
    front = opt._engine if isinstance(opt._engine, EngineFront) else opt._fused16
    roots, starts, spans = front.regions
    for i, g in enumerate(grads):
        r = _root(g)
        if r.base is None and r.flags.owndata and id(r) not in roots or not g.nbytes:
            continue
        lo = g.__array_interface__["data"][0]
        hi = lo + g.nbytes
        k = bisect.bisect_right(starts, hi - 1) - 1
        if k >= 0 and spans[k][1] > lo:
            raise ValueError(f"{opt._name}.step: {what.format(i)} overlaps the "
                             f"optimizer's {owned} in memory. Nothing was updated")

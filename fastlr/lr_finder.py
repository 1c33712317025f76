"""The learning-rate range test ("LR finder") of Leslie Smith, as fastai's ``lr_find`` and
pytorch-lr-finder run it, for any fastlr optimizer.

:func:`find_lr` trains for up to ``num_steps`` steps while it raises the learning rate from
``start_lr`` to ``end_lr``, records the loss at each lr, stops once the loss diverges, and
then (by default) puts the params and the optimizer back exactly as they were. The result
holds the curve and a few suggested learning rates.

>>> import numpy as np, fastlr
>>> from fastlr.lr_finder import find_lr
>>> a = np.array([0.5, 1.0, 2.0])           # f(w) = 0.5 * sum(a * w**2): SGD needs lr < 2/2
>>> w = np.ones(3)
>>> opt = fastlr.SGD([w], lr=0.1)
>>> result = find_lr(opt, lambda step: (0.5 * float(a @ w**2), [a * w]),
...                  start_lr=1e-4, end_lr=100.0, num_steps=60)
>>> result.stop_reason, len(result.lrs) < 60
('diverged', True)
>>> 0.01 < result.suggested_lr < 1.0
True
>>> w, opt.steps                            # restored: untouched
(array([1., 1., 1.]), 0)
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence, Union

import numpy as np
from numpy.typing import ArrayLike, NDArray

from fastlr._core.args import (INT_MAX, POSITIVE, UNIT, checked_real, choice_arg, flag_arg,
                               int_arg, real_arg)
from fastlr.optim import Optimizer

__all__ = ["find_lr", "LRFinderResult", "SUGGESTIONS"]

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

#: The suggestion methods, in the order they are computed; ``suggested_lr`` uses the first.
SUGGESTIONS: tuple[str, ...] = ("valley", "steepest", "min_div_10")

#: Points dropped at the end of the record before suggesting (fastai and
#: pytorch-lr-finder both drop 5); at the start ``num_steps // 10`` are dropped (fastai).
SKIP_END: int = 5

_MODES = ("exp", "linear")
_NAME = "fastlr.find_lr"


def _lr_sweep(start_lr, end_lr, num_steps, mode):
    """The lr of each step: ``start*(end/start)**(i/(n-1))`` (exp) or
    ``start + (i/(n-1))*(end-start)`` (linear), i = 0..n-1 (pytorch-lr-finder's rules)."""
    frac = np.arange(num_steps, dtype=np.float64) / (num_steps - 1)
    if mode == "exp":
        return start_lr * (end_lr / start_lr) ** frac
    return start_lr + frac * (end_lr - start_lr)


# ---------------------------------------------------------------------------------------
# suggestions
# ---------------------------------------------------------------------------------------
def _valley_index(losses):
    """fastai's ``valley`` (fastai/callback/schedule.py), index form.

    An O(n^2) longest-decreasing-subsequence DP gives ``lds[i]``, the length of the longest
    strictly decreasing subsequence ending at ``i``; ``max_end`` is the first index with the
    largest ``lds`` and ``max_start = max_end - lds[max_end]`` (fastai's expression, which is
    one before the subsequence's first element). Then ``sections = (max_end - max_start)/3``
    and ``idx = max_start + int(sections) + int(sections/2)``, about halfway down the
    valley. One deviation: fastai's ``idx`` is -1 when the longest decreasing run has two
    points and starts at the first one, which indexes the *last* lr; here it is 0.
    """
    n = len(losses)
    max_start, max_end = 0, 0
    lds = [1] * n
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and lds[i] < lds[j] + 1:
                lds[i] = lds[j] + 1
            if lds[max_end] < lds[i]:
                max_end = i
                max_start = max_end - lds[max_end]
    sections = (max_end - max_start) / 3
    idx = max_start + int(sections) + int(sections / 2)
    return max(idx, 0)


def _suggest(lrs, smoothed, num_steps):
    """{name: lr or None} from the recorded curve (see :func:`find_lr`)."""
    n = len(lrs)
    lo, hi = num_steps // 10, n - SKIP_END
    w_lrs, w_loss = lrs[lo:hi], smoothed[lo:hi]
    if len(w_lrs) < 3:                       # too short a record to trim: use all of it
        w_lrs, w_loss = lrs, smoothed
    bad = ~np.isfinite(w_loss)
    if bad.any():                            # fastai: truncate at the first NaN
        first = int(np.argmax(bad))
        w_lrs, w_loss = w_lrs[:first], w_loss[:first]
    out = dict.fromkeys(SUGGESTIONS)
    if len(w_loss) >= 1:
        out["valley"] = float(w_lrs[_valley_index(w_loss.tolist())])
        out["min_div_10"] = float(w_lrs[int(np.argmin(w_loss))]) / 10.0
    if len(w_loss) >= 2:
        slope = np.gradient(w_loss, np.log10(w_lrs))
        out["steepest"] = float(w_lrs[int(np.argmin(slope))])
    return out


# ---------------------------------------------------------------------------------------
# the result
# ---------------------------------------------------------------------------------------
class LRFinderResult:
    """What :func:`find_lr` recorded, one entry per step taken (plus the step that stopped
    the sweep).

    Attributes: ``lrs``, ``losses`` (raw), ``smoothed_losses`` (float64 arrays of the same
    length); ``suggestions``, a dict ``{"valley", "steepest", "min_div_10"} -> lr`` (None
    where the record is too short); ``stop_reason``: ``"completed"``, ``"diverged"`` or
    ``"non-finite loss"``; ``num_steps`` and ``mode`` as requested. ``suggested_lr`` is the
    valley suggestion (fastai's default). Suggestions are hints, not answers: look at the
    curve (:meth:`plot`).

    Parameters
    ----------
    lrs : array_like of float
        The lr of each recorded step.
    losses : array_like of float
        The raw loss of each recorded step.
    smoothed_losses : array_like of float
        The debiased smoothed loss of each recorded step (NaN after a non-finite loss).
    num_steps : int
        The steps the sweep was asked for.
    mode : {'exp', 'linear'}
        How the lr was swept.
    stop_reason : {'completed', 'diverged', 'non-finite loss'}
        Why the sweep ended.

    Examples
    --------
    >>> import numpy as np, fastlr
    >>> from fastlr.lr_finder import LRFinderResult
    >>> lrs = np.logspace(-4, 0, 20)
    >>> losses = (np.log10(lrs) + 1.0) ** 2           # lowest at lr = 0.1
    >>> r = LRFinderResult(lrs, losses, losses, num_steps=20, mode="exp",
    ...                    stop_reason="completed")
    >>> sorted(r.suggestions)
    ['min_div_10', 'steepest', 'valley']
    >>> 1e-3 < r.suggested_lr < 0.2
    True
    """

    lrs: NDArray[np.float64]
    losses: NDArray[np.float64]
    smoothed_losses: NDArray[np.float64]
    num_steps: int
    mode: str
    stop_reason: str
    suggestions: dict[str, Optional[float]]

    def __init__(self, lrs: ArrayLike, losses: ArrayLike, smoothed_losses: ArrayLike, *,
                 num_steps: int, mode: str, stop_reason: str) -> None:
        self.lrs = np.asarray(lrs, dtype=np.float64)
        self.losses = np.asarray(losses, dtype=np.float64)
        self.smoothed_losses = np.asarray(smoothed_losses, dtype=np.float64)
        self.num_steps = num_steps
        self.mode = mode
        self.stop_reason = stop_reason
        self.suggestions = _suggest(self.lrs, self.smoothed_losses, num_steps)

    @property
    def suggested_lr(self) -> Optional[float]:
        """The default suggestion: ``suggestions["valley"]`` (None if there is none)."""
        return self.suggestions[SUGGESTIONS[0]]

    def __repr__(self) -> str:
        sugg = ", ".join(f"{k}={v:.3g}" if v is not None else f"{k}=None"
                         for k, v in self.suggestions.items())
        span = (f"lr {self.lrs[0]:.3g}..{self.lrs[-1]:.3g}" if len(self.lrs) else "no lrs")
        return (f"LRFinderResult({len(self.lrs)}/{self.num_steps} steps, {self.mode}, "
                f"{span}, {self.stop_reason}; suggested_lr="
                f"{'None' if self.suggested_lr is None else format(self.suggested_lr, '.3g')}"
                f"; {sugg})")

    def plot(self, ax: Optional[Axes] = None,
             path: Union[str, os.PathLike[str], None] = None, log: bool = True) -> Figure:
        """Draw the loss against the lr, marking the suggestions.

        The smoothed loss, with the raw loss faint; each suggestion is marked on the
        smoothed curve at its lr (the default one also with a vertical line). The y-range
        is that of the curve before its last 5 points, so a blow-up at the end does not
        flatten the rest. Needs matplotlib (``pip install 'fastlr[plot]'``), imported here,
        not at ``import fastlr``; with no display and no ``MPLBACKEND`` it uses the
        non-interactive Agg backend.

        Parameters
        ----------
        ax : matplotlib.axes.Axes or None, default None
            The Axes to draw on (None: a new figure).
        path : str, os.PathLike or None, default None
            Write the figure there (format from the extension) and, if this method created
            it, close it.
        log : bool, default True
            Whether the lr axis is log-scaled.

        Returns
        -------
        matplotlib.figure.Figure
            The figure drawn on.

        Raises
        ------
        ImportError
            If matplotlib is not installed.

        Examples
        --------
        >>> result.plot(path="lr_find.png")      # doctest: +SKIP
        """
        from fastlr.plot import require_matplotlib

        created = ax is None
        plt = None
        fig: Any
        if ax is None:
            if path is not None:
                require_matplotlib()
                # a figure outside pyplot: no backend, nothing left open
                from matplotlib.figure import Figure
                fig = Figure(figsize=(7, 4), layout="constrained")
                ax = fig.add_subplot()
            else:
                plt = require_matplotlib()
                # constrained layout: the x label stays inside the figure however it is saved
                fig, ax = plt.subplots(figsize=(7, 4), layout="constrained")
        fig = ax.figure
        finite = np.isfinite(self.smoothed_losses)
        lrs, raw, sm = self.lrs[finite], self.losses[finite], self.smoothed_losses[finite]
        ax.plot(lrs, raw, color="0.7", lw=0.8, label="loss")
        ax.plot(lrs, sm, color="C0", lw=1.8, label="smoothed loss")
        xs = np.log10(lrs) if log else lrs
        markers = {"valley": ("C3", "o"), "steepest": ("C2", "s"), "min_div_10": ("C1", "^")}
        for name, lr in self.suggestions.items():
            if lr is None or len(lrs) == 0:
                continue
            y = float(np.interp(math.log10(lr) if log else lr, xs, sm))
            color, marker = markers[name]
            ax.plot([lr], [y], marker=marker, color=color, ms=8, ls="none",
                    label=f"{name}: {lr:.2e}")
        if self.suggested_lr is not None:
            ax.axvline(self.suggested_lr, color="C3", lw=0.8, ls="--")
        if len(sm):
            # the y-range of the curve before it diverges, so the blow-up does not flatten it
            lo = max(self.num_steps // 10, 0)
            keep = slice(lo, max(len(sm) - SKIP_END, lo + 1))
            part, raw_part = sm[keep], raw[keep]
            if not len(part):
                part, raw_part = sm, raw
            bottom = min(float(np.min(sm)), float(np.min(raw_part)))
            top = max(float(np.max(part)), float(sm[0]))
            pad = 0.05 * (top - bottom) if top > bottom else max(abs(top) * 0.05, 1e-12)
            ax.set_ylim(bottom - pad, top + pad)
        if log:
            ax.set_xscale("log")
        ax.set_xlabel("learning rate" + (" (log scale)" if log else ""))
        ax.set_ylabel("loss")
        ax.set_title(f"LR range test ({len(self.lrs)} steps, {self.stop_reason})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        if path is not None:
            fig.savefig(path, dpi=100, bbox_inches="tight")
            if created and plt is not None:
                plt.close(fig)
        return fig


# ---------------------------------------------------------------------------------------
# the range test
# ---------------------------------------------------------------------------------------
def _check_args(optimizer: Any, loss_and_grads: Any, start_lr: Any, end_lr: Any,
                num_steps: Any, mode: Any, smooth: Any, diverge_factor: Any,
                restore: Any) -> tuple[float, float, int, float, float]:
    fn = _NAME
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"{fn}: optimizer must be a fastlr optimizer (fastlr.SGD, "
                        f"RMSprop, Adam, AdamW, ...), got {type(optimizer).__name__}")
    if not callable(loss_and_grads):
        raise TypeError(f"{fn}: loss_and_grads must be a callable step -> (loss, grads), "
                        f"got {type(loss_and_grads).__name__}")
    start_lr = checked_real(fn, "start_lr", start_lr, POSITIVE)
    end_lr = real_arg(fn, "end_lr", end_lr)
    if end_lr <= start_lr:
        raise ValueError(f"{fn}: end_lr must be > start_lr ({start_lr!r}), got {end_lr!r}")
    num_steps = int_arg(fn, "num_steps", num_steps, 2, INT_MAX)
    choice_arg(fn, "mode", mode, _MODES)
    smooth = checked_real(fn, "smooth", smooth, UNIT)
    diverge_factor = real_arg(fn, "diverge_factor", diverge_factor)
    if diverge_factor <= 1.0:
        raise ValueError(f"{fn}: diverge_factor must be > 1, got {diverge_factor!r}")
    flag_arg(fn, "restore", restore)
    return start_lr, end_lr, num_steps, smooth, diverge_factor


def _as_loss(step, out):
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise TypeError(f"{_NAME}: loss_and_grads({step}) must return (loss, grads), got "
                        f"{type(out).__name__}")
    loss = out[0]
    if isinstance(loss, (bool, np.bool_)):
        raise TypeError(f"{_NAME}: loss_and_grads({step}) returned a bool loss")
    try:
        arr = np.asarray(loss, dtype=np.float64)
    except (TypeError, ValueError):
        arr = None
    if arr is None or arr.size != 1:
        raise TypeError(f"{_NAME}: loss_and_grads({step}) must return a scalar loss, got "
                        f"{type(loss).__name__}"
                        f"{'' if arr is None else ' of shape ' + str(arr.shape)}")
    return float(arr.reshape(())), out[1]


def find_lr(optimizer: Optimizer, loss_and_grads: Callable[[int], tuple[float, Any]], *,
            start_lr: float = 1e-7, end_lr: float = 10.0, num_steps: int = 100,
            mode: str = "exp", smooth: float = 0.98, diverge_factor: float = 4.0,
            restore: bool = True) -> LRFinderResult:
    """Run the learning-rate range test with ``optimizer``; return an :class:`LRFinderResult`.

    ``loss_and_grads(step) -> (loss, grads)``, for ``step = 0..num_steps-1``, computes the
    loss and the gradients at the params' current values (pick the step's batch from
    ``step``); ``grads`` is whatever ``optimizer.step`` takes. Step ``i``:

    1. every param group's lr is set to ``lr_i`` (all groups get the same swept lr; other
       hyperparameters are left alone), where ``lr_i = start_lr*(end_lr/start_lr)**(i/(n-1))``
       (``mode="exp"``) or ``start_lr + i/(n-1)*(end_lr-start_lr)`` (``"linear"``);
    2. ``loss_i, grads = loss_and_grads(i)``; ``(lr_i, loss_i)`` is recorded (the lr the
       step uses, as pytorch-lr-finder records it);
    3. the debiased EMA (fastai's ``AvgSmoothLoss``): ``avg = smooth*avg + (1-smooth)*loss_i``,
       ``smoothed_i = avg / (1 - smooth**(i+1))``; ``best = min(smoothed_0..i)``;
    4. the sweep stops (without stepping) on a non-finite loss, or when it diverges:
       ``smoothed_i > diverge_factor * best`` (fastai: 4, pytorch-lr-finder: 5) -- written
       ``smoothed_i - best > (diverge_factor - 1) * |best|``, the same rule for a loss >= 0
       that still makes sense for a negative one;
    5. otherwise ``optimizer.step(grads)``.

    Suggestions use the smoothed curve without its first ``num_steps // 10`` and last 5
    points (fastai's window; the whole record if that leaves fewer than 3), cut at the
    first non-finite value:

    * ``"valley"`` -- fastai's default: about halfway down the longest decreasing stretch
      (its longest-decreasing-subsequence rule, see ``_valley_index``);
    * ``"steepest"`` -- the lr where ``np.gradient(smoothed, log10(lr))`` is most negative
      (pytorch-lr-finder's suggestion; in exp mode its index gradient is the same);
    * ``"min_div_10"`` -- the lr of the minimum smoothed loss, divided by 10 (fastai's
      ``minimum``).

    With ``restore=True`` (the default) the params (written back in place: the same array
    objects), the optimizer state (buffers, per-param counts, ``steps``, ``last_lr``) and
    every group's hyperparameters (the original objects: a schedule stays that schedule)
    are put back bit for bit afterwards, also when ``loss_and_grads`` or a step raises.
    With ``restore=False`` the params and state keep the sweep's updates, but the groups'
    hyperparameters are still put back (the swept lr is not left behind). Each step of
    the sweep uses its lr as written (a :class:`fastlr.ReduceLROnPlateau` factor does not
    scale it); the factors are put back with the groups either way.

    The params and state are copied once (memory: about one extra copy of each).

    Parameters
    ----------
    optimizer : fastlr.Optimizer
        The fastlr optimizer to sweep (SGD, RMSprop, Adam, AdamW, ...).
    loss_and_grads : callable
        ``loss_and_grads(step) -> (loss, grads)``: the scalar loss and the grads (whatever
        ``optimizer.step`` takes) at the params' current values.
    start_lr : float, default 1e-7
        The first lr, > 0.
    end_lr : float, default 10.0
        The last lr, > ``start_lr``.
    num_steps : int, default 100
        The most steps to take, >= 2.
    mode : {'exp', 'linear'}, default 'exp'
        Sweep the lr geometrically or linearly.
    smooth : float, default 0.98
        The loss EMA's smoothing factor, in [0, 1).
    diverge_factor : float, default 4.0
        Stop once the smoothed loss passes this multiple of the best one, > 1.
    restore : bool, default True
        Put the params and the optimizer state back afterwards.

    Returns
    -------
    LRFinderResult
        The recorded curve, why it stopped, and the suggested lrs.

    Raises
    ------
    TypeError
        If ``optimizer`` is not a fastlr optimizer, ``loss_and_grads`` is not callable or
        does not return ``(scalar loss, grads)``, or an argument has the wrong type.
    ValueError
        If an argument is out of its range (``end_lr <= start_lr``,
        ``diverge_factor <= 1``, ...).

    Examples
    --------
    >>> import numpy as np, fastlr
    >>> a = np.array([0.5, 1.0, 2.0])
    >>> w = np.ones(3)
    >>> opt = fastlr.SGD([w], lr=0.1)
    >>> result = fastlr.find_lr(opt, lambda step: (0.5 * float(a @ w**2), [a * w]),
    ...                         start_lr=1e-4, end_lr=100.0, num_steps=60)
    >>> result.stop_reason
    'diverged'
    >>> 0.01 < result.suggested_lr < 1.0
    True
    """
    start_lr, end_lr, num_steps, smooth, diverge_factor = _check_args(
        optimizer, loss_and_grads, start_lr, end_lr, num_steps, mode, smooth, diverge_factor,
        restore)
    opt = optimizer
    sweep = _lr_sweep(start_lr, end_lr, num_steps, mode)
    groups = [dict(g) for g in opt.param_groups]          # the original objects
    # a ReduceLROnPlateau's factors: writing the swept lr sets them to 1 (the sweep runs
    # each lr as written), putting the groups back keeps them
    scales = np.array(opt._lr_scale, copy=True)
    if restore:
        saved_state = opt.state_dict()                    # arrays copied
        saved_params = [np.array(p, copy=True, order="K") for p in opt._params]
        saved_used = np.array(opt._used, copy=True)       # what last_lr reports
    lrs: list[float] = []
    losses: list[float] = []
    smoothed: list[float] = []
    stop_reason = "completed"
    avg, best = 0.0, math.inf
    try:
        for i in range(num_steps):
            lr = float(sweep[i])
            for group in opt.param_groups:
                group["lr"] = lr
            loss, grads = _as_loss(i, loss_and_grads(i))
            lrs.append(lr)
            losses.append(loss)
            if not math.isfinite(loss):
                smoothed.append(math.nan)
                stop_reason = "non-finite loss"
                break
            avg = smooth * avg + (1.0 - smooth) * loss
            value = avg / (1.0 - smooth ** (i + 1))
            smoothed.append(value)
            best = min(best, value)
            if value - best > (diverge_factor - 1.0) * abs(best):
                stop_reason = "diverged"
                break
            opt.step(grads)
    finally:
        if restore:
            opt.load_state_dict(saved_state)
        for group, original in zip(opt.param_groups, groups):
            for key, value in original.items():
                if key != "params" and group.get(key) is not value:
                    group[key] = value
        np.copyto(opt._lr_scale, scales)
        if restore:
            np.copyto(opt._used, saved_used)
            for p, saved in zip(opt._params, saved_params):
                np.copyto(p, saved)
    return LRFinderResult(lrs, losses, smoothed, num_steps=num_steps, mode=mode,
                          stop_reason=stop_reason)

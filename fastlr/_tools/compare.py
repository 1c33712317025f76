"""``fastlr compare``: the learning-rate sensitivity study (issue #18).

Each method (an optimizer with its usual schedule) is trained on each of three small tasks
from the same initial weights and the same minibatch order, once per point of a log-spaced
sweep of its learning rate -- or, for the learning-rate-free methods (Prodigy, D-Adapt
Adam), of the multiplier of their estimated step size. The sweep is centered on the method's
customary default (multiplier 1.0 for the lr-free methods), so that the same position on
the sweep means "the default times the same factor" for every method. After each run the
study records the final training loss (on the whole training set, after the last step; at
the averaged point ``x`` for schedule-free), the held-out loss and, for the classifiers, the
held-out accuracy.

The summary is, per task and method, the best final training loss over the sweep and the
range of swept values whose final loss is within 5% of it::

    within  <=>  loss is finite and loss <= 1.05 * best

(the losses here are never negative). A run is diverged when a minibatch loss becomes
non-finite (the run stops there) or its final training loss is above the starting loss
(training made it worse); a diverged run is outside every range. The width of the range in
decades, ``log10(hi / lo)``, says how forgiving the method is: a wide range forgives a bad
choice of lr.

Tasks (:data:`TASKS`):

``digits``
    the demo's MLP (:func:`fastlr._tools.cli.init_params`,
    :func:`fastlr._tools.cli.loss_and_grads`) on scikit-learn's handwritten digits
    (:func:`fastlr._tools.cli.load_data`; a synthetic 10-class problem without
    scikit-learn); cross-entropy, held-out accuracy.
``lstsq``
    least squares ``mean((X w - y)**2)`` with an ill-conditioned design (singular values
    log-spaced over :data:`LSTSQ_COND`, a fixed seed) and a little noise; held-out MSE.
``logreg``
    softmax regression on scikit-learn's wine data (standardized; a synthetic 3-class
    problem without scikit-learn), cross-entropy plus an L2 penalty; held-out accuracy.

Methods (:data:`METHODS`): AdamW with a warmup-cosine schedule, SGD with momentum 0.9 and
the same schedule, ScheduleFreeAdamW (constant lr, its built-in warmup), Prodigy and D-Adapt
Adam (multiplier annealed by a cosine, as their authors recommend). D-Adapt Adam is used when
this fastlr has ``fastlr.DAdaptAdam``; the output says when it does not.

The study runs with one fastlr thread; its results depend only on the seed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, List, Optional, Sequence, TextIO, Union

import numpy as np

from fastlr._tools import cli

#: The within-range rule: a swept value is within range when its final loss is finite and
#: ``loss <= (1 + TOLERANCE) * best``.
TOLERANCE = 0.05
#: When a run counts as diverged (outside every range).
DIVERGED = ("a minibatch loss non-finite (the run stops there), or the final training loss "
            "above the starting loss")
#: Condition number of the least-squares task's design matrix.
LSTSQ_COND = 1e3
#: Default sweep: points per method and width in decades (centered on the default).
DEFAULT_POINTS = 9
DEFAULT_DECADES = 4.0


# ---------------------------------------------------------------------------------------
# tasks
# ---------------------------------------------------------------------------------------
@dataclass
class Task:
    """One problem of the study: data, initial weights, loss and its gradients.

    Attributes
    ----------
    name, title : str
        The key (``digits``) and a short title for tables and plots.
    description : str
        What the data is (says when a synthetic fallback is used).
    x_train, y_train, x_test, y_test : numpy.ndarray
        The data; the held-out part is never trained on.
    init : list of numpy.ndarray
        The initial weights (float64), copied for every run.
    loss_and_grads : callable
        ``(params, x, y) -> (loss, grads)``: the training objective on a batch.
    heldout : callable
        ``params -> (held-out loss, held-out accuracy or None)``.
    batch_size, epochs : int
        The minibatch size and the default number of passes over the training set.
    heldout_name : str
        What the held-out number in the plot is ("accuracy" or "MSE").
    """

    name: str
    title: str
    description: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    init: List[np.ndarray]
    loss_and_grads: Callable[..., Any]
    heldout: Callable[..., Any]
    batch_size: int
    epochs: int
    heldout_name: str = "accuracy"

    def steps_per_epoch(self) -> int:
        """Minibatches per pass over the training set (the last one may be short)."""
        return -(-len(self.y_train) // self.batch_size)


def _penalized(loss_and_grads, penalty, weights):
    """``loss_and_grads`` plus ``penalty / 2 * sum |params[i]|^2`` over the indices
    ``weights``: a regularized objective, whose minimum is above zero."""

    def objective(params, x, y):
        loss, grads = loss_and_grads(params, x, y)
        for i in weights:
            loss += 0.5 * penalty * float(np.sum(params[i] * params[i]))
            grads[i] = grads[i] + penalty * params[i]
        return loss, grads

    return objective


def _digits(seed: int, penalty: float = 1e-3) -> Task:
    x_tr, y_tr, x_te, y_te, name = cli.load_data(seed)
    hidden = 64
    init = cli.init_params(x_tr.shape[1], hidden, 10, seed + 1, np.float64)

    def heldout(params):
        return cli.loss_and_grads(params, x_te, y_te)[0], cli.accuracy(params, x_te, y_te)

    return Task("digits", f"digits MLP ({x_tr.shape[1]}-{hidden}-10)",
                f"{name}; the demo's MLP, L2 penalty {penalty:g} * |W|^2 / 2 on its two "
                f"weight matrices in the training loss", x_tr, y_tr, x_te, y_te, init,
                _penalized(cli.loss_and_grads, penalty, (0, 2)), heldout,
                batch_size=64, epochs=50)


def _lstsq(seed: int) -> Task:
    rng = np.random.default_rng(seed + 100)
    n_train, n_test, d = 512, 128, 64
    n = n_train + n_test
    u = np.linalg.qr(rng.standard_normal((n, d)))[0]
    v = np.linalg.qr(rng.standard_normal((d, d)))[0]
    singular = np.logspace(0.0, -math.log10(LSTSQ_COND), d) * math.sqrt(n)
    x = (u * singular) @ v.T
    w_true = rng.standard_normal(d)
    y = x @ w_true + 0.01 * rng.standard_normal(n)
    x_tr, y_tr, x_te, y_te = x[:n_train], y[:n_train], x[n_train:], y[n_train:]

    def loss_and_grads(params, xb, yb):
        r = xb @ params[0] - yb
        return float(np.mean(r * r)), [xb.T @ r * (2.0 / len(yb))]

    def heldout(params):
        r = x_te @ params[0] - y_te
        return float(np.mean(r * r)), None

    cond = np.linalg.cond(x_tr)
    return Task("lstsq", f"least squares (condition number {cond:.0f})",
                f"least squares, {n_train}x{d} design with condition number {cond:.0f} "
                f"(singular values log-spaced, seed {seed + 100}), noise std 0.01",
                x_tr, y_tr, x_te, y_te, [np.zeros(d)], loss_and_grads, heldout,
                batch_size=32, epochs=200, heldout_name="MSE")


def _softmax_xent(logits, y):
    """Mean cross-entropy and its gradient with respect to the logits."""
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    rows = np.arange(len(y))
    loss = float(-np.mean(np.log(p[rows, y] + 1e-300)))
    p[rows, y] -= 1.0
    return loss, p / len(y)


def _wine(rng: np.random.Generator):
    """(x, y, description): scikit-learn's wine data, or a synthetic problem of its shape
    (178 samples, 13 features, 3 classes) when scikit-learn is missing."""
    try:
        from sklearn.datasets import load_wine
    except ImportError:
        centers = rng.standard_normal((3, 13)) * 1.5
        y = rng.integers(0, 3, 178)
        return (centers[y] + rng.standard_normal((178, 13)) * 2.0, y,
                "a synthetic 3-class problem with 13 features (scikit-learn is not "
                "installed: pip install scikit-learn for the wine data)")
    data = load_wine()
    return (data.data.astype(np.float64), data.target.astype(np.int64),
            "scikit-learn's wine data (13 features, 3 classes)")


def _logreg(seed: int, penalty: float = 1e-3) -> Task:
    rng = np.random.default_rng(seed + 200)
    x, y, name = _wine(rng)
    x_tr, y_tr, x_te, y_te = cli.split_standardize(x, y, rng)
    k = int(y.max()) + 1

    def loss_and_grads(params, xb, yb):
        w, b = params
        loss, d = _softmax_xent(xb @ w + b, yb)
        return loss, [xb.T @ d, d.sum(axis=0)]

    def heldout(params):
        w, b = params
        logits = x_te @ w + b
        return (_softmax_xent(logits, y_te)[0],
                float(np.mean(np.argmax(logits, axis=1) == y_te)))

    return Task("logreg", f"softmax regression ({x.shape[1]} features, {k} classes)",
                f"{name}, standardized; L2 penalty {penalty:g} * |W|^2 / 2 in the training "
                f"loss", x_tr, y_tr, x_te, y_te, [np.zeros((x.shape[1], k)), np.zeros(k)],
                _penalized(loss_and_grads, penalty, (0,)), heldout, batch_size=16, epochs=300)


def in_float32(task: Task) -> Task:
    """``task`` with float32 weights and grads, for optimizers' float32-only modes (e.g.
    ``state_dtype="bfloat16"``): the initial weights rounded to float32, the loss computed
    as before (NumPy promotes to the float64 data) and the grads rounded to float32.

    Parameters
    ----------
    task : Task
        A task of :data:`TASKS`.

    Returns
    -------
    Task
        A copy; ``task`` is unchanged.
    """
    inner = task.loss_and_grads

    def loss_and_grads(params, x, y):
        loss, grads = inner(params, x, y)
        return loss, [np.asarray(g, dtype=np.float32) for g in grads]

    return replace(task, init=[np.asarray(p, dtype=np.float32) for p in task.init],
                   loss_and_grads=loss_and_grads)


#: The tasks, by name: a function ``seed -> Task``.
TASKS: Dict[str, Callable[[int], Task]] = {"digits": _digits, "lstsq": _lstsq,
                                           "logreg": _logreg}


# ---------------------------------------------------------------------------------------
# methods
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Method:
    """One optimizer of the study and how it is configured.

    Attributes
    ----------
    name : str
        The key (``adamw``).
    label : str
        Its name in tables and plots.
    cls : str
        The fastlr class (``fastlr.<cls>``).
    default : float
        The center of its sweep: the customary lr, or the multiplier 1.0 of an lr-free
        method.
    kind : str
        ``"lr"`` or ``"multiplier"`` (what the swept value is).
    schedule : str
        ``"warmup_cosine"`` (10% linear warmup, then a cosine to 0), ``"cosine"`` (a cosine
        from the value to 0) or ``"constant"``.
    options : dict
        Other constructor arguments.
    warmup : bool
        Pass ``warmup_steps`` (10% of the steps) to the constructor (schedule-free).
    """

    name: str
    label: str
    cls: str
    default: float
    kind: str
    schedule: str
    options: Dict[str, Any] = field(default_factory=dict)
    warmup: bool = False

    def available(self) -> bool:
        """Whether this fastlr has the class."""
        import fastlr

        return hasattr(fastlr, self.cls)

    def lr(self, value: float, total_steps: int) -> Any:
        """The lr argument for swept value ``value``: a number or a fastlr schedule."""
        from fastlr import schedules

        if self.schedule == "warmup_cosine":
            return schedules.warmup_cosine(value, warmup_steps=max(1, total_steps // 10),
                                           total_steps=total_steps)
        if self.schedule == "cosine":
            return schedules.cosine(value, total_steps)
        return float(value)

    def make(self, params: List[np.ndarray], value: float, total_steps: int) -> Any:
        """The optimizer over ``params`` for swept value ``value``, ready to step."""
        import fastlr

        options = dict(self.options)
        if self.warmup:
            options["warmup_steps"] = max(1, total_steps // 10)
        opt = getattr(fastlr, self.cls)(params, lr=self.lr(value, total_steps), **options)
        if hasattr(opt, "train") and hasattr(opt, "eval"):
            opt.train()         # schedule-free: params at the training point y
        return opt

    def describe(self) -> str:
        """One line: class, options, schedule."""
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        what = {"warmup_cosine": "warmup_cosine(value, 10% warmup, to 0)",
                "cosine": "cosine(value, to 0)",
                "constant": "constant"}[self.schedule]
        if self.warmup:
            what += ", warmup_steps=10% of the steps"
        return (f"fastlr.{self.cls}({opts + ', ' if opts else ''}lr={what}); sweeps the "
                f"{self.kind} around {self.default:g}")


#: The methods, in table order.
METHODS: Dict[str, Method] = {m.name: m for m in (
    Method("adamw", "AdamW + warmup-cosine", "AdamW", 1e-3, "lr", "warmup_cosine"),
    Method("schedulefree", "ScheduleFreeAdamW", "ScheduleFreeAdamW", 2.5e-3, "lr",
           "constant", warmup=True),
    Method("prodigy", "Prodigy (cosine)", "Prodigy", 1.0, "multiplier", "cosine"),
    Method("dadapt", "D-Adapt Adam (cosine)", "DAdaptAdam", 1.0, "multiplier", "cosine"),
    Method("sgd", "SGD momentum 0.9 + warmup-cosine", "SGD", 1e-2, "lr", "warmup_cosine",
           {"momentum": 0.9}),
)}


# ---------------------------------------------------------------------------------------
# the sweep
# ---------------------------------------------------------------------------------------
def sweep(center: float, points: int, decades: float) -> np.ndarray:
    """``points`` log-spaced values spanning ``decades`` decades, centered on ``center``.

    ``center * 10 ** linspace(-decades / 2, decades / 2, points)``; an odd ``points``
    includes ``center`` itself.

    Parameters
    ----------
    center : float
        The middle of the sweep (> 0).
    points : int
        How many values (>= 2).
    decades : float
        ``log10(last / first)`` (> 0).

    Returns
    -------
    numpy.ndarray
        The increasing values, float64.
    """
    return center * 10.0 ** np.linspace(-decades / 2, decades / 2, points)


def run_one(task: Task, method: Method, value: float, total_steps: int,
            seed: int) -> Dict[str, Any]:
    """Train ``task`` with ``method`` at swept value ``value`` for ``total_steps`` steps.

    The weights start from ``task.init`` and the minibatch order depends only on ``seed``:
    every run of a task sees the same batches.

    Parameters
    ----------
    task : Task
        The problem.
    method : Method
        The optimizer.
    value : float
        The lr (or multiplier) at its peak.
    total_steps : int
        Optimizer steps (>= 1).
    seed : int
        The minibatch order's seed.

    Returns
    -------
    dict
        ``train_loss`` (the whole training set, after the last step), ``heldout_loss``,
        ``heldout_accuracy`` (None for least squares), ``diverged`` (bool: a minibatch
        loss was not finite, or the final training loss is above the loss at the initial
        weights; the losses are NaN then), ``steps`` (taken) and ``seconds``.
    """
    started = time.perf_counter()
    params = [p.copy() for p in task.init]
    opt = method.make(params, value, total_steps)
    x, y = task.x_train, task.y_train
    start_loss = task.loss_and_grads(params, x, y)[0]
    rng = np.random.default_rng(seed)
    step, diverged = 0, False
    with np.errstate(all="ignore"):
        while step < total_steps and not diverged:
            order = rng.permutation(len(y))
            for start in range(0, len(y), task.batch_size):
                if step == total_steps:
                    break
                idx = order[start:start + task.batch_size]
                loss, grads = task.loss_and_grads(params, x[idx], y[idx])
                if not math.isfinite(loss):
                    diverged = True
                    break
                opt.step(grads)
                step += 1
        if hasattr(opt, "eval") and hasattr(opt, "train"):
            opt.eval()          # schedule-free: evaluate at the averaged point x
        train_loss = task.loss_and_grads(params, x, y)[0]
        heldout_loss, heldout_acc = task.heldout(params)
    diverged = diverged or not (math.isfinite(train_loss) and train_loss <= start_loss)
    nan = float("nan")
    return {"train_loss": nan if diverged else float(train_loss),
            "heldout_loss": nan if diverged else float(heldout_loss),
            "heldout_accuracy": (None if heldout_acc is None
                                 else nan if diverged else float(heldout_acc)),
            "diverged": diverged, "steps": step,
            "seconds": time.perf_counter() - started}


def within_range(values: Union[Sequence[float], np.ndarray],
                 losses: Union[Sequence[float], np.ndarray],
                 tolerance: float = TOLERANCE) -> Dict[str, Any]:
    """The swept values whose loss is within ``tolerance`` of the best loss.

    A value is within when its loss is finite and ``loss <= (1 + tolerance) * best``, where
    ``best`` is the smallest finite loss; NaN or infinite losses (diverged runs) are never
    within.

    Parameters
    ----------
    values : sequence of float
        The swept values, increasing.
    losses : sequence of float
        The final loss at each value (NaN: diverged); never negative.
    tolerance : float, default TOLERANCE
        The relative margin (0.05: within 5%).

    Returns
    -------
    dict
        ``best_loss`` and ``best_value`` (None when every run diverged); ``within`` (a list
        of bools, one per value); ``lo`` and ``hi`` (the smallest and largest value
        within); ``decades`` (``log10(hi / lo)``, 0 for a single value); ``contiguous``
        (no value outside between ``lo`` and ``hi``); ``lo_at_edge`` and ``hi_at_edge``
        (the range reaches an end of the sweep, so it may extend beyond it).

    Raises
    ------
    ValueError
        If the lengths differ, ``values`` is not increasing and positive, a loss is
        negative or ``tolerance`` is negative.

    Examples
    --------
    >>> r = within_range([1e-3, 1e-2, 1e-1, 1.0], [2.0, 1.04, 1.0, float("nan")])
    >>> r["best_value"], r["lo"], r["hi"], r["decades"]
    (0.1, 0.01, 0.1, 1.0)
    """
    v = np.asarray(values, dtype=np.float64)
    loss = np.asarray(losses, dtype=np.float64)
    fn = "fastlr._tools.compare.within_range"
    if v.ndim != 1 or loss.shape != v.shape:
        raise ValueError(f"{fn}: values and losses must be 1-d of the same length, got "
                         f"shapes {v.shape} and {loss.shape}")
    if v.size and (not np.all(v > 0) or not np.all(np.diff(v) > 0)):
        raise ValueError(f"{fn}: values must be positive and increasing, got {v.tolist()}")
    if np.any(loss < 0):
        raise ValueError(f"{fn}: losses must be >= 0 (NaN for diverged), got "
                         f"{loss.tolist()}")
    if not tolerance >= 0:
        raise ValueError(f"{fn}: tolerance must be >= 0, got {tolerance!r}")
    finite = np.isfinite(loss)
    if not finite.any():
        return {"best_loss": None, "best_value": None, "within": [False] * v.size,
                "lo": None, "hi": None, "decades": None, "contiguous": None,
                "lo_at_edge": None, "hi_at_edge": None}
    best_index = int(np.argmin(np.where(finite, loss, np.inf)))
    best = float(loss[best_index])
    within = finite & (np.where(finite, loss, np.inf) <= (1.0 + tolerance) * best)
    idx = np.flatnonzero(within)
    lo, hi = int(idx[0]), int(idx[-1])
    return {"best_loss": best, "best_value": float(v[best_index]),
            "within": within.tolist(), "lo": float(v[lo]), "hi": float(v[hi]),
            "decades": float(np.log10(v[hi] / v[lo])),
            "contiguous": bool(within[lo:hi + 1].all()),
            "lo_at_edge": lo == 0, "hi_at_edge": hi == v.size - 1}


class _Progress:
    """Progress on stderr: a bar redrawn in place on a terminal, else a line per method."""

    def __init__(self, out: Optional[TextIO], total: int):
        self.out, self.total, self.done = out, total, 0
        self.tty = out is not None and hasattr(out, "isatty") and out.isatty()

    def run(self, text: str) -> None:
        self.done += 1
        if self.tty and self.out is not None:
            width = 24
            filled = int(width * self.done / max(1, self.total))
            self.out.write(f"\r  compare [{'#' * filled}{'.' * (width - filled)}] "
                           f"{self.done}/{self.total} {text[:60]:60s}")
            self.out.flush()

    def line(self, text: str) -> None:
        if self.out is None:
            return
        if self.tty:
            self.out.write("\r" + " " * 110 + "\r")
        print(f"  {text}", file=self.out)
        self.out.flush()


#: (get, set) function names of OpenBLAS builds: NumPy's wheels (scipy-openblas), others.
_OPENBLAS_API = (("scipy_openblas_get_num_threads64_", "scipy_openblas_set_num_threads64_"),
                 ("scipy_openblas_get_num_threads", "scipy_openblas_set_num_threads"),
                 ("openblas_get_num_threads64_", "openblas_set_num_threads64_"),
                 ("openblas_get_num_threads", "openblas_set_num_threads"))


def _openblas() -> Optional[Any]:
    """(get, set) of the thread count of the OpenBLAS loaded in this process (NumPy's), or
    None where there is none or it cannot be found (not Linux, another BLAS)."""
    import ctypes

    try:
        with open("/proc/self/maps") as f:
            paths = sorted({line.split()[-1] for line in f
                            if "openblas" in line.lower() and "/" in line})
    except OSError:
        return None
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for get, put in _OPENBLAS_API:
            if hasattr(lib, get) and hasattr(lib, put):
                return getattr(lib, get), getattr(lib, put)
    return None


@contextlib.contextmanager
def _one_thread():
    """One fastlr thread and, where it can be set, one BLAS thread for NumPy's matmuls
    inside the block; yields the BLAS thread count (None: not limited)."""
    import fastlr

    threads = fastlr.get_num_threads()
    blas = _openblas()
    before = blas[0]() if blas is not None else None
    fastlr.set_num_threads(1)
    if blas is not None:
        blas[1](1)
    try:
        yield None if blas is None else 1
    finally:
        fastlr.set_num_threads(threads)
        if blas is not None:
            blas[1](before)


def _names(kind: str, given: Optional[Sequence[str]], known: Sequence[str]) -> List[str]:
    names = list(known) if given is None else list(given)
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise ValueError(f"fastlr._tools.compare.run_study: {kind} must be a non-empty list "
                         f"from {', '.join(known)}; got {names!r}")
    return list(dict.fromkeys(names))


def run_study(tasks: Optional[Sequence[str]] = None,
              methods: Optional[Sequence[str]] = None, points: int = DEFAULT_POINTS,
              decades: float = DEFAULT_DECADES, epochs: Optional[int] = None,
              steps: Optional[int] = None, seed: int = 0,
              progress: Optional[TextIO] = None) -> Dict[str, Any]:
    """Run the sensitivity study: every method on every task at every swept value.

    Parameters
    ----------
    tasks : list of str, optional
        Keys of :data:`TASKS` (default all).
    methods : list of str, optional
        Keys of :data:`METHODS` (default all); one whose class this fastlr lacks is listed
        as unavailable and not run.
    points : int, default DEFAULT_POINTS
        Swept values per method (>= 2).
    decades : float, default DEFAULT_DECADES
        Width of the sweep in decades (> 0), centered on each method's default.
    epochs : int, optional
        Passes over the training set per run (default: each task's own); not with
        ``steps``.
    steps : int, optional
        Optimizer steps per run instead of epochs.
    seed : int, default 0
        Seeds the data, the initial weights and the minibatch order.
    progress : file, optional
        Where to show progress (e.g. ``sys.stderr``); None: silent.

    Returns
    -------
    dict
        JSON-ready (NaN for diverged losses): ``settings``, ``tasks`` and ``methods``
        (descriptions; ``available`` per method), ``runs`` (one dict per run: task, method,
        value, factor = value / default, and :func:`run_one`'s numbers), ``summary`` (per
        task and available method: :func:`within_range` of the final training losses) and
        ``seconds``.

    Raises
    ------
    ValueError
        If an argument is out of range or names an unknown task or method.
    """
    import fastlr

    fn = "fastlr._tools.compare.run_study"
    task_names = _names("tasks", tasks, list(TASKS))
    method_names = _names("methods", methods, list(METHODS))
    if isinstance(points, bool) or not isinstance(points, int) or points < 2:
        raise ValueError(f"{fn}: points must be an int >= 2, got {points!r}")
    if not (isinstance(decades, (int, float)) and 0 < decades <= 12):
        raise ValueError(f"{fn}: decades must be in (0, 12], got {decades!r}")
    if epochs is not None and steps is not None:
        raise ValueError(f"{fn}: give epochs or steps, not both")
    for what, n in (("epochs", epochs), ("steps", steps)):
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ValueError(f"{fn}: {what} must be an int >= 1, got {n!r}")
    started = time.perf_counter()
    chosen = [METHODS[m] for m in method_names]
    usable = [m for m in chosen if m.available()]
    built = [TASKS[t](seed) for t in task_names]
    plan = {t.name: steps if steps is not None else t.steps_per_epoch() * (epochs or t.epochs)
            for t in built}
    bar = _Progress(progress, len(built) * len(usable) * points)
    for m in chosen:
        if m not in usable:
            bar.line(f"{m.label}: unavailable (this fastlr has no fastlr.{m.cls}); skipped")
    runs, summary = [], []
    with _one_thread() as blas_threads:
        for ti, task in enumerate(built):
            for m in usable:
                t0 = time.perf_counter()
                losses = []
                values = sweep(m.default, points, decades)
                for value in values:
                    r = run_one(task, m, float(value), plan[task.name], seed + 1000 + ti)
                    runs.append({"task": task.name, "method": m.name, "value": float(value),
                                 "factor": float(value / m.default), **r})
                    losses.append(r["train_loss"])
                    bar.run(f"{task.name} {m.name} {m.kind} {_value(value)}: "
                            + ("diverged" if r["diverged"] else f"loss {r['train_loss']:.4g}"))
                s = within_range(values, losses)
                summary.append({"task": task.name, "method": m.name, **s})
                best = "every run diverged" if s["best_loss"] is None else (
                    f"best loss {s['best_loss']:.4g} at {m.kind} {_value(s['best_value'])}")
                bar.line(f"{task.name:7s} {m.label:33s} {best} "
                         f"({time.perf_counter() - t0:.1f} s)")
    return {
        "settings": {"points": points, "decades": float(decades), "seed": seed,
                     "epochs": epochs, "steps": steps, "tolerance": TOLERANCE,
                     "diverged": DIVERGED,
                     "rule": f"within: loss finite and loss <= {1 + TOLERANCE:g} * best "
                             f"(best: the method's smallest final training loss on the task)",
                     "fastlr_threads": 1, "blas_threads": blas_threads,
                     "fastlr": fastlr.__version__},
        "tasks": [{"name": t.name, "title": t.title, "description": t.description,
                   "steps": plan[t.name], "batch_size": t.batch_size,
                   "train_samples": int(len(t.y_train)), "heldout_samples": int(len(t.y_test)),
                   "heldout": t.heldout_name} for t in built],
        "methods": [{"name": m.name, "label": m.label, "cls": m.cls, "kind": m.kind,
                     "default": m.default, "schedule": m.schedule, "setup": m.describe(),
                     "available": m in usable,
                     "values": sweep(m.default, points, decades).tolist()} for m in chosen],
        "runs": runs, "summary": summary, "seconds": time.perf_counter() - started}


# ---------------------------------------------------------------------------------------
# output: table, JSON, picture
# ---------------------------------------------------------------------------------------
def _fmt(x: Optional[float], spec: str = ".3g") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return format(x, spec)


def format_table(results: Dict[str, Any]) -> str:
    """The study as text: per task, the grid of final losses and the sensitivity summary.

    Parameters
    ----------
    results : dict
        What :func:`run_study` returned (or its JSON read back).

    Returns
    -------
    str
        Lines without a trailing newline: for each task a grid (one row per method, one
        column per factor of the sweep relative to the method's default; ``div`` marks a
        diverged run, ``*`` the values within 5% of the best) and, per method, the best
        final training loss, where it was reached, the range within 5% of it and that
        range's width in decades, and the held-out number at the best value; then the
        closing sensitivity table: per method (rows) and task (columns), that range and its
        width in decades.
    """
    st = results["settings"]
    methods = {m["name"]: m for m in results["methods"]}
    lines = [f"fastlr compare: learning-rate sensitivity, {st['points']} values over "
             f"{st['decades']:g} decades per method, centered on its default (lr-free "
             f"methods: multiplier 1.0); seed {st['seed']}, 1 fastlr thread, "
             f"{'1 BLAS thread' if st.get('blas_threads') else 'BLAS threads not limited'}",
             f"rule: a value is within range when its final training loss is finite and "
             f"<= {1 + st['tolerance']:g} * the method's best on the task; diverged (div): "
             f"{st['diverged']}; outside every range"]
    for m in results["methods"]:
        state = "" if m["available"] else "  UNAVAILABLE: this fastlr has no " \
                                          f"fastlr.{m['cls']}"
        lines.append(f"  {m['label']}: {m['setup']}{state}")
    summary = {(s["task"], s["method"]): s for s in results["summary"]}
    for task in results["tasks"]:
        lines += ["", f"{task['title']}: {task['description']}",
                  f"  {task['train_samples']} training / {task['heldout_samples']} held-out "
                  f"samples, batch {task['batch_size']}, {task['steps']} steps per run"]
        runs = [r for r in results["runs"] if r["task"] == task["name"]]
        factors = sorted({round(r["factor"], 12) for r in runs})
        if factors:
            lines.append("  final training loss at value = default x factor:")
            head = f"  {'method':34s}" + "".join(f"{'x' + format(f, '.3g'):>10s}"
                                                 for f in factors)
            lines.append(head)
        for name, m in methods.items():
            if not m["available"]:
                lines.append(f"  {m['label']:34s}unavailable (no fastlr.{m['cls']})")
                continue
            s = summary.get((task["name"], name))
            mine = {round(r["factor"], 12): r for r in runs if r["method"] == name}
            cells = []
            for f, within in zip(factors, s["within"] if s else []):
                r = mine.get(f)
                text = "div" if r is None or r["diverged"] else f"{r['train_loss']:.3g}"
                cells.append(f"{text + ('*' if within else ' '):>10s}")
            lines.append(f"  {m['label']:34s}" + "".join(cells))
        lines.append(f"  {'method':34s}{'best loss':>10s}{'at':>10s}   "
                     f"{'within 5% of best':24s}{'decades':>8s}  held-out at best")
        for name, m in methods.items():
            s = summary.get((task["name"], name))
            if not m["available"] or s is None:
                continue
            if s["best_loss"] is None:
                lines.append(f"  {m['label']:34s}every run diverged")
                continue
            best_run = next(r for r in runs if r["method"] == name
                            and r["value"] == s["best_value"])
            held = (f"{task['heldout']} {best_run['heldout_loss']:.3g}"
                    if best_run["heldout_accuracy"] is None
                    else f"accuracy {best_run['heldout_accuracy']:.3f}")
            lines.append(f"  {m['label']:34s}{s['best_loss']:>10.4g}{_value(s['best_value']):>10s}"
                         f"   {_range_text(s):24s}{s['decades']:>8.2g}  {held}")
    lines += ["", "sensitivity: the values (lr, or multiplier for the lr-free methods) whose "
                  "final training loss is within 5% of the method's best on the task, and "
                  "the width of that range in decades (wider: more forgiving)",
              f"  {'method':34s}" + "".join(f"{t['name']:>26s}" for t in results["tasks"])]
    for name, m in methods.items():
        cells = []
        for task in results["tasks"]:
            s = summary.get((task["name"], name))
            if not m["available"]:
                text = "unavailable"
            elif s is None:
                text = "-"
            elif s["best_loss"] is None:
                text = "all diverged"
            else:
                text = f"{_range_text(s)} ({s['decades']:.2g})"
            cells.append(f"{text:>26s}")
        lines.append(f"  {m['label']:34s}" + "".join(cells))
    lines += ["<= / +: the range reaches the low / high end of the sweep (it may extend "
              "beyond); (gaps): some values inside the range are not within 5%",
              f"{len(results['runs'])} runs in {results['seconds']:.1f} s"]
    return "\n".join(lines)


def _value(x: float) -> str:
    """A swept value in two significant digits, without an exponent from 10 up (100, not
    1e+02)."""
    text = f"{x:.2g}"
    return f"{x:.0f}" if "e+" in text else text


def _range_text(s: Dict[str, Any]) -> str:
    """``lo .. hi`` of a :func:`within_range` result, with its edge and gap marks."""
    text = (f"{'<=' if s['lo_at_edge'] else ''}{_value(s['lo'])} .. "
            f"{_value(s['hi'])}{'+' if s['hi_at_edge'] else ''}")
    return text if s["contiguous"] else text + " (gaps)"


def _plain(value: Any) -> Any:
    """``value`` with NaN and infinities as None (strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def write_json(results: Dict[str, Any], path: str) -> None:
    """Write ``results`` as strict JSON (NaN -> null) to ``path``."""
    with open(path, "w") as f:
        json.dump(_plain(results), f, indent=1)
        f.write("\n")


def plot(results: Dict[str, Any], path: Optional[str] = None) -> Any:
    """Draw the study: final training loss (top) and the held-out number (bottom) against
    the factor of each method's default, one column per task.

    Diverged runs are drawn as crosses at the top of the loss axes; the within-5% points
    are filled markers.

    Parameters
    ----------
    results : dict
        What :func:`run_study` returned (or its JSON read back).
    path : str, optional
        Write the figure here (PNG, SVG, PDF by the extension) and close it.

    Returns
    -------
    matplotlib.figure.Figure
        The figure (closed when ``path`` was given).

    Raises
    ------
    ImportError
        If matplotlib is not installed (the message says how to install it).
    """
    from fastlr.plot import require_matplotlib

    plt = require_matplotlib()
    tasks = results["tasks"]
    methods = [m for m in results["methods"] if m["available"]]
    summary = {(s["task"], s["method"]): s for s in results["summary"]}
    fig, axes = plt.subplots(2, max(1, len(tasks)), figsize=(4.2 * max(1, len(tasks)), 6.4),
                             squeeze=False, layout="constrained")
    markers = "osD^vP"
    for col, task in enumerate(tasks):
        top, bottom = axes[0][col], axes[1][col]
        runs = [r for r in results["runs"] if r["task"] == task["name"]]
        finite = [r["train_loss"] for r in runs
                  if r["train_loss"] is not None and math.isfinite(r["train_loss"])]
        ceiling = max(finite) * 2 if finite else 1.0
        for i, m in enumerate(methods):
            mine = [r for r in runs if r["method"] == m["name"]]
            if not mine:
                continue
            color = f"C{i}"
            f = np.array([r["factor"] for r in mine])
            ok = np.array([not r["diverged"] for r in mine])
            loss = np.array([r["train_loss"] if r["train_loss"] is not None else np.nan
                             for r in mine], dtype=float)
            within = np.array(summary[(task["name"], m["name"])]["within"], dtype=bool)
            label = f"{m['label']} ({m['kind']} {m['default']:g} = x1)"
            top.plot(f[ok], loss[ok], "-", color=color, lw=1.2, label=label)
            top.plot(f[within], loss[within], markers[i % 6], color=color, ms=5)
            top.plot(f[ok & ~within], loss[ok & ~within], markers[i % 6], color=color, ms=5,
                     mfc="none")
            top.plot(f[~ok], np.full((~ok).sum(), ceiling), "x", color=color, ms=7)
            key = "heldout_accuracy" if task["heldout"] == "accuracy" else "heldout_loss"
            held = np.array([np.nan if r[key] is None else r[key] for r in mine], dtype=float)
            bottom.plot(f[ok], held[ok], markers[i % 6] + "-", color=color, lw=1.2, ms=4,
                        mfc="none")
        top.set(xscale="log", yscale="log", title=task["title"])
        top.set_xlabel("lr (multiplier) / method's default")
        if col == 0:
            top.set_ylabel("final training loss")
        bottom.set(xscale="log", xlabel="lr (multiplier) / method's default",
                   ylabel=f"held-out {task['heldout']}")
        if task["heldout"] != "accuracy":
            bottom.set_yscale("log")
        for ax in (top, bottom):
            ax.axvline(1.0, color="0.6", lw=0.8, ls=":")
            ax.grid(True, which="major", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(3, max(1, len(labels))),
               fontsize=8, frameon=False)
    fig.suptitle("fastlr compare: final loss against the lr (filled: within 5% of the "
                 "method's best; x: diverged)", fontsize=10)
    if path is not None:
        fig.savefig(path, dpi=72)
        plt.close(fig)
    return fig


# ---------------------------------------------------------------------------------------
# fastlr compare
# ---------------------------------------------------------------------------------------
DESCRIPTION = """\
The learning-rate sensitivity study: which optimizer forgives a bad choice of lr?

Each method is trained on each task from the same weights and the same minibatches, once
per value of a log-spaced sweep of its lr -- for the lr-free methods (Prodigy, D-Adapt Adam)
of the multiplier of their estimated step size -- centered on its customary default. The
table gives, per task and method, the final training loss at every value, the best, and the
range of values whose final loss is within 5% of the best (finite and <= 1.05 * best;
diverged runs are outside) with its width in decades: the wider, the more forgiving.

tasks:
  digits   the demo's MLP on scikit-learn's handwritten digits (synthetic without
           scikit-learn); held-out accuracy
  lstsq    least squares with an ill-conditioned design (condition number 1e3); held-out
           MSE
  logreg   softmax regression on scikit-learn's wine data (synthetic without
           scikit-learn); held-out accuracy

methods:
  adamw         AdamW, warmup-cosine schedule (10% warmup), lr around 1e-3
  schedulefree  ScheduleFreeAdamW, constant lr with its warmup (10%), around 2.5e-3
  prodigy       Prodigy, multiplier around 1 with a cosine
  dadapt        D-Adapt Adam, multiplier around 1 with a cosine (when fastlr has
                fastlr.DAdaptAdam; otherwise reported as unavailable)
  sgd           SGD, momentum 0.9, warmup-cosine schedule, lr around 1e-2

About half a minute by default on a 2-core machine (one fastlr thread, one BLAS thread);
deterministic for a seed.
"""


def _parser() -> argparse.ArgumentParser:
    from fastlr._tools.bench import _csv

    p = argparse.ArgumentParser(prog="fastlr compare", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="example: fastlr compare --png compare.png "
                                       "--json compare.json")
    p.add_argument("--tasks", type=_csv(str.lower, list(TASKS), "task"),
                   help=f"comma-separated, from {','.join(TASKS)} (default all)")
    p.add_argument("--methods", type=_csv(str.lower, list(METHODS), "method"),
                   help=f"comma-separated, from {','.join(METHODS)} (default all)")
    p.add_argument("--points", type=int, default=DEFAULT_POINTS,
                   help=f"values per method, >= 2 (default {DEFAULT_POINTS})")
    p.add_argument("--decades", type=float, default=DEFAULT_DECADES,
                   help=f"width of the sweep in decades (default {DEFAULT_DECADES:g})")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=int,
                        help="passes over the training set per run (default: digits 20, "
                             "lstsq 30, logreg 60)")
    length.add_argument("--steps", type=int, help="optimizer steps per run (instead of "
                                                  "--epochs)")
    p.add_argument("--seed", type=int, default=0, help="default 0")
    p.add_argument("--png", metavar="PATH", help="draw the study here (needs matplotlib)")
    p.add_argument("--json", metavar="PATH", help="write every run and the summary as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return p


def _writable(parser: argparse.ArgumentParser, option: str, path: Optional[str]) -> None:
    if path is None:
        return
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        parser.error(f"{option}: cannot write {path}: no folder {folder}")
    if os.path.isdir(path):
        parser.error(f"{option}: cannot write {path}: it is a folder")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``fastlr compare ...``; returns the exit status (2 with a message on a bad
    argument)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.points < 2:
        parser.error(f"--points must be >= 2, got {args.points}")
    if not 0 < args.decades <= 12:
        parser.error(f"--decades must be in (0, 12], got {args.decades:g}")
    for option, n in (("--epochs", args.epochs), ("--steps", args.steps)):
        if n is not None and n < 1:
            parser.error(f"{option} must be >= 1, got {n}")
    if args.seed < 0:
        parser.error(f"--seed must be >= 0, got {args.seed}")
    warmup = [m for m in (args.methods or list(METHODS))
              if METHODS[m].schedule == "warmup_cosine"]
    if args.steps == 1 and warmup:
        parser.error(f"--steps must be >= 2 for {', '.join(warmup)} (a warmup-cosine "
                     f"schedule needs a step after its warmup step), got 1")
    _writable(parser, "--png", args.png)
    _writable(parser, "--json", args.json)
    if args.png is not None:        # before the study: a missing matplotlib fails at once
        try:
            from fastlr.plot import require_matplotlib

            require_matplotlib()
        except ImportError as error:
            parser.error(f"--png: {error}")
    try:
        results = run_study(tasks=args.tasks, methods=args.methods, points=args.points,
                            decades=args.decades, epochs=args.epochs, steps=args.steps,
                            seed=args.seed, progress=None if args.quiet else sys.stderr)
    except KeyboardInterrupt:
        print("\nfastlr compare: interrupted", file=sys.stderr)
        return 130
    print(format_table(results))
    for option, path, write in (("--json", args.json, write_json), ("--png", args.png, plot)):
        if path is None:
            continue
        try:
            write(results, path)
        except (OSError, ValueError) as error:
            raise SystemExit(f"fastlr compare: {option}: cannot write {path}: "
                             f"{getattr(error, 'strerror', None) or error}") from None
        if not args.quiet:
            print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""Pictures of schedules and training curves (matplotlib, an optional extra).

matplotlib is imported when a function here is called, never at ``import fastlr``; without
it these functions raise an ImportError that says how to install it.
"""

from __future__ import annotations

import inspect
import numbers
import os
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence, Union, cast

import numpy as np
from numpy.typing import ArrayLike, NDArray

if TYPE_CHECKING:
    from types import ModuleType

    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from fastlr.schedules import Schedule

__all__ = ["schedule", "curves", "label", "default_steps", "require_matplotlib"]

#: Line styles of the curves drawn on one axis, in order: the first is wide and pale, the
#: others thin and dashed or dotted, so that curves that coincide (fastlr and its reference
#: twin agree to rounding) all stay visible.
STYLES: tuple[dict[str, Any], ...] = (
    {"ls": "-", "lw": 3.0, "alpha": 0.45}, {"ls": "--", "lw": 1.3, "alpha": 1.0},
    {"ls": ":", "lw": 1.6, "alpha": 1.0}, {"ls": "-.", "lw": 1.3, "alpha": 1.0})
#: The longest legend entry (longer ones end in "...").
MAX_LABEL: int = 60
#: Cycles of a cyclic schedule drawn by default (cyclic, cosine_restarts).
CYCLES: int = 3


def require_matplotlib() -> ModuleType:
    """Import matplotlib's pyplot, or raise an ImportError saying how to install it.

    With no display (no ``DISPLAY``) and no ``MPLBACKEND`` it selects the non-interactive
    Agg backend first.

    Returns
    -------
    module
        ``matplotlib.pyplot``.

    Raises
    ------
    ImportError
        If matplotlib is not installed (the message says how to install it).

    Examples
    --------
    >>> from fastlr.plot import require_matplotlib
    >>> plt = require_matplotlib()
    >>> plt.__name__
    'matplotlib.pyplot'
    """
    try:
        import matplotlib
    except ImportError:
        matplotlib = None  # type: ignore[assignment]
    if matplotlib is None:
        raise ImportError("fastlr's plots need matplotlib: pip install 'fastlr[plot]' "
                          "(or pip install matplotlib)")
    import os

    if not os.environ.get("DISPLAY") and not os.environ.get("MPLBACKEND"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _axes(plt, ax):
    if ax is None:      # constrained layout: the axis labels stay inside the figure
        return plt.subplots(figsize=(7, 3.5), layout="constrained")
    return ax.figure, ax


def _short(value):
    """A compact text of a schedule's argument: floats to 3 significant digits."""
    from fastlr.schedules import Schedule

    if isinstance(value, Schedule):
        return label(value, limit=None)
    if isinstance(value, (bool, np.bool_)):
        return repr(bool(value))
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        return f"{float(value):.3g}"
    if isinstance(value, (list, tuple)):
        inner = ", ".join(_short(v) for v in value)
        return f"[{inner}]" if isinstance(value, list) else f"({inner})"
    if callable(value):
        return getattr(value, "__name__", type(value).__name__)
    return repr(value)


def label(schedule: Union[Schedule, float], limit: Optional[int] = MAX_LABEL) -> str:
    """A short legend text of a schedule.

    Its constructor call with floats to 3 significant digits (``cosine(0.00316, 300)``,
    not the repr's 17 digits), cut at ``limit`` characters.

    Parameters
    ----------
    schedule : fastlr.schedules.Schedule or float
        The schedule (a number is a constant schedule).
    limit : int or None, default MAX_LABEL
        The longest text, in characters (longer ones end in "..."); None: no limit.

    Returns
    -------
    str
        The legend text.

    Raises
    ------
    TypeError
        If ``schedule`` is neither a schedule nor a number.

    Examples
    --------
    >>> from fastlr import schedules
    >>> from fastlr.plot import label
    >>> label(schedules.cosine(0.1 / 31.6, 300))
    'cosine(0.00316, 300)'
    >>> label(schedules.cosine(0.1, 300, end=1e-5), limit=12)
    'cosine(0....'
    """
    from fastlr.schedules import as_schedule

    s = as_schedule(schedule)
    if s._ctor == "_scaled":
        text = f"{_short(s._args[0])} * {_short(s._args[1])}"
    else:
        parts = [_short(a) for a in s._args]
        parts += [f"{k}={_short(v)}" for k, v in s._kwargs.items()]
        text = f"{s._ctor}({', '.join(parts)})"
    if limit is not None and len(text) > limit:
        text = text[:limit - 3] + "..."
    return text


def _ints(value):
    """The integers (not bools) in an argument, lists flattened."""
    if isinstance(value, (list, tuple)):
        return [i for v in value for i in _ints(v)]
    if isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_)):
        return [int(value)]
    return []


def default_steps(schedule: Union[Schedule, float]) -> int:
    """How many steps show a schedule.

    :data:`CYCLES` cycles of a cyclic one (``cyclic``, ``cosine_restarts``), four periods
    of ``step_decay``, else a fifth beyond its last milestone or length (100 when it has
    none).

    Parameters
    ----------
    schedule : fastlr.schedules.Schedule or float
        The schedule (a number is a constant schedule).

    Returns
    -------
    int
        The number of steps to draw.

    Raises
    ------
    TypeError
        If ``schedule`` is neither a schedule nor a number.

    Examples
    --------
    >>> from fastlr import schedules
    >>> from fastlr.plot import default_steps
    >>> default_steps(schedules.cosine(0.1, 300))
    361
    >>> default_steps(schedules.step_decay(0.1, 30))
    121
    >>> default_steps(0.1)
    100
    """
    from fastlr import schedules
    from fastlr.schedules import Schedule, as_schedule

    s = as_schedule(schedule)
    if s._ctor == "_scaled":
        return default_steps(s._args[0])
    ctor: Any = getattr(schedules, s._ctor, None)
    try:
        bound = inspect.signature(ctor).bind(*s._args, **s._kwargs)
    except (TypeError, ValueError):
        return 100
    bound.apply_defaults()
    a = bound.arguments
    if s._ctor == "cyclic":
        up = a["step_size_up"]
        down = up if a["step_size_down"] is None else a["step_size_down"]
        return CYCLES * (up + down) + 1
    if s._ctor == "cosine_restarts":
        period, mult = a["period"], a["period_mult"]
        return sum(period * mult ** i for i in range(CYCLES)) + 1
    if s._ctor == "step_decay":
        return 4 * a["step_size"] + 1
    lengths, children = [], []
    for value in a.values():
        lengths += _ints(value)
        children += [default_steps(c) for c in (value if isinstance(value, (list, tuple))
                                                 else [value]) if isinstance(c, Schedule)]
    own = int(1.2 * max(lengths)) + 1 if lengths and max(lengths) > 0 else 100
    return max([own] + children)


def _decorate(ax, xlabel, ylabel, log, title):
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def _finish(fig, path):
    if path is not None:
        fig.savefig(path, dpi=100, bbox_inches="tight")
        import matplotlib.pyplot as plt

        plt.close(fig)
    return fig


def _plot_styled(ax, items):
    """Plot ``[(label, x, y)]`` with STYLES in turn (one curve alone: a plain line; legend
    texts cut at MAX_LABEL)."""
    for i, (text, x, y) in enumerate(items):
        text = str(text)
        if len(text) > MAX_LABEL:
            text = text[:MAX_LABEL - 3] + "..."
        style = STYLES[i % len(STYLES)] if len(items) > 1 else {"ls": "-", "lw": 1.8}
        ax.plot(x, y, label=text, zorder=2 + i, **style)


def schedule(schedules: Union[Schedule, float, Sequence[Union[Schedule, float]],
                              Mapping[str, Union[Schedule, float]]],
             steps: Union[int, ArrayLike, None] = None, *, log: bool = False,
             ax: Optional[Axes] = None, path: Union[str, os.PathLike[str], None] = None,
             title: Optional[str] = None) -> Figure:
    """Draw learning rate against step for one schedule or several on one axis.

    Parameters
    ----------
    schedules : Schedule, list of Schedule or dict of str to Schedule
        The schedules to draw; without labels (a dict's keys), :func:`label` names them.
    steps : int, array_like of int or None, default None
        An int (steps 0..steps-1), an array of steps, or None: the longest
        :func:`default_steps` (several cycles of a cyclic schedule).
    log : bool, default False
        Whether the lr axis is log-scaled.
    ax : matplotlib.axes.Axes or None, default None
        The Axes to draw on (None: a new figure).
    path : str, os.PathLike or None, default None
        Write the figure there (format from the extension) and close it.
    title : str or None, default None
        The axis title.

    Returns
    -------
    matplotlib.figure.Figure
        The figure drawn on.

    Raises
    ------
    ImportError
        If matplotlib is not installed.
    TypeError
        If an entry of ``schedules`` is neither a schedule nor a number.

    Examples
    --------
    >>> from fastlr import schedules
    >>> import fastlr.plot
    >>> fig = fastlr.plot.schedule({"cosine": schedules.cosine(0.1, 100),
    ...                             "one cycle": schedules.one_cycle(0.1, 100)})
    >>> [line.get_label() for line in fig.axes[0].get_lines()]
    ['cosine', 'one cycle']
    >>> fastlr.plot.schedule(schedules.cosine(0.1, 100), path="lr.png")  # doctest: +SKIP
    """
    from fastlr.schedules import as_schedule

    plt = require_matplotlib()
    if isinstance(schedules, dict):
        items = list(schedules.items())
    elif isinstance(schedules, (list, tuple)):
        items = [(label(s), s) for s in schedules]
    else:
        items = [(label(cast(Any, schedules)), schedules)]
    if steps is None:
        steps = max(default_steps(s) for _, s in items)
    ts = np.arange(cast(int, steps)) if np.ndim(steps) == 0 else np.asarray(steps)
    fig, ax = _axes(plt, ax)
    _plot_styled(ax, [(text, ts, as_schedule(s).values(ts)) for text, s in items])
    _decorate(ax, "step (updates completed)", "learning rate", log, title)
    return _finish(fig, path)


def curves(series: Mapping[str, Union[Sequence[float], NDArray[np.floating]]], *,
           xlabel: str = "step", ylabel: str = "loss",
           log: bool = False, ax: Optional[Axes] = None,
           path: Union[str, os.PathLike[str], None] = None,
           title: Optional[str] = None) -> Figure:
    """Draw one or several curves (e.g. training losses) on one axis.

    Each curve in its own line style (:data:`STYLES`), so that coinciding curves stay
    visible; the x values are 1, 2, ... (one per value).

    Parameters
    ----------
    series : dict of str to array_like of float
        ``{label: values}``, one curve each.
    xlabel : str, default "step"
        The x-axis label.
    ylabel : str, default "loss"
        The y-axis label.
    log : bool, default False
        Whether the y axis is log-scaled.
    ax : matplotlib.axes.Axes or None, default None
        The Axes to draw on (None: a new figure).
    path : str, os.PathLike or None, default None
        Write the figure there (format from the extension) and close it.
    title : str or None, default None
        The axis title.

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
    >>> import fastlr.plot
    >>> fig = fastlr.plot.curves({"fastlr": [1.0, 0.5, 0.25], "torch": [1.0, 0.5, 0.25]})
    >>> len(fig.axes[0].get_lines())
    2
    """
    plt = require_matplotlib()
    fig, ax = _axes(plt, ax)
    _plot_styled(ax, [(text, np.arange(1, len(values) + 1), values)
                      for text, values in series.items()])
    _decorate(ax, xlabel, ylabel, log, title)
    return _finish(fig, path)

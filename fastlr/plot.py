"""Pictures of schedules and training curves (matplotlib, an optional extra).

matplotlib is imported when a function here is called, never at ``import fastlr``; without
it these functions raise an ImportError that says how to install it.
"""

import numpy as np

__all__ = ["schedule", "curves", "require_matplotlib"]


def require_matplotlib():
    """Import matplotlib's pyplot with a non-interactive backend when there is no display,
    or raise an ImportError saying how to install it."""
    try:
        import matplotlib
    except ImportError:
        matplotlib = None
    if matplotlib is None:
        raise ImportError("fastlr's plots need matplotlib: pip install 'fastlr[plot]' "
                          "(or pip install matplotlib)")
    import os

    if not os.environ.get("DISPLAY") and not os.environ.get("MPLBACKEND"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _axes(plt, ax):
    if ax is None:
        return plt.subplots(figsize=(7, 3.5))
    return ax.figure, ax


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


def schedule(schedules, steps, *, log=False, ax=None, path=None, title=None):
    """Draw learning rate against step for one schedule or several on one axis.

    ``schedules``: a Schedule, a list of them, or a dict ``{label: schedule}``; ``steps``:
    an int (steps 0..steps-1) or an array of steps. ``log`` uses a log-scaled lr axis.
    With ``path``, the figure is written there (PNG by the extension) and closed. Returns
    the matplotlib Figure.
    """
    from fastlr.schedules import as_schedule

    plt = require_matplotlib()
    if isinstance(schedules, dict):
        items = list(schedules.items())
    elif isinstance(schedules, (list, tuple)):
        items = [(repr(as_schedule(s)), s) for s in schedules]
    else:
        items = [(repr(as_schedule(schedules)), schedules)]
    ts = np.arange(steps) if np.ndim(steps) == 0 else np.asarray(steps)
    fig, ax = _axes(plt, ax)
    for label, s in items:
        ax.plot(ts, as_schedule(s).values(ts), label=label if len(label) < 80 else
                label[:77] + "...")
    _decorate(ax, "step (updates completed)", "learning rate", log, title)
    return _finish(fig, path)


def curves(series, *, xlabel="step", ylabel="loss", log=False, ax=None, path=None,
           title=None):
    """Draw one or several curves ``{label: values}`` (e.g. training losses) on one axis."""
    plt = require_matplotlib()
    fig, ax = _axes(plt, ax)
    for label, values in series.items():
        ax.plot(np.arange(1, len(values) + 1), values, label=label)
    _decorate(ax, xlabel, ylabel, log, title)
    return _finish(fig, path)

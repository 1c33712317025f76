"""Pictures: curves that coincide stay visible, short legends, labels inside the saved
figure, cyclic schedules over several cycles (fastlr.plot, LRFinderResult.plot)."""

import numpy as np
import pytest

import fastlr
from fastlr import schedules
from fastlr.lr_finder import find_lr

pytest.importorskip("matplotlib")

from fastlr import plot  # noqa: E402


def png_size(path):
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def _renderer(fig):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()                     # as saving does: the layout is applied when drawn
    return canvas.get_renderer()


def _inside(fig, artist):
    """Whether ``artist`` is drawn inside the figure's area."""
    box = artist.get_window_extent(_renderer(fig))
    return (box.x0 >= 0 and box.y0 >= 0 and box.x1 <= fig.bbox.width
            and box.y1 <= fig.bbox.height)


def test_coinciding_curves_are_both_visible(tmp_path):
    losses = np.linspace(2.0, 0.1, 300)
    fig = plot.curves({"fastlr": losses, "reference (NumPy twin)": losses.copy()}, log=True,
                      path=str(tmp_path / "loss.png"))
    first, second = fig.axes[0].get_lines()
    # the same data, drawn differently: a wide pale line under a thin dashed one
    assert first.get_linestyle() != second.get_linestyle()
    assert first.get_linewidth() > second.get_linewidth()
    assert first.get_alpha() < 1.0 and second.get_zorder() > first.get_zorder()
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend == ["fastlr", "reference (NumPy twin)"]


def test_schedule_legends_are_short():
    peak = 0.0031622776601683794                 # what a range test suggests
    s = schedules.warmup_cosine(peak, warmup_steps=30, total_steps=300)
    fig = plot.schedule([s, schedules.one_cycle(peak * 3, 300) * 0.5])
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend == ["warmup_cosine(0.00316, warmup_steps=30, total_steps=300)",
                      "one_cycle(0.00949, 300) * 0.5"]
    assert plot.label(s) == legend[0] and repr(s) not in legend
    long = schedules.piecewise_constant(list(range(1, 40)), [0.1] * 40)
    assert len(plot.label(long)) == plot.MAX_LABEL and plot.label(long).endswith("...")
    assert plot.label(lambda t: 0.1) == "from_callable(<lambda>)"


@pytest.mark.parametrize("make,cycles_end", [
    (lambda: schedules.cyclic(0.1, 1.0, step_size_up=10), 60),
    (lambda: schedules.cyclic(0.1, 1.0, step_size_up=10, step_size_down=30), 120),
    (lambda: schedules.cosine_restarts(1.0, 10, period_mult=2), 70),
    (lambda: schedules.cosine_restarts(1.0, 10), 30),
    (lambda: schedules.step_decay(1.0, 25), 100),
])
def test_cyclic_schedules_are_drawn_over_several_cycles(make, cycles_end):
    s = make()
    assert plot.default_steps(s) == cycles_end + 1
    assert plot.default_steps(s * 2.0) == cycles_end + 1
    fig = plot.schedule(s)                       # steps by default: several cycles
    x = fig.axes[0].get_lines()[0].get_xdata()
    assert x[0] == 0 and x[-1] == cycles_end


def test_default_steps_of_other_schedules():
    assert plot.default_steps(schedules.cosine(1.0, 100)) == 121
    assert plot.default_steps(schedules.warmup(schedules.cosine(1.0, 200), 10)) == 241
    assert plot.default_steps(schedules.multistep(1.0, [10, 50])) == 61
    assert plot.default_steps(schedules.constant(1.0)) == 100
    assert plot.default_steps(schedules.exponential(1.0, 0.9)) == 100


def test_axis_labels_stay_inside_figures(tmp_path):
    fig = plot.schedule(schedules.cosine(0.1, 100), 101)
    ax = fig.axes[0]
    assert _inside(fig, ax.xaxis.label) and _inside(fig, ax.yaxis.label)


def _finder_result():
    a = np.array([0.5, 1.0, 2.0])
    w = np.ones(3)
    opt = fastlr.SGD([w], lr=0.1)
    return find_lr(opt, lambda step: (0.5 * float(a @ w ** 2), [a * w]), start_lr=1e-4,
                   end_lr=100.0, num_steps=60)


def test_lr_finder_plot_keeps_its_x_label(tmp_path):
    result = _finder_result()
    # a figure the caller saves itself (fig.savefig without bbox_inches): label inside
    fig = result.plot()
    ax = fig.axes[0]
    assert _inside(fig, ax.xaxis.label), ax.xaxis.label.get_window_extent(_renderer(fig))
    import matplotlib.pyplot as plt

    plt.close(fig)
    # saved by plot(path=...): the PNG's bounding box covers the x label
    path = tmp_path / "lr.png"
    fig = result.plot(path=str(path))
    width, height = png_size(path)
    renderer = _renderer(fig)
    label = fig.axes[0].xaxis.label.get_window_extent(renderer)
    tight = fig.get_tightbbox(renderer)           # inches
    assert tight.y0 * fig.dpi <= label.y0 and tight.x1 * fig.dpi >= label.x1
    assert height >= tight.height * 100 - 1 and width >= tight.width * 100 - 1


def test_a_curve_alone_is_a_plain_line():
    fig = plot.schedule(schedules.cosine(0.1, 100), 101)
    line, = fig.axes[0].get_lines()
    assert line.get_linestyle() == "-" and line.get_alpha() in (None, 1.0)

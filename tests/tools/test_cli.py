"""The command line: `fastlr demo` (range test, then fastlr vs its reference twin) and
`fastlr schedule`."""

import io
import subprocess
import sys

import numpy as np
import pytest

from fastlr._tools import cli

PNG = b"\x89PNG\r\n\x1a\n"


def png_size(path):
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == PNG, f"{path} is not a PNG"
    width = int.from_bytes(data[16:20], "big")
    height = int.from_bytes(data[20:24], "big")
    return len(data), width, height


def test_demo_end_to_end_with_pictures(tmp_path):
    pytest.importorskip("matplotlib")
    out = io.StringIO()
    result = cli.demo(epochs=3, hidden=16, out_dir=str(tmp_path), out=out)
    text = out.getvalue()
    assert "learning-rate range test" in text and "held-out accuracy" in text
    fast, ref = result["runs"]["fastlr"], result["runs"]["reference"]
    # the loss it reports says what it is: the whole training set's, after training
    assert (f"training-set loss after training (all 1438 samples): fastlr "
            f"{fast['train_loss']:.5f}, reference {ref['train_loss']:.5f}") in text
    assert "final training loss" not in text
    epoch_mean = np.mean(fast["losses"][-23:])            # 1438 samples: 23 batches of 64
    assert f"fastlr    epoch 3/3: mean minibatch loss {epoch_mean:.4f}" in text
    x, y = cli.load_data(0)[:2]
    assert fast["train_loss"] == pytest.approx(
        cli.loss_and_grads(fast["params"], x.astype(np.float32), y)[0], rel=1e-6)
    # the same model from the same weights and batches: the same losses to rounding
    np.testing.assert_allclose(fast["losses"], ref["losses"], rtol=1e-4)
    assert fast["losses"][-5:].mean() < 0.7 * fast["losses"][:5].mean()
    assert abs(fast["test_acc"] - ref["test_acc"]) <= 0.01
    assert 1e-5 <= result["lr"] <= 1.0
    assert len(result["pictures"]) == 3
    for path in result["pictures"]:
        size, width, height = png_size(path)
        assert size > 5000 and width > 300 and height > 150


def test_demo_without_matplotlib_still_runs(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    out = io.StringIO()
    result = cli.demo(epochs=1, hidden=8, out_dir=str(tmp_path / "pics"), out=out)
    assert "no pictures" in out.getvalue() and "pip install" in out.getvalue()
    assert result["pictures"] == [] and not (tmp_path / "pics").exists()


def test_demo_without_scikit_learn_says_synthetic(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    out = io.StringIO()
    cli.demo(epochs=1, hidden=8, plots=False, out=out)
    assert "synthetic" in out.getvalue()


def test_schedule_command_prints_values(capsys):
    assert cli.main(["schedule", "cosine", "--init", "0.1", "--total_steps", "10",
                     "--steps", "12", "--print"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 12
    t, v = lines[5].split("\t")
    assert t == "5" and abs(float(v) - 0.05) < 1e-12
    assert lines[-1].split("\t")[1] == "0"


def test_schedule_command_draws_png(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "s.png"
    assert cli.main(["schedule", "one_cycle", "--peak", "0.1", "--total_steps", "100",
                     "--out", str(path)]) == 0
    size, width, height = png_size(path)
    assert size > 5000 and width > 300


@pytest.mark.parametrize("optimizer", cli.OPTIMIZERS)
def test_demo_runs_every_optimizer(optimizer):
    out = io.StringIO()
    result = cli.demo(optimizer=optimizer, epochs=1, hidden=8, plots=False, out=out)
    fast, ref = result["runs"]["fastlr"], result["runs"]["reference"]
    np.testing.assert_allclose(fast["losses"], ref["losses"], rtol=1e-4)
    assert fast["train_loss"] < fast["losses"][0]
    assert f"; {optimizer}, 1 epoch of batch 64" in out.getvalue()


def test_demo_offers_every_table_optimizer(capsys):
    from fastlr import _specs

    assert set(cli.OPTIMIZERS) == {o.cls.lower() for o in _specs.OPTIMIZERS.values()}
    assert len(cli.OPTIMIZERS) == len(_specs.OPTIMIZERS) == 12
    with pytest.raises(SystemExit) as info:
        cli.main(["demo", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert "{" + ",".join(cli.OPTIMIZERS) + "}" in "".join(text.split())
    with pytest.raises(SystemExit) as info:
        cli.main(["demo", "--optimizer", "nope"])
    assert info.value.code == 2
    assert "invalid choice: 'nope'" in capsys.readouterr().err


def _run(*argv, cwd=None):
    """``python -m fastlr ...`` in a subprocess, outside the checkout (at its top ``-m``
    would import the source tree, unbuilt in CI), with the fastlr under test (an in-place
    tree or site-packages) first on the path."""
    import os
    import tempfile

    import fastlr

    root = os.path.dirname(os.path.dirname(os.path.abspath(fastlr.__file__)))
    env = dict(os.environ, PYTHONPATH=root)
    with tempfile.TemporaryDirectory() as tmp:
        return subprocess.run([sys.executable, "-m", "fastlr", *argv], capture_output=True,
                              text=True, cwd=cwd or tmp, env=env, timeout=300)


def test_bare_fastlr_prints_the_help():
    proc = _run()
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert text.startswith("usage: fastlr") and proc.stderr == ""
    for command in ("demo", "schedule", "bench"):
        assert f"\n  {command} " in text
    # plain text, no reST markup
    for markup in ("``", ":func:", ":class:", ":mod:", ".. "):
        assert markup not in text, markup


def test_top_level_help_is_plain(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert "``" not in text and ":func:" not in text
    assert cli.main([]) == 0
    assert capsys.readouterr().out == text


def test_schedule_help_lists_every_schedule(capsys):
    from fastlr import schedules

    expected = [n for n in schedules.__all__ if callable(getattr(schedules, n)) and n[0].islower()
                and n not in ("as_schedule", "from_callable")]
    assert cli.schedule_names() == expected and len(expected) >= 17
    for argv in (["schedule", "--help"], ["schedule", "-h"], ["schedule"]):
        assert cli.main(argv) == 0
        text = capsys.readouterr().out
        assert text.startswith("usage: fastlr schedule NAME")
        for name in expected:
            assert f"\n  {name}(" in text, name
        assert "``" not in text


@pytest.mark.parametrize("name", cli.schedule_names())
def test_schedule_name_help_shows_its_arguments_and_defaults(name, capsys):
    import inspect

    from fastlr import schedules

    with pytest.raises(SystemExit) as info:
        cli.main(["schedule", name, "--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert text.startswith(f"usage: fastlr schedule {name}")
    for p in inspect.signature(getattr(schedules, name)).parameters.values():
        if p.default is inspect.Parameter.empty:
            assert f"--{p.name} VALUE" in text and "required" in text
        else:
            assert f"default {p.default!r}" in text, (p.name, text)
    assert "``" not in text


def test_schedule_options_accept_dashes(capsys):
    assert cli.main(["schedule", "warmup_cosine", "--peak", "1.0", "--warmup-steps", "2",
                     "--total-steps", "10", "--steps", "3"]) == 0
    assert capsys.readouterr().out.split() == ["0", "0", "1", "0.5", "2", "1"]


def test_cyclic_schedules_show_several_cycles(capsys):
    from fastlr import plot

    assert cli.main(["schedule", "cyclic", "--base", "0.1", "--peak", "1.0",
                     "--step_size_up", "10"]) == 0
    values = [float(line.split("\t")[1]) for line in capsys.readouterr().out.splitlines()]
    assert len(values) == 3 * 20 + 1 == plot.CYCLES * 20 + 1
    assert sum(v == 1.0 for v in values) == 3           # three peaks
    assert cli.main(["schedule", "cosine_restarts", "--init", "1.0", "--period", "10",
                     "--period_mult", "2"]) == 0
    values = [float(line.split("\t")[1]) for line in capsys.readouterr().out.splitlines()]
    assert len(values) == 10 + 20 + 40 + 1
    assert [t for t in range(1, len(values)) if values[t] > values[t - 1]] == [10, 30, 70]


@pytest.mark.parametrize("argv,message", [
    (["schedule", "cosine", "--init", "0.1", "--total_steps", "10", "--out",
      "{missing}/s.png"], "fastlr schedule: cannot write {missing}/s.png: no folder {missing}"),
    (["schedule", "cosine", "--init", "0.1", "--total_steps", "10", "--out", "{tmp}/s.xyz"],
     "fastlr schedule: cannot write {tmp}/s.xyz: Format 'xyz' is not supported"),
    (["demo", "--epochs", "1", "--hidden", "8", "--out", "{file}/pictures"],
     "fastlr demo: cannot write {file}/pictures: Not a directory"),
], ids=["schedule-no-folder", "schedule-format", "demo-folder-under-a-file"])
def test_a_bad_out_path_is_a_one_line_error(argv, message, tmp_path):
    pytest.importorskip("matplotlib")
    (tmp_path / "a_file").write_text("")
    names = dict(missing=tmp_path / "missing", tmp=tmp_path, file=tmp_path / "a_file")
    proc = _run(*[a.format(**names) for a in argv], cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.startswith(message.format(**names)), proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "epoch" not in proc.stdout        # the demo fails before training


@pytest.mark.parametrize("argv,message", [
    (["--batch-size", "100000", "--epochs", "1"],
     "--schedule warmup_cosine cannot run 1 step (1 epoch of 1 batch of 100000 out of "),
    (["--batch-size", "1000", "--epochs", "1", "--schedule", "one_cycle"],
     "--schedule one_cycle cannot run 2 steps (1 epoch of 2 batches of 1000 out of "),
    (["--seed", "-1"], "--seed must be >= 0, got -1"),
], ids=["warmup-cosine-1-step", "one-cycle-2-steps", "negative-seed"])
def test_demo_refuses_what_it_cannot_run_before_training(argv, message, capsys):
    """A run too short for its schedule, or a negative seed, is a usage error (exit 2),
    before the range test: not a traceback after it."""
    with pytest.raises(SystemExit) as info:
        cli.main(["demo", "--hidden", "8", "--no-plots", *argv])
    assert info.value.code == 2
    captured = capsys.readouterr()
    assert f"error: {message}" in captured.err
    assert "Traceback" not in captured.err and "range test" not in captured.out


def test_schedule_command_takes_schedule_expressions(capsys):
    """Compositions take schedules: an expression of fastlr.schedules constructors, a list
    for the variadic ones (minimum, maximum, chained), evaluated without anything else."""
    from fastlr import schedules

    cases = [
        (["maximum", "--schedules", "[cosine(1.0, 10), 0.25]"],
         schedules.maximum(schedules.cosine(1.0, 10), 0.25)),
        (["chained", "--schedules", "[constant_lr(1.0, factor=0.5, total_steps=3), "
                                    "exponential(1.0, 0.9)]"],
         schedules.chained(schedules.constant_lr(1.0, factor=0.5, total_steps=3),
                           schedules.exponential(1.0, 0.9))),
        (["warmup", "--schedule", "cosine(1.0, 10) * 0.5 + 0.1", "--warmup_steps", "3"],
         schedules.warmup(schedules.cosine(1.0, 10) * 0.5 + 0.1, 3)),
    ]
    for argv, expected in cases:
        assert cli.main(["schedule", *argv, "--steps", "12"]) == 0
        values = [float(line.split("\t")[1]) for line in capsys.readouterr().out.splitlines()]
        assert values == [float(f"{v:.10g}") for v in expected.values(range(12))], argv
    with pytest.raises(SystemExit, match="--schedules is required"):
        cli.main(["schedule", "minimum"])
    # anything but constructors, literals and + - * / stays a string (and is refused)
    with pytest.raises(SystemExit, match="schedules"):
        cli.main(["schedule", "minimum", "--schedules", "[__import__('os').getcwd(), 1.0]"])


def test_schedule_command_errors():
    with pytest.raises(SystemExit, match="unknown schedule 'nope'"):
        cli.main(["schedule", "nope"])
    with pytest.raises(SystemExit, match="missing a required argument"):
        cli.main(["schedule", "cosine", "--init", "0.1"])
    with pytest.raises(SystemExit, match="total_steps must be >= 1"):
        cli.main(["schedule", "cosine", "--init", "0.1", "--total_steps", "0"])


def test_console_entry_point_runs_demo_quickly(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "fastlr", "demo", "--epochs", "1",
                           "--hidden", "8", "--no-plots"], capture_output=True, text=True,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "faster" in proc.stdout


def test_bench_subcommand_runs(capfd):
    # (fastlr bench may re-run itself in a child process with OpenMP settings: capfd)
    assert cli.main(["bench", "--quick", "--no-torch", "--optimizers", "adam",
                     "--sizes", "1K", "--threads", "1"]) == 0
    out = capfd.readouterr().out
    assert "adam" in out and "% roof" in out

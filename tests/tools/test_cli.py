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

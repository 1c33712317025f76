"""The command line: `fastlr demo` trains with the kernels and with the reference."""

import io

import numpy as np

from fastlr import cli


def test_demo_kernels_and_reference_agree():
    out = io.StringIO()
    result = cli.demo(steps=30, hidden=32, dtype="float64", out=out)
    text = out.getvalue()
    assert "loss (fastlr)" in text and "faster" in text
    fast, slow = result["fastlr"], result["reference"]
    # The same model from the same weights: the loss curves agree to rounding and fall.
    np.testing.assert_allclose(fast[0], slow[0], rtol=1e-9)
    assert fast[0][-1] < 0.8 * fast[0][0]
    assert result["max_param_diff"] < 1e-9


def test_main_parses_arguments(capsys):
    assert cli.main(["demo", "--steps", "5", "--hidden", "8"]) == 0
    assert "5 full-batch AdamW steps" in capsys.readouterr().out

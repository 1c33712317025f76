"""`fastlr bench` and its parts: the in-place NumPy baselines, the roofline loops, the
benchmark's results, JSON and PNG output. No timing assertions: only that numbers exist,
are finite and positive, and that the output is well-formed."""

import json
import math
import sys

import numpy as np
import pytest

from fastlr import reference
from fastlr._core import dispatch
from fastlr._tools import bench
from fastlr._tools import roofline as _roofline

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------------------
# In-place NumPy baselines: the reference's bits
# ---------------------------------------------------------------------------------------
def _arrays(n, dtype, names, seed):
    rng = np.random.default_rng(seed)
    out = {}
    for name in names:
        if name == "param":
            a = rng.standard_normal(n)
        elif name == "grad":
            a = rng.normal(0.0, 1e-2, n)
        elif name in ("square_avg", "exp_avg_sq", "max_exp_avg_sq"):
            a = rng.normal(0.0, 1e-2, n) ** 2 + 1e-10     # second moments: positive
        elif name == "grad_avg":
            a = rng.normal(0.0, 1e-4, n)                  # small: square_avg - ga**2 > 0
        else:
            a = rng.normal(0.0, 1e-2, n)
        out[name] = a.astype(dtype)
    return out


CASES = [
    ("sgd", ("param", "grad"), {"lr": 0.1}),
    ("sgd", ("param", "grad"), {"lr": 0.1, "weight_decay": 0.1, "maximize": True}),
    ("sgd", ("param", "grad", "momentum_buffer"), {"lr": 0.1, "momentum": 0.9}),
    ("sgd", ("param", "grad", "momentum_buffer"),
     {"lr": 0.1, "momentum": 0.9, "dampening": 0.3, "weight_decay": 0.01}),
    ("sgd", ("param", "grad", "momentum_buffer"),
     {"lr": 0.1, "momentum": 0.9, "nesterov": True, "maximize": True}),
    ("rmsprop", ("param", "grad", "square_avg"), {"lr": 0.01}),
    ("rmsprop", ("param", "grad", "square_avg"), {"lr": 0.01, "alpha": 0.3,
                                                  "weight_decay": 0.1}),
    ("rmsprop", ("param", "grad", "square_avg", "momentum_buffer"),
     {"lr": 0.01, "momentum": 0.5, "maximize": True}),
    ("rmsprop", ("param", "grad", "square_avg", "momentum_buffer", "grad_avg"),
     {"lr": 0.01, "momentum": 0.5}),
    ("rmsprop", ("param", "grad", "square_avg", None, "grad_avg"), {"lr": 0.01, "alpha": 0.4}),
    ("adam", ("param", "grad", "exp_avg", "exp_avg_sq"), {"lr": 1e-3}),
    ("adam", ("param", "grad", "exp_avg", "exp_avg_sq"), {"lr": 1e-3, "weight_decay": 0.1}),
    ("adam", ("param", "grad", "exp_avg", "exp_avg_sq"),
     {"lr": 1e-3, "weight_decay": 0.1, "decoupled_weight_decay": True, "maximize": True}),
    ("adam", ("param", "grad", "exp_avg", "exp_avg_sq"), {"lr": 1e-3, "beta1": 0.3}),
    ("adam", ("param", "grad", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"), {"lr": 1e-3}),
    ("adamw", ("param", "grad", "exp_avg", "exp_avg_sq"), {"lr": 1e-3}),
    ("adamw", ("param", "grad", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
     {"lr": 1e-3, "weight_decay": 0.3}),
]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kernel,names,kwargs", CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_numpy_inplace_equals_reference(kernel, names, kwargs, dtype):
    """Same operations in the same order and dtype: the reference's bits, step after step
    (step 1 included: SGD's momentum buffer starts as a copy of the gradient)."""
    data = _arrays(257, dtype, [n for n in names if n], seed=len(names))
    ref = {k: v.copy() for k, v in data.items()}
    fast = {k: v.copy() for k, v in data.items()}
    scratch = bench.numpy_scratch(data["param"])
    inplace = getattr(bench, f"numpy_inplace_{kernel}")
    for step in (1, 2, 3):
        kw = dict(kwargs)
        if kernel != "rmsprop":
            kw["step"] = step
        getattr(reference, kernel)(*[ref[n] if n else None for n in names], **kw)
        inplace(*[fast[n] if n else None for n in names], scratch=scratch, **kw)
        for name in data:
            np.testing.assert_array_equal(fast[name], ref[name], err_msg=f"{name}, step {step}")
    assert fast["param"].dtype == np.dtype(dtype)


def test_numpy_inplace_allocates_scratch_when_none():
    data = _arrays(10, "float32", ("param", "grad", "exp_avg", "exp_avg_sq"), seed=1)
    ref = {k: v.copy() for k, v in data.items()}
    bench.numpy_inplace_adam(*data.values(), step=3, lr=1e-2)
    reference.adam(*ref.values(), step=3, lr=1e-2)
    np.testing.assert_array_equal(data["param"], ref["param"])
    with pytest.raises(ValueError, match="scratch"):
        bench.numpy_inplace_sgd(data["param"], data["grad"], step=1, lr=0.1,
                                scratch=[data["exp_avg"]])


@pytest.mark.parametrize("optimizer", bench.OPTIMIZERS)
def test_steppers_compute_the_reference_update(optimizer):
    """The benchmark's fastlr / numpy steppers do the reference's update (fastlr to
    rounding: Adam multiplies by 1/sqrt(bias correction) instead of dividing)."""
    base = bench.make_inputs(optimizer, 3000, "float32")
    ref = bench.clone_inputs(base)
    got_numpy = bench.clone_inputs(base)
    got_fastlr = bench.clone_inputs(base)
    step_ref = bench.reference_stepper(optimizer, ref)
    numpy_step = bench.numpy_stepper(optimizer, got_numpy)
    assert (numpy_step is not None) == bench.has_numpy(optimizer)
    steppers = [s for s in (numpy_step, bench.fastlr_stepper(optimizer, got_fastlr, 1)) if s]
    for _ in range(3):
        step_ref()
        for s in steppers:
            s()
    for name in base:
        if numpy_step is not None:
            np.testing.assert_array_equal(got_numpy[name], ref[name])
        np.testing.assert_allclose(got_fastlr[name], ref[name], rtol=2e-6, atol=1e-9)
    assert not np.array_equal(ref["param"], base["param"])          # something happened


@pytest.mark.parametrize("optimizer", bench.OPTIMIZERS)
def test_torch_stepper_steps_the_given_arrays(optimizer):
    """torch's state is swapped for views of our arrays: a torch step from that state is
    the reference's step (torch is at its step 2 then)."""
    torch = pytest.importorskip("torch")
    spec = bench.SPECS[optimizer]
    arrays = bench.make_inputs(optimizer, 1000, "float64")
    if not spec.torch_class:
        with pytest.raises(NotImplementedError, match="torch has no"):
            bench.torch_stepper(optimizer, bench.clone_inputs(arrays), "for-loop")
        return
    modes = ("fused", "foreach", "for-loop") if spec.torch_fused else ("foreach", "for-loop")
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)      # torch's scalar state (mu_product) in double
    try:
        for mode in modes:
            mine = bench.clone_inputs(arrays)
            step = bench.torch_stepper(optimizer, mine, mode)
            expect = bench.clone_inputs(mine)
            kw = dict(spec.hyper)
            if spec.uses_step:
                kw["step"] = 2
            torch_state = next(iter(step.__self__.state.values()))
            kw.update({k: float(torch_state[k]) for k in spec.scalars})
            getattr(reference, spec.kernel)(
                *[expect[n] for n in ("param", "grad") + spec.state], **kw)
            step()
            for name in expect:
                if name == "grad":
                    continue    # torch's foreach Nesterov SGD adds momentum * buf into grad
                np.testing.assert_allclose(mine[name], expect[name], rtol=1e-12, atol=1e-15,
                                           err_msg=f"{optimizer} {mode} {name}")
    finally:
        torch.set_default_dtype(old)
    if not bench.SPECS[optimizer].torch_fused:
        with pytest.raises(NotImplementedError, match="no fused"):
            bench.torch_stepper(optimizer, bench.clone_inputs(arrays), "fused")


# ---------------------------------------------------------------------------------------
# Roofline loops
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("pattern", ["sgd", "momentum", "adam"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_roofline_bandwidth_is_positive_and_finite(pattern, dtype, n_threads):
    gbps = _roofline.bandwidth(pattern, 1 << 16, dtype, n_threads, repeats=2, min_time=1e-3)
    assert isinstance(gbps, float)
    assert math.isfinite(gbps) and gbps > 0


def test_roofline_bytes_and_patterns():
    assert _roofline.bytes_per_element("sgd", "float32") == 12
    assert _roofline.bytes_per_element("momentum", "float32") == 20
    assert _roofline.bytes_per_element("rmsprop", "float64") == 40
    assert _roofline.bytes_per_element("adam", "float32") == 28
    assert _roofline.bytes_per_element("adamw", "float64") == 56
    assert bench.bytes_per_element("nesterov", "float32") == 20
    with pytest.raises(ValueError, match="unknown pattern"):
        _roofline.bytes_per_element("lion")
    with pytest.raises(TypeError, match="float32 or float64"):
        _roofline.make_buffers("adam", 8, "int32")
    with pytest.raises(ValueError, match="buffers"):
        _roofline.run("adam", _roofline.make_buffers("sgd", 8))


@pytest.mark.parametrize("pattern", ["sgd", "momentum", "adam"])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_roofline_loops_compute_the_same_in_every_variant(pattern, n_threads):
    """The AVX2 clone and the baseline loop give the same bits (no FMA contraction), and
    the threaded split covers every element exactly once per pass."""
    n = 100_003                         # > 2 spans of 16K, not a multiple of the alignment
    a = _roofline.make_buffers(pattern, n, "float64")   # float64: p moves by ~1e-10
    b = _roofline.make_buffers(pattern, n, "float64")
    variants = ["baseline"]
    if _roofline.cpu_variant() == "x86-64-v3":
        variants.append("x86-64-v3")
    _roofline.run(pattern, a, 1, 3, "baseline")
    _roofline.run(pattern, b, n_threads, 3, variants[-1])
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    p = a[0]
    assert np.all(p == p[0]) and p[0] < 1.0        # every element updated, the same way
    with pytest.raises(ValueError, match="variant"):
        _roofline.run(pattern, a, 1, 1, "avx9000")


@pytest.mark.parametrize("layout", ["staggered", "natural"])
def test_stream_arrays_layout(layout):
    arrays = _roofline.stream_arrays(1000, "float64", 4, layout)
    assert len(arrays) == 4
    for a in arrays:
        assert a.shape == (1000,) and a.dtype == np.float64 and a.flags.c_contiguous
        assert a.flags.writeable and not a.any()
    for i in range(4):
        for j in range(i + 1, 4):
            assert not np.shares_memory(arrays[i], arrays[j])
    if layout == "staggered":
        starts = [a.ctypes.data for a in arrays]
        assert starts[0] % 4096 == 0
        dist = 8000 + _roofline.STAGGER                 # 1000 * 8 bytes, 64-byte multiple
        assert [s - starts[0] for s in starts] == [k * dist for k in range(4)]


def test_make_inputs_are_steady_state_like():
    data = bench.make_inputs("adam", 70000, "float32")
    assert list(data) == ["param", "grad", "exp_avg", "exp_avg_sq"]
    for a in data.values():
        assert a.shape == (70000,) and a.dtype == np.float32
        assert np.all(np.isfinite(a)) and np.all(a != 0)
    assert np.all(data["exp_avg_sq"] > 0)
    again = bench.make_inputs("adam", 70000, "float32")
    np.testing.assert_array_equal(again["grad"], data["grad"])     # deterministic
    with pytest.raises(ValueError, match="unknown optimizer"):
        bench.make_inputs("adamx", 10)


# ---------------------------------------------------------------------------------------
# run(), the report, JSON and PNG
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def quick_results():
    return bench.run(quick=True, threads=[1, 2], repeat=2, min_sample=2e-4)


def test_run_quick_is_well_formed(quick_results):
    r = quick_results
    assert r["format"] == "fastlr-bench-1"
    cfg = r["config"]
    assert cfg["quick"] is True
    assert cfg["optimizers"] == list(bench.QUICK_OPTIMIZERS)
    assert cfg["sizes"] == list(bench.QUICK_SIZES)
    assert cfg["threads"] == [1, 2]
    m = r["machine"]
    for key in ("cpu", "cores", "numpy", "fastlr", "cpu_target", "kernel_modules",
                "roofline_loops", "openmp"):
        assert key in m
    assert set(m["kernel_modules"]) == set(dispatch.MODULES)
    assert all(t in dispatch.cpu_levels() for t in m["kernel_modules"].values())
    rows = r["rows"]
    assert len(rows) == len(cfg["optimizers"]) * len(cfg["sizes"]) * len(cfg["dtypes"]) * 2
    seen = {(row["optimizer"], row["dtype"], row["n"], row["threads"]) for row in rows}
    assert len(seen) == len(rows)
    have_torch = m["torch"] is not None
    assert cfg["torch"] == have_torch
    for row in rows:
        t = row["time_s"]
        for impl in ("fastlr", "reference", "numpy"):
            assert math.isfinite(t[impl]) and t[impl] > 0
            assert len(row["samples_s"][impl]) == cfg["repeat"]
        assert math.isfinite(row["roofline_time_s"]) and row["roofline_time_s"] > 0
        for impl in ("reference", "numpy"):
            assert row["speedup"][impl] == pytest.approx(t[impl] / t["fastlr"])
        if have_torch:
            assert row["torch_mode"] == "fused"
            assert row["speedup"]["torch"] == pytest.approx(t["torch"] / t["fastlr"])
        else:
            assert t["torch"] is None and row["speedup"]["torch"] is None
        bpe = bench.bytes_per_element(row["optimizer"], row["dtype"])
        assert row["bytes_per_element"] == bpe
        assert row["gbps"] == pytest.approx(bpe * row["n"] / t["fastlr"] / 1e9)
        for key in ("gbps", "roofline_gbps", "roofline_fraction", "ns_per_element"):
            assert math.isfinite(row[key]) and row[key] > 0
    json.loads(json.dumps(r, allow_nan=False))          # JSON-ready as it is


def test_report_and_plot(quick_results, tmp_path):
    text = bench.format_report(quick_results)
    assert text.startswith("fastlr bench: ")
    assert "% roof" in text and "x torch" in text
    for row in quick_results["rows"]:
        assert f"{row['optimizer']}  " in text
    pytest.importorskip("matplotlib")
    path = tmp_path / "bench.png"
    assert bench.plot(quick_results, str(path)) == str(path)
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 1000


def test_run_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown optimizer"):
        bench.run(["adamx"], [16], threads=[1], torch=False)
    with pytest.raises(ValueError, match="float32 or float64"):
        bench.run(["sgd"], [16], ["float16"], threads=[1], torch=False)
    with pytest.raises(ValueError, match="layout"):
        bench.run(["sgd"], [16], threads=[1], torch=False, layout="packed")


def test_run_without_torch_and_float64():
    r = bench.run(["rmsprop", "nesterov"], [1000], ["float64"], [1], 1, torch=False,
                  min_sample=1e-4, layout="natural")
    assert [row["optimizer"] for row in r["rows"]] == ["rmsprop", "nesterov"]
    assert all(row["time_s"]["torch"] is None for row in r["rows"])
    assert r["config"]["layout"] == "natural" and r["config"]["torch"] is False


def test_main_writes_json_and_png(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OMP_WAIT_POLICY", "passive")       # run here, no subprocess
    monkeypatch.setenv("GOMP_SPINCOUNT", str(bench.DEFAULT_SPIN_COUNT))
    out = tmp_path / "r.json"
    argv = ["--optimizers", "adamw", "--sizes", "1K,2K", "--threads", "1", "--repeat", "1",
            "--min-sample", "0.0002", "--quiet", "--json", str(out)]
    if _have_matplotlib():
        argv += ["--plot", str(tmp_path / "r.png")]
    assert bench.main(argv) == 0
    captured = capsys.readouterr()
    assert "adamw" in captured.out and "roof GB/s" in captured.out
    result = json.loads(out.read_text())
    assert [row["n"] for row in result["rows"]] == [1024, 2048]
    assert result["machine"]["omp_wait_policy"] == "passive"
    if _have_matplotlib():
        assert (tmp_path / "r.png").read_bytes()[:8] == PNG_SIGNATURE


def test_main_relaunches_with_passive_wait_policy(tmp_path, monkeypatch):
    """Without OMP_WAIT_POLICY / GOMP_SPINCOUNT, main re-runs itself in a child with them
    set."""
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    monkeypatch.delenv("FASTLR_BENCH_CHILD", raising=False)
    out = tmp_path / "r.json"
    code = bench.main(["--optimizers", "sgd", "--sizes", "1K", "--threads", "1", "--repeat",
                       "1", "--min-sample", "0.0002", "--no-torch", "--quiet", "--json",
                       str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    assert result["machine"]["omp_wait_policy"] == "passive"
    assert result["machine"]["gomp_spincount"] == str(bench.DEFAULT_SPIN_COUNT)
    assert result["config"]["torch"] is False


def test_main_usage_errors(capsys, monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "passive")
    monkeypatch.setenv("GOMP_SPINCOUNT", str(bench.DEFAULT_SPIN_COUNT))
    assert bench.main(["--optimizers", "adamx"]) == 2
    assert "unknown optimizer" in capsys.readouterr().err
    assert bench.main(["--sizes", "12Q"]) == 2
    assert bench.main(["--repeat", "0"]) == 2
    assert bench.main(["--spin-count", "-1"]) == 2
    for bad in ("-1", "0", "nan", "inf"):
        assert bench.main(["--min-sample", bad]) == 2
        assert "--min-sample must be a positive number of seconds" in capsys.readouterr().err


def test_a_relaunched_child_killed_by_a_signal_is_reported(monkeypatch, capsys):
    """A child killed by SIGKILL (the kernel's out-of-memory killer) is named, with a
    hint, and the exit status is the shell's 128 + signal (not a bare 247)."""
    monkeypatch.delenv("FASTLR_BENCH_CHILD", raising=False)
    monkeypatch.setattr(bench.subprocess, "call", lambda *a, **k: -9)
    assert bench._relaunch(["--sizes", "1G"], {}) == 137
    err = capsys.readouterr().err
    assert "killed by SIGKILL: the system may have run out of memory" in err
    monkeypatch.setattr(bench.subprocess, "call", lambda *a, **k: -15)
    assert bench._relaunch([], {}) == 143
    assert "killed by SIGTERM" in capsys.readouterr().err
    assert bench.main(["--help"]) == 0


def test_plot_without_matplotlib_says_how_to_install(monkeypatch, capsys, tmp_path):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match="pip install"):
        bench.plot({"rows": [], "machine": {"cpu": "x"}}, str(tmp_path / "x.png"))
    assert bench.main(["--quick", "--plot", str(tmp_path / "x.png")]) == 2
    assert "matplotlib" in capsys.readouterr().err


def test_sizes_parse_and_label():
    assert bench._parse_size("64K") == 65536
    assert bench._parse_size("16m") == 1 << 24
    assert bench._parse_size("1000") == 1000
    assert bench._size_label(1 << 20) == "1M" and bench._size_label(1000) == "1000"


def _have_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


# ---------------------------------------------------------------------------------------
# every row of the optimizer table is a bench row
# ---------------------------------------------------------------------------------------
def test_every_table_row_is_a_bench_row():
    from fastlr import _specs
    kernels = [o.kernel for o in _specs.OPTIMIZERS.values()]
    assert [name for name in bench.OPTIMIZERS if name in kernels] == kernels
    assert bench.DEFAULT_OPTIMIZERS == ("sgd", "momentum", "rmsprop", "adam", "adamw")
    for name in ("momentum", "nesterov"):
        assert bench.SPECS[name].kernel == "sgd"
    assert bench.SPECS["nesterov"].hyper == {"lr": 1e-2, "momentum": 0.9, "nesterov": True}
    assert bench.SPECS["adamw"].torch_kwargs == {"lr": 1e-3, "betas": (0.9, 0.999),
                                                 "eps": 1e-8, "weight_decay": 1e-2}
    assert bench.SPECS["adagrad"].torch_state == {"state_sum": "sum"}
    assert bench.SPECS["nadam"].scalars == {"mu_product": 1.0}
    assert [n for n in bench.OPTIMIZERS if not bench.has_numpy(n)] == [
        "adagrad", "adadelta", "adamax", "nadam", "radam", "lion", "rprop", "asgd"]


def test_rows_without_a_numpy_baseline_say_so(capsys):
    r = bench.run(["lion", "adagrad"], [1000], ["float32"], [1], 1, torch=False,
                  min_sample=1e-4)
    for row in r["rows"]:
        assert row["numpy_baseline"] is False and row["time_s"]["numpy"] is None
        assert row["speedup"]["numpy"] is None and row["gbps"] > 0
    report = bench.format_report(r)
    assert "no in-place NumPy baseline for adagrad, lion" in report
    json.dumps(r, allow_nan=False)


def test_main_runs_any_table_optimizer(capsys, monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "passive")
    monkeypatch.setenv("GOMP_SPINCOUNT", str(bench.DEFAULT_SPIN_COUNT))
    assert bench.main(["--optimizers", "nadam,radam", "--sizes", "1K", "--threads", "1",
                       "--repeat", "1", "--min-sample", "0.0001", "--no-torch",
                       "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "nadam" in out and "radam" in out

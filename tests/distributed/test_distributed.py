"""fastlr.distributed under MPI: tests/distributed/mpi_checks.py run by mpirun on 2 and 3 ranks (3:
uneven shards), skipped cleanly without mpirun or mpi4py; and what works without MPI."""

import os
import re
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pytest

import fastlr
from fastlr import distributed

HERE = os.path.dirname(os.path.abspath(__file__))
FASTLR_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(fastlr.__file__)))


def _mpi_missing():
    reason = None
    if shutil.which("mpirun") is None:
        reason = "mpirun is not installed (Debian: apt install openmpi-bin libopenmpi-dev)"
    else:
        try:
            import mpi4py  # noqa: F401
        except ImportError:
            reason = "mpi4py is not installed (pip install 'fastlr[mpi]')"
    if reason and os.environ.get("FASTLR_REQUIRE_MPI") == "1":
        pytest.fail(f"FASTLR_REQUIRE_MPI=1 but {reason}")
    return reason


def mpi_env(**extra):
    """The environment of an mpirun child: the fastlr under test first on the path, root
    allowed, oversubscription allowed (CI has 2 cores), one OpenMP thread per rank."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join(
        [FASTLR_ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]),
        OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
        OMPI_MCA_rmaps_base_oversubscribe="1", OMP_NUM_THREADS="1", **extra)


def _mpirun(n, *checks, timeout=600):
    env = mpi_env()
    cmd = ["mpirun", "-n", str(n), "--oversubscribe", sys.executable,
           os.path.join(HERE, "mpi_checks.py"), *checks]
    with tempfile.TemporaryDirectory() as cwd:
        return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=timeout)


@pytest.mark.parametrize("n_ranks", [2, 3])
def test_under_mpirun(n_ranks):
    missing = _mpi_missing()
    if missing:
        pytest.skip(missing)
    result = _mpirun(n_ranks)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-6000:]
    assert f"FAILED 0 ranks {n_ranks}" in out, out[-6000:]


def test_shard_bounds_balance():
    for total in (0, 1, 2, 31, 32, 1000003):
        for n in (1, 2, 3, 7):
            counts, displs = distributed.shard_bounds(total, n)
            assert sum(counts) == total and max(counts) - min(counts) <= 1
            assert displs == list(np.cumsum([0] + counts[:-1]))


def test_without_mpi4py_the_error_says_what_to_install():
    code = ("import sys; sys.modules['mpi4py'] = None\n"
            "import numpy as np, fastlr, fastlr.distributed as d\n"
            "try:\n"
            "    d.ShardedOptimizer('Adam', [np.zeros(3)], lr=1e-3)\n"
            "except ImportError as e:\n"
            "    print('ImportError:', e)\n")
    env = dict(os.environ, PYTHONPATH=FASTLR_ROOT)
    with tempfile.TemporaryDirectory() as cwd:
        out = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env,
                             capture_output=True, text=True, timeout=120)
    assert "ImportError: fastlr.distributed needs mpi4py" in out.stdout, out.stderr
    assert "fastlr[mpi]" in out.stdout


def test_one_rank_equals_the_plain_optimizer():
    """COMM_SELF (or a 1-rank world): the sharded optimizer is the plain one, bit for bit."""
    if _mpi_missing():
        pytest.skip(_mpi_missing())
    from mpi4py import MPI

    flat, views = fastlr.flat_buffer([(4, 3), (5,)], np.float64)
    flat[:] = np.arange(flat.size) / 7.0
    rflat, rviews = fastlr.flat_buffer([(4, 3), (5,)], np.float64)
    rflat[:] = flat
    dist = distributed.ShardedOptimizer(fastlr.AdamW, views, MPI.COMM_SELF, lr=1e-2,
                                        max_grad_norm=0.5)
    ref = fastlr.AdamW(rviews, lr=1e-2, max_grad_norm=0.5)
    rng = np.random.default_rng(0)
    for _ in range(10):
        g = rng.standard_normal(flat.size)
        dist.step(g)
        ref.step(g.copy())
    np.testing.assert_array_equal(flat, rflat)
    assert dist.state_elements == 2 * flat.size
    assert set(dist.timings) == {"check", "reduce_scatter", "clip", "update", "all_gather"}



def test_one_grad_array_is_the_single_params_grad_or_a_1d_flat_buffer():
    """As the optimizers' step: with one param, an array of its shape is its grad; else one
    array is a 1-D flat buffer of the total size; any other shape is refused, nothing
    written (once, a (2, 3) grad of a single (2, 3) param was a TypeError)."""
    if _mpi_missing():
        pytest.skip(_mpi_missing())
    from mpi4py import MPI

    runs = []
    for form in ("bare", "list"):
        flat, (w,) = fastlr.flat_buffer([(2, 3)], np.float64)
        flat[:] = 1.0
        dist = distributed.ShardedOptimizer(fastlr.SGD, [w], MPI.COMM_SELF, lr=0.5)
        g = np.arange(6.0).reshape(2, 3)
        dist.step(g if form == "bare" else [g])
        runs.append(w.copy())
        for bad in (g.T.copy(), np.ones((6, 1))):
            with pytest.raises(ValueError, match=rf"grads has shape {re.escape(str(bad.shape))}"
                                                 rf" but params\[0\] has shape \(2, 3\)"):
                dist.step(bad)
        np.testing.assert_array_equal(w, runs[-1])
    np.testing.assert_array_equal(runs[0], runs[1])
    np.testing.assert_array_equal(runs[0], 1.0 - 0.5 * np.arange(6.0).reshape(2, 3))
    flat, views = fastlr.flat_buffer([(4, 3), (5,)], np.float64)
    dist = distributed.ShardedOptimizer(fastlr.SGD, views, MPI.COMM_SELF, lr=0.5)
    with pytest.raises(ValueError, match=r"grads has shape \(1, 17\) but one grad array for 2 "
                                         r"params must be a 1-D flat grad buffer of 17"):
        dist.step(np.ones((1, 17)))
    with pytest.raises(ValueError, match="the flat grad buffer has 16 elements but the params "
                                         "have 17 in all"):
        dist.step(np.ones(16))
    assert not flat.any()


@pytest.mark.parametrize("overlap", [False, True])
def test_int8_state_is_refused(overlap):
    """int8 state's blocks belong to one param: a shard would cut them (the step would differ
    from one process and the gathered state could not be put together), so it is refused
    before any message goes out, overlapped or not."""
    if _mpi_missing():
        pytest.skip(_mpi_missing())
    from mpi4py import MPI

    _, views = fastlr.flat_buffer([(300,)], np.float32)
    with pytest.raises(ValueError, match=r"ShardedOptimizer: state_dtype='int8' is not "
                                         r"supported \(its blocks would be cut"):
        distributed.ShardedOptimizer("AdamW", views, MPI.COMM_SELF, lr=1e-2,
                                     state_dtype="int8", overlap=overlap)
    # bfloat16 state (element-wise) is sharded as before
    distributed.ShardedOptimizer("AdamW", views, MPI.COMM_SELF, lr=1e-2,
                                 state_dtype="bfloat16", overlap=overlap).step(
        np.ones(300, np.float32))


def test_master_weights_false_is_refused():
    """The shards are float32 views of one flat buffer: master_weights=False (16-bit params
    stepped in place, one kernel call per param) has nothing to do there, and its per-param
    step cannot run in windows; refused before any message goes out."""
    if _mpi_missing():
        pytest.skip(_mpi_missing())
    from mpi4py import MPI

    _, views = fastlr.flat_buffer([(300,)], np.float32)
    with pytest.raises(ValueError, match=r"ShardedOptimizer: master_weights=False is not "
                                         r"supported"):
        distributed.ShardedOptimizer("AdamW", views, MPI.COMM_SELF, lr=1e-2,
                                     master_weights=False)


def test_example_trains_like_one_process():
    missing = _mpi_missing()
    if missing:
        pytest.skip(missing)
    env = dict(os.environ, PYTHONPATH=FASTLR_ROOT, OMPI_ALLOW_RUN_AS_ROOT="1",
               OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMP_NUM_THREADS="1")
    example = os.path.join(os.path.dirname(os.path.dirname(HERE)), "examples", "distributed_mlp.py")
    if not os.path.exists(example):
        pytest.skip("examples/ is not present (an installed copy)")
    with tempfile.TemporaryDirectory() as cwd:
        out = subprocess.run(["mpirun", "-n", "2", "--oversubscribe", sys.executable, example,
                              "--epochs", "1"], cwd=cwd, env=env, capture_output=True,
                             text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    gap = float(out.stdout.rsplit("params: ", 1)[1].split()[0])
    assert gap < 1e-12, out.stdout


def test_bfloat16_rounding_is_nearest_even_and_keeps_specials():
    """to_bfloat16 (grad_comm="bfloat16"): the nearest bfloat16, ties to the even one;
    NaN stays NaN (with its sign), +-Inf and +-0 stay, overflow rounds to Inf."""
    rng = np.random.default_rng(0)
    x = np.concatenate([
        rng.standard_normal(20000).astype(np.float32) * np.float32(10.0) ** rng.integers(
            -30, 30, 20000).astype(np.float32),
        # exact ties: a bfloat16 value plus half a bfloat16 ulp, with even and odd bases
        ((rng.integers(0, 1 << 15, 2000, dtype=np.uint32) << 16) | 0x8000).view(np.float32),
        np.array([0.0, -0.0, np.inf, -np.inf, 3.4e38, -3.4e38, 1e-45], np.float32)])
    x = x[np.isfinite(x) | np.isinf(x)]
    bits = distributed.to_bfloat16(x)
    got = distributed.from_bfloat16(bits).astype(np.float64)
    u = x.view(np.uint32)
    xd = x.astype(np.float64)
    with np.errstate(invalid="ignore"):     # the neighbours of +-Inf are NaN patterns
        below = ((u & 0xFFFF0000).view(np.float32)).astype(np.float64)
        above = (((u & 0xFFFF0000) + 0x10000).view(np.float32)).astype(np.float64)
        d_below, d_above = np.abs(xd - below), np.abs(above - xd)
    finite = np.isfinite(xd) & np.isfinite(above)
    tie = finite & (d_below == d_above)
    nearer = np.where(d_below < d_above, below, above)
    even = np.where(((u >> 16) & 1) == 0, below, above)
    expected = np.where(tie, even, nearer)
    assert np.array_equal(got[finite], expected[finite])
    assert tie.sum() > 1000
    assert np.array_equal(got[np.isinf(xd)], xd[np.isinf(xd)])
    assert np.array_equal(np.signbit(got), np.signbit(xd))
    assert distributed.from_bfloat16(distributed.to_bfloat16(np.float32([3.4e38])))[0] == np.inf
    nans = np.array([np.nan, -np.nan], np.float32)
    nans[1] = -abs(nans[1])
    back = distributed.from_bfloat16(distributed.to_bfloat16(nans))
    assert np.isnan(back).all() and list(np.signbit(back)) == [False, True]
    # float64 goes through float32
    assert distributed.to_bfloat16(np.array([1.0 + 2 ** -8], np.float64))[0] == 0x3F80
    out = np.empty(3, np.uint16)
    assert distributed.to_bfloat16(np.float32([1, 2, 3]), out) is out
    with pytest.raises(TypeError, match="float32 or float64"):
        distributed.to_bfloat16(np.arange(3))
    for bad in (np.empty(2, np.uint16), np.empty(3, np.int16), np.empty((3, 1), np.uint16)):
        with pytest.raises(ValueError, match="out must be"):
            distributed.to_bfloat16(np.float32([1, 2, 3]), bad)

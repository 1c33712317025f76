"""A rank that raises, is killed or hangs ends the whole MPI job within a bound, with a
message naming the rank (and, where a survivor reports it, the step); the last complete
checkpoint then resumes on another number of ranks (tests/distributed/mpi_faults.py)."""

import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

import fastlr

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from test_distributed import _mpi_missing, mpi_env  # noqa: E402

BOUND = 60          # seconds from the fault to the end of the job, with margin for CI


def _run(n, *args, cwd, timeout=300):
    env = mpi_env()
    cmd = ["mpirun", "-n", str(n), "--oversubscribe", sys.executable,
           os.path.join(HERE, "mpi_faults.py"), *args]
    t0 = time.monotonic()
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout)
    return result, result.stdout + result.stderr, time.monotonic() - t0


def _reference(steps):
    """One process, the same run: Adam on the mean grad (every rank's grads are equal)."""
    import mpi_faults       # (imports mpi4py: only once the test is not skipped)
    w = mpi_faults.initial_params()
    opt = fastlr.Adam([w], lr=0.01)
    for step in range(1, steps + 1):
        opt.step([mpi_faults.grad(step)])
    return w


@pytest.fixture
def mpi():
    missing = _mpi_missing()
    if missing:
        pytest.skip(missing)


def test_killed_rank_ends_the_job_and_the_checkpoint_resumes_on_other_rank_counts(mpi):
    with tempfile.TemporaryDirectory() as d:
        result, out, elapsed = _run(3, "kill", d, "--fail-after", "5", cwd=d)
        assert result.returncode != 0, out[-4000:]
        assert elapsed < BOUND, (elapsed, out[-4000:])
        assert "rank 1" in out, out[-4000:]                # Open MPI names the dead rank
        assert not os.path.exists(os.path.join(d, "final.npy"))
        # the last complete checkpoint is the one after step 4; resume it on 2 ranks
        result, out, _ = _run(2, "none", d, "--resume", cwd=d)
        assert result.returncode == 0, out[-4000:]
        assert "done: 8 steps on 2 ranks" in out, out[-4000:]
        final = np.load(os.path.join(d, "final.npy"))
    np.testing.assert_allclose(final, _reference(8), rtol=0, atol=1e-12)


def test_uncaught_exception_on_a_rank_aborts_every_rank_at_once(mpi):
    with tempfile.TemporaryDirectory() as d:
        # the survivors' timeout is far away: only the exception hook can end it in time
        result, out, elapsed = _run(3, "raise", d, "--fail-after", "3", "--timeout", "600",
                                    cwd=d)
    assert result.returncode != 0, out[-4000:]
    assert elapsed < BOUND, (elapsed, out[-4000:])
    assert "RuntimeError: injected failure" in out, out[-4000:]
    assert "rank 1 raised RuntimeError after step 3" in out, out[-4000:]


def test_hung_rank_is_named_by_the_others_after_the_timeout(mpi):
    with tempfile.TemporaryDirectory() as d:
        result, out, elapsed = _run(3, "hang", d, "--fail-after", "5", "--timeout", "3",
                                    cwd=d)
    assert result.returncode != 0, out[-4000:]
    assert elapsed < 3 + BOUND, (elapsed, out[-4000:])
    # ranks 0 and 2 wait for rank 1 in step 6's agreement
    assert "step 6: waited 3 s in the step's agreement" in out, out[-4000:]
    assert "for rank(s) [1], which did not arrive" in out, out[-4000:]


def test_timeout_argument_is_checked():
    from fastlr import distributed
    if _mpi_missing():
        pytest.skip("needs mpi4py")
    flat, (w,) = fastlr.flat_buffer([(4,)], np.float64)
    for bad, kind in ((0.0, ValueError), (-1.0, ValueError), ("1", TypeError),
                      (float("nan"), ValueError)):
        with pytest.raises(kind, match="timeout"):
            distributed.ShardedOptimizer("Adam", [w], timeout=bad)
    with pytest.raises(TypeError, match="abort_on_exception"):
        distributed.ShardedOptimizer("Adam", [w], abort_on_exception="yes")
    assert distributed.ShardedOptimizer("Adam", [w], timeout=None).timeout is None

"""Named params in fastlr.distributed.ShardedOptimizer: on one rank (COMM_SELF) here, and on
2 ranks under mpirun (tests/distributed/mpi_named_checks.py)."""

import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest

import fastlr
from fastlr import distributed

from test_distributed import FASTLR_ROOT, HERE, _mpi_missing  # noqa: E402


def _named_views(seed=0):
    flat, views = fastlr.flat_buffer([(4, 3), (5,)], np.float64)
    flat[:] = np.random.default_rng(seed).standard_normal(flat.size)
    return flat, {"w": views[0], "b": views[1]}


def test_one_rank_named_params_and_grads_dict():
    if _mpi_missing():
        pytest.skip(_mpi_missing())
    from mpi4py import MPI

    flat, named = _named_views()
    rflat, rnamed = _named_views()
    dist = distributed.ShardedOptimizer("AdamW", list(named.items()), MPI.COMM_SELF, lr=1e-2)
    ref = fastlr.AdamW(rnamed, lr=1e-2)
    rng = np.random.default_rng(1)
    for _ in range(5):
        g = {"b": rng.standard_normal(5), "w": rng.standard_normal((4, 3))}
        dist.step(g)
        ref.step(g)
    np.testing.assert_array_equal(flat, rflat)
    sd = dist.gathered_state_dict()
    assert sd["param_groups"][0]["param_names"] == ["w", "b"]
    ref2 = fastlr.AdamW(_named_views(2)[1], lr=1e-2)
    ref2.load_state_dict(sd)
    assert ref2.steps == 5
    before = flat.copy()
    for bad, match in [({"w": np.zeros((4, 3))}, "missing from the grads: 'b'"),
                       (dict(g, x=np.zeros(1)), "unexpected in the grads: 'x'")]:
        with pytest.raises(ValueError, match=match):
            dist.step(bad)
    np.testing.assert_array_equal(flat, before)
    with pytest.raises(TypeError, match="the grads is a dict but the params have no names"):
        distributed.ShardedOptimizer("AdamW", list(_named_views()[1].values()),
                                     MPI.COMM_SELF, lr=1e-2).step(g)
    with pytest.raises(ValueError, match="names 'w' twice"):
        distributed.ShardedOptimizer("AdamW", [("w", named["w"]), ("w", named["b"])],
                                     MPI.COMM_SELF, lr=1e-2)


def test_named_params_under_mpirun():
    missing = _mpi_missing()
    if missing:
        pytest.skip(missing)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [FASTLR_ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]),
        OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
        OMPI_MCA_rmaps_base_oversubscribe="1", OMP_NUM_THREADS="1")
    cmd = ["mpirun", "-n", "2", "--oversubscribe", sys.executable,
           os.path.join(HERE, "mpi_named_checks.py")]
    with tempfile.TemporaryDirectory() as cwd:
        result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                                timeout=600)
    out = result.stdout + result.stderr
    assert result.returncode == 0 and "NAMED PASSED ranks 2" in out, out[-6000:]

"""Named params in fastlr.distributed, run on every rank under MPI:

    mpirun -n 2 python tests/distributed/mpi_named_checks.py

(tests/distributed/test_distributed_named.py runs it). Prints "NAMED PASSED" from rank 0
when every rank passed.
"""

import os
import sys
import tempfile
import traceback
import warnings

import numpy as np
from mpi4py import MPI

import fastlr
from fastlr import distributed

COMM = MPI.COMM_WORLD
RANK, N = COMM.Get_rank(), COMM.Get_size()
NAMES = ["fc.weight", "fc.bias", "out.weight"]
SHAPES = [(3, 4), (5,), (7, 2)]


def build(names=NAMES, seed=0, **kw):
    flat, views = fastlr.flat_buffer(SHAPES, np.float64)
    flat[:] = np.random.default_rng(seed).standard_normal(flat.size)
    named = dict(zip(names, views))
    groups = [{"params": {n: named[n] for n in names[:2]}, "lr": 0.02},
              {"params": [(names[2], named[names[2]])]}]
    return flat, distributed.ShardedOptimizer("Adam", groups, COMM, lr=0.01, **kw)


def grads(t):
    rng = np.random.default_rng([t, RANK])
    return {n: rng.standard_normal(s) for n, s in zip(NAMES, SHAPES)}


def main():
    error = None
    try:
        flat, named = build()
        lflat, plain = build()
        for t in range(4):
            g = grads(t)
            named.step({k: g[k] for k in reversed(NAMES)})      # by name, any order
            plain.step([g[n] for n in NAMES])
        assert np.array_equal(flat, lflat)
        try:
            named.step({"fc.weight": np.zeros((3, 4))})
        except ValueError as e:
            assert "missing from the grads: 'fc.bias', 'out.weight'" in str(e), str(e)
        else:
            raise AssertionError("a missing grad was accepted")
        sd = named.gathered_state_dict()
        path = COMM.bcast(os.path.join(tempfile.gettempdir(),
                                       f"fastlr-named-{os.getpid()}.npz"), root=0)
        named.save(path)
        if RANK == 0:
            assert [g["param_names"] for g in sd["param_groups"]] == [NAMES[:2], NAMES[2:]]
            assert "snapshot_of" not in sd
            single = fastlr.Adam([{"params": {n: np.zeros(s) for n, s in
                                              zip(NAMES[:2], SHAPES)}, "lr": 0.02},
                                  {"params": {NAMES[2]: np.zeros(SHAPES[2])}}], lr=0.01)
            single.load_state_dict(sd)
            assert single.steps == 4
        other_names = ["fc.w", "fc.bias", "out.weight"]
        _, renamed = build(other_names, seed=3)
        try:
            renamed.load(path)
        except ValueError as e:
            assert "missing from the checkpoint: 'fc.w'" in str(e), str(e)
        else:
            raise AssertionError("other names were accepted")
        assert renamed.steps == 0
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            renamed.load(path, strict=False)
        assert renamed.steps == 4 and any("by position" in str(w.message) for w in caught)
        _, same = build(seed=4)
        same.load(path)
        assert same.steps == 4
        COMM.Barrier()
        if RANK == 0:
            os.unlink(path)
    except Exception:
        error = traceback.format_exc()
    failed = COMM.allreduce(int(error is not None), op=MPI.SUM)
    if error is not None:
        print(f"rank {RANK}: FAILED\n{error}", flush=True)
    if RANK == 0 and not failed:
        print(f"NAMED PASSED ranks {N}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

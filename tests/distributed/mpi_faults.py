"""A small training run under MPI in which rank 1 fails, for tests/distributed/test_faults.py:

    mpirun -n 3 python tests/distributed/mpi_faults.py MODE DIR [--fail-after K] [--steps N]
                                                        [--timeout T] [--resume]

Adam on a 1000-element model; every rank passes the same grads g(step) (so the mean grad,
and the run, do not depend on the number of ranks); the gathered checkpoint DIR/ckpt.npz
is saved after every second step (after DIR/params-<step>.npy, so a complete checkpoint
always has its params). MODE says what rank 1 does after step K, instead of
step K + 1: "raise" (an uncaught RuntimeError), "kill" (SIGKILL to itself), "hang" (sleeps),
or "none" (nothing). With --resume the run first loads DIR/ckpt.npz (saved on any number
of ranks) and goes on from its step. Rank 0 writes the final params to DIR/final.npy.
"""

import argparse
import os
import signal
import sys
import time

import numpy as np
from mpi4py import MPI

import fastlr
from fastlr import distributed

SIZE = 1000


def initial_params():
    return np.random.default_rng(1).standard_normal(SIZE)


def grad(step):
    return np.random.default_rng([7, step]).standard_normal(SIZE) * 0.1


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["none", "raise", "kill", "hang"])
    parser.add_argument("dir")
    parser.add_argument("--fail-after", type=int, default=5)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    comm = MPI.COMM_WORLD
    flat, (w,) = fastlr.flat_buffer([(SIZE,)], np.float64)
    flat[:] = initial_params()
    opt = distributed.ShardedOptimizer("Adam", [w], comm, lr=0.01, timeout=args.timeout)
    ckpt = os.path.join(args.dir, "ckpt.npz")
    if args.resume:
        opt.load(ckpt)
        flat[:] = np.load(os.path.join(args.dir, f"params-{opt.steps}.npy"))
    while opt.steps < args.steps:
        step = opt.steps + 1
        if comm.rank == 1 and step == args.fail_after + 1:
            print(f"rank 1: injecting '{args.mode}' before step {step}", flush=True)
            if args.mode == "raise":
                raise RuntimeError("injected failure")
            if args.mode == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if args.mode == "hang":
                time.sleep(3600)
        opt.step([grad(step)])
        if step % 2 == 0:
            # the params of this step first: a complete checkpoint of step k implies them
            if comm.rank == 0:
                np.save(os.path.join(args.dir, f"params-{step}.npy"), flat)
            opt.save(ckpt)
    if comm.rank == 0:
        np.save(os.path.join(args.dir, "final.npy"), flat)
        print(f"done: {opt.steps} steps on {comm.size} ranks", flush=True)


if __name__ == "__main__":
    sys.exit(main())

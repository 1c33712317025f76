"""Step time of fastlr.distributed.ShardedOptimizer against the number of ranks, split into
communication and update (asv cannot start MPI jobs, so this is a script):

    mpirun -n 1 python benchmarks/mpi_step.py
    mpirun -n 2 python benchmarks/mpi_step.py          (as root: --allow-run-as-root)

Adam, float32, one OpenMP thread per rank; sizes 1M and 16M parameters; the median of
``--repeat`` steps after a warm-up. Prints one line per size from rank 0.
"""

import argparse

import numpy as np
from mpi4py import MPI

import fastlr
from fastlr import distributed


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[1 << 20, 1 << 24])
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    if rank == 0:
        print(f"{'params':>10} {'ranks':>5} {'step ms':>8} {'reduce-scatter':>15} "
              f"{'update':>8} {'all-gather':>11} {'other':>7}  (ms, median)")
    for n in args.sizes:
        flat, views = fastlr.flat_buffer([(n,)], np.float32)
        flat[:] = np.random.default_rng(0).standard_normal(n)
        opt = distributed.ShardedOptimizer(fastlr.Adam, views, comm, lr=1e-4, n_threads=1)
        grad = np.random.default_rng(rank + 1).normal(0, 1e-2, n).astype(np.float32)
        rows = []
        for i in range(args.repeat + 2):
            comm.Barrier()
            t0 = MPI.Wtime()
            opt.step(grad)
            total = MPI.Wtime() - t0
            if i >= 2:
                t = opt.timings
                rows.append((total, t["reduce_scatter"], t["update"], t["all_gather"],
                             total - t["reduce_scatter"] - t["update"] - t["all_gather"]))
        med = np.median(np.array(rows), axis=0) * 1e3
        if rank == 0:
            print(f"{n:>10} {size:>5} {med[0]:8.2f} {med[1]:15.2f} {med[2]:8.2f} "
                  f"{med[3]:11.2f} {med[4]:7.2f}")


if __name__ == "__main__":
    main()

"""Step time of fastlr.distributed.ShardedOptimizer against the number of ranks, split into
communication and update (asv cannot start MPI jobs, so this is a script):

    mpirun -n 1 python benchmarks/mpi_step.py
    mpirun -n 2 python benchmarks/mpi_step.py          (as root: --allow-run-as-root)

Adam, float32, one OpenMP thread per rank; sizes 1M and 16M parameters; the median of
``--repeat`` steps after a warm-up. Prints one line per size from rank 0.

Across hosts (the network-namespace test bed, root on Linux; each host's link shaped to
the rate given):

    python tests/distributed/netns_hosts.py --hosts 2 --rate 1gbit --tcp-links 2 -- \
        python benchmarks/mpi_step.py --link-gbit 1

``--link-gbit`` adds the bandwidth bound: the bytes one rank sends per step (its
reduce-scatter sends, in bfloat16 with ``--grad-comm bfloat16``, plus an all-gather's
(n - 1)/n of the params, in bfloat16 with ``--param-comm bfloat16``, as a ring or direct
exchange needs) at the link rate, and
communication time over that bound.
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
    parser.add_argument("--grad-comm", choices=["none", "bfloat16"], default="none",
                        help="the precision the grads travel in (ShardedOptimizer grad_comm)")
    parser.add_argument("--param-comm", choices=["none", "bfloat16"], default="none",
                        help="the precision the updated params travel in (ShardedOptimizer "
                             "param_comm: master weights, a 16-bit all-gather)")
    parser.add_argument("--link-gbit", type=float, default=None,
                        help="each host's link rate, to print the bandwidth bound")
    args = parser.parse_args()
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    if rank == 0:
        bound = f" {'bound':>7} {'comm/bound':>10}" if args.link_gbit else ""
        print(f"{'params':>10} {'ranks':>5} {'step ms':>8} {'reduce-scatter':>15} "
              f"{'update':>8} {'all-gather':>11} {'other':>7}{bound}  (ms, median)")
    for n in args.sizes:
        flat, views = fastlr.flat_buffer([(n,)], np.float32)
        flat[:] = np.random.default_rng(0).standard_normal(n)
        opt = distributed.ShardedOptimizer(
            fastlr.Adam, views, comm, lr=1e-4, n_threads=1,
            grad_comm=None if args.grad_comm == "none" else args.grad_comm,
            param_comm=None if args.param_comm == "none" else args.param_comm)
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
        extra = ""
        if args.link_gbit:
            counts, _ = distributed.shard_bounds(n, size)
            grad_bytes = 2 if args.grad_comm == "bfloat16" else 4
            param_bytes = 2 if args.param_comm == "bfloat16" else 4
            sent = ((sum(counts) - counts[rank]) * grad_bytes
                    + (size - 1) / size * n * param_bytes)
            bound = sent * 8 / (args.link_gbit * 1e9) * 1e3
            extra = f" {bound:7.2f} {(med[1] + med[3]) / bound:10.2f}" if bound else ""
        if rank == 0:
            print(f"{n:>10} {size:>5} {med[0]:8.2f} {med[1]:15.2f} {med[2]:8.2f} "
                  f"{med[3]:11.2f} {med[4]:7.2f}{extra}")


if __name__ == "__main__":
    main()

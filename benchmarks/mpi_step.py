"""Step time of fastlr.distributed.ShardedOptimizer against the number of ranks, split into
communication and update (asv cannot start MPI jobs, so this is a script):

    mpirun -n 1 python benchmarks/mpi_step.py
    mpirun -n 2 python benchmarks/mpi_step.py          (as root: --allow-run-as-root)

Adam, float32, one OpenMP thread per rank; sizes 1M and 16M parameters; the median of
``--repeat`` steps after a warm-up. Prints one line per size from rank 0.

Across hosts (the network-namespace test bed, root on Linux; each host's link shaped to
the rate given, each host on its own CPUs where there is one per rank, TCP's congestion
control set to reno: with BBR the step varied far more; see the bed's docstring):

    python tests/distributed/netns_hosts.py --hosts 2 --rate 1gbit --tcp-links 2 \
        --congestion reno -- python benchmarks/mpi_step.py --link-gbit 1

``--link-gbit`` adds the bandwidth bound: the bytes one rank sends per step (its
reduce-scatter sends, in bfloat16 with ``--grad-comm bfloat16``, plus an all-gather's
(n - 1)/n of the params, in bfloat16 with ``--param-comm bfloat16``, as a ring or direct
exchange needs) at the link rate, and
communication time over that bound.

``--overlap`` steps two optimizers side by side, one step each in turn: the plain one and
one with ``overlap=True`` (``--bucket-size`` elements per bucket). It prints the plain row,
then the overlapped one: its step; the control, the same overlapped exchange with the
updates skipped ("exchange alone", a third optimizer in the same rotation); its update;
and the fraction of the plain update hidden behind the messages,
``1 - median(overlapped step - exchange alone) / plain update`` (with the quartiles of
those differences, their spread; the difference taken
within each rotation). That difference carries the link's noise between rotations; the
last line does not: the overlapped optimizer's update time with none of the messages its
rank watched pending (``timings["exposed"]``), on the rank where that is the largest
fraction, and the fraction of the update that ran while messages were pending. Whether
those messages moved meanwhile (over TCP, Open MPI moves data only inside MPI calls,
beyond what the sockets buffer) only the paired difference above shows.

``--compare16`` steps two plain optimizers side by side instead, one step each in turn:
float32 communication and 16-bit communication (``grad_comm`` and ``param_comm``
"bfloat16"). It prints both rows, each against its own bound, then the 16-bit
communication time over the float32 one: the ratio of the medians, and the median and
quartiles of the ratios paired within each rotation.
"""

import argparse

import numpy as np
from mpi4py import MPI

import fastlr
from fastlr import distributed


class _NoUpdate:
    """A windowed step that updates nothing (the --overlap control)."""

    def run(self, lo, hi):
        pass

    def end(self):
        pass

    def abandon(self):
        pass


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[1 << 20, 1 << 24])
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--grad-comm", choices=["none", "bfloat16"], default="none",
                        help="the precision the grads travel in (ShardedOptimizer grad_comm)")
    parser.add_argument("--param-comm", choices=["none", "bfloat16"], default="none",
                        help="the precision the updated params travel in (ShardedOptimizer "
                             "param_comm: master weights, a 16-bit all-gather)")
    parser.add_argument("--overlap", action="store_true",
                        help="also step an overlap=True optimizer, side by side")
    parser.add_argument("--compare16", action="store_true",
                        help="step a float32-communication and a 16-bit-communication "
                             "optimizer side by side and print the ratio")
    parser.add_argument("--bucket-size", type=int, default=1 << 20,
                        help="elements per bucket of the overlapped optimizer")
    parser.add_argument("--link-gbit", type=float, default=None,
                        help="each host's link rate, to print the bandwidth bound")
    args = parser.parse_args()
    if args.overlap and args.compare16:
        parser.error("--overlap and --compare16 each step their own rotation; pick one")
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    if rank == 0:
        bound = f" {'bound':>7} {'comm/bound':>10}" if args.link_gbit else ""
        print(f"{'params':>10} {'ranks':>5} {'step ms':>8} {'reduce-scatter':>15} "
              f"{'update':>8} {'all-gather':>11} {'other':>7}{bound}  (ms, median)")
    grad_comm = None if args.grad_comm == "none" else args.grad_comm
    param_comm = None if args.param_comm == "none" else args.param_comm
    if args.compare16:
        # (grad_comm, param_comm, overlap) of each optimizer in the rotation
        configs = [(None, None, False), ("bfloat16", "bfloat16", False)]
    elif args.overlap:
        configs = [(grad_comm, param_comm, overlap) for overlap in (False, True, True)]
    else:
        configs = [(grad_comm, param_comm, False)]
    for n in args.sizes:
        opts = []
        for g_comm, p_comm, overlap in configs:
            flat, views = fastlr.flat_buffer([(n,)], np.float32)
            flat[:] = np.random.default_rng(0).standard_normal(n)
            opts.append(distributed.ShardedOptimizer(
                fastlr.Adam, views, comm, lr=1e-4, n_threads=1, grad_comm=g_comm,
                param_comm=p_comm, overlap=overlap, bucket_size=args.bucket_size))
        if args.overlap:
            # the control: the overlapped exchange alone (its updates skipped)
            opts[2].optimizer._windowed_step = lambda grads: _NoUpdate()
        grad = np.random.default_rng(rank + 1).normal(0, 1e-2, n).astype(np.float32)
        rows = [[] for _ in opts]
        for i in range(args.repeat + 2):
            for opt, out in zip(opts, rows):
                comm.Barrier()
                t0 = MPI.Wtime()
                opt.step(grad)
                total = MPI.Wtime() - t0
                if i >= 2:
                    out.append((total, dict(opt.timings)))
        counts, _ = distributed.shard_bounds(n, size)

        def link_bound(g_comm, p_comm):
            """ms to send this rank's bytes of one step at the link rate (None: no rate)."""
            if not args.link_gbit:
                return None
            grad_bytes = 2 if g_comm == "bfloat16" else 4
            param_bytes = 2 if p_comm == "bfloat16" else 4
            sent = ((sum(counts) - counts[rank]) * grad_bytes
                    + (size - 1) / size * n * param_bytes)
            return sent * 8 / (args.link_gbit * 1e9) * 1e3

        def plain_row(out, g_comm, p_comm, label=""):
            """Print the medians of a plain optimizer's steps; return them (ms)."""
            plain = np.median(np.array([(total, t["reduce_scatter"], t["update"],
                                         t["all_gather"], total - t["reduce_scatter"]
                                         - t["update"] - t["all_gather"])
                                        for total, t in out]), axis=0) * 1e3
            bound = link_bound(g_comm, p_comm)
            extra = f" {bound:7.2f} {(plain[1] + plain[3]) / bound:10.2f}" if bound else ""
            if rank == 0:
                print(f"{n:>10} {size:>5} {plain[0]:8.2f} {plain[1]:15.2f} {plain[2]:8.2f} "
                      f"{plain[3]:11.2f} {plain[4]:7.2f}{extra}{label}")
            return plain

        plain = plain_row(rows[0], *configs[0][:2],
                          "  float32 comm" if args.compare16 else "")
        bound = link_bound(*configs[0][:2])
        if args.compare16:
            half = plain_row(rows[1], *configs[1][:2], "  16-bit comm")
            ratios = np.array([(h["reduce_scatter"] + h["all_gather"])
                               / (f["reduce_scatter"] + f["all_gather"])
                               for (_, f), (_, h) in zip(rows[0], rows[1])])
            q1, med, q3 = np.percentile(ratios, [25, 50, 75])
            of_medians = (half[1] + half[3]) / (plain[1] + plain[3])
            if rank == 0:
                print(f"{'':>10} 16-bit / float32 communication: {of_medians:.3f} "
                      f"(medians); paired median {med:.3f}, "
                      f"quartiles {q1:.3f} / {q3:.3f} over {len(ratios)} rotations")
        if args.overlap:
            over, control = (np.median(np.array([(total, t.get("wait", 0.0), t["update"],
                                                  t.get("exposed", 0.0))
                                                 for total, t in out]), axis=0) * 1e3
                             for out in rows[1:])
            # paired within each rotation (the link's slow drifts cancel), then the median
            diffs = np.array([o[0] - c[0] for o, c in zip(rows[1], rows[2])]) * 1e3
            exposed = np.median(diffs)
            hidden = 1.0 - exposed / plain[2] if plain[2] else float("nan")
            extra = f"  step/bound {over[0] / bound:5.2f}" if bound else ""
            q1, q3 = np.percentile(diffs, [25, 75])
            if rank == 0:
                print(f"{'overlap':>10} {size:>5} {over[0]:8.2f}  exchange alone "
                      f"{control[0]:8.2f}  update {over[2]:7.2f}  hidden {hidden:5.2f}  "
                      f"({opts[1].n_buckets} buckets){extra}")
                # the spread of the paired differences: how well "hidden" is known
                print(f"{'':>10} overlapped - exchange alone: median {exposed:.1f} ms, "
                      f"quartiles {q1:.1f} / {q3:.1f} ms over {len(diffs)} rotations")
            # within each step, without the link's noise: the update windows that ended
            # with none of the messages a rank watched pending (timings "exposed"); the
            # rest ran while messages were pending; the worst rank
            worst = comm.allreduce((over[3] / over[2] if over[2] else 0.0, rank, over[3],
                                    over[2]), op=MPI.MAX)
            if rank == 0:
                print(f"{'':>10} update with no message pending (worst rank {worst[1]}): "
                      f"{worst[2]:.1f} of {worst[3]:.1f} ms; ran while messages were "
                      f"pending {1.0 - worst[0]:.2f}")


if __name__ == "__main__":
    main()

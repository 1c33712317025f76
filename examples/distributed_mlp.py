"""Train fastlr's demo MLP data-parallel over MPI, the optimizer state sharded (ZeRO-1).

    mpirun -n 2 python examples/distributed_mlp.py        (as root: add --allow-run-as-root)

Every rank takes its half (third, ...) of each batch, computes the grads of its part in
NumPy, and fastlr.distributed.ShardedOptimizer averages them (reduce-scatter), updates its
shard of the params with AdamW and a warmup-cosine schedule, and all-gathers the result.
Rank 0 also trains the same model in one process on the full batches and prints both loss
curves: they agree to rounding (the mean of the ranks' grads is the full-batch grad).
With ``--grad-comm bfloat16`` the grads travel rounded to bfloat16 (half the bytes of the
reduce-scatter for float32), with ``--param-comm bfloat16`` the updated params do (each
rank keeps master weights; the model's params are their bfloat16 roundings): the curves
then differ by that rounding's effect.
"""

import argparse

import numpy as np
from mpi4py import MPI

import fastlr
from fastlr import distributed, schedules
from fastlr._tools.cli import init_params, load_data, loss_and_grads


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=96)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--grad-comm", choices=["none", "bfloat16"], default="none",
                        help="the precision the grads travel in")
    parser.add_argument("--param-comm", choices=["none", "bfloat16"], default="none",
                        help="the precision the updated params travel in (master weights)")
    args = parser.parse_args()
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    if args.batch_size % size:
        raise SystemExit(f"--batch-size must be a multiple of the {size} ranks")
    x, y, _, _, name = load_data(seed=0)
    shapes = [p.shape for p in init_params(x.shape[1], args.hidden, 10, 0, np.float64)]
    steps = args.epochs * (len(y) // args.batch_size)
    lr = schedules.warmup_cosine(3e-3, warmup_steps=steps // 10, total_steps=steps)

    def model():
        flat, params = fastlr.flat_buffer(shapes, np.float64)
        for p, p0 in zip(params, init_params(x.shape[1], args.hidden, 10, 0, np.float64)):
            p[...] = p0
        return flat, params

    _, params = model()
    opt = distributed.ShardedOptimizer(fastlr.AdamW, params, comm, lr=lr, weight_decay=1e-4,
                                       max_grad_norm=5.0,
                                       grad_comm=None if args.grad_comm == "none"
                                       else args.grad_comm,
                                       param_comm=None if args.param_comm == "none"
                                       else args.param_comm)
    if rank == 0:
        _, single_params = model()
        single = fastlr.AdamW(single_params, lr=lr, weight_decay=1e-4, max_grad_norm=5.0)
        print(f"{name}: {len(y)} samples, {size} ranks, {steps} steps; each rank keeps "
              f"{opt.state_elements} of {2 * sum(int(np.prod(s)) for s in shapes)} state "
              f"elements")
        print(f"{'step':>5} {'loss (data parallel)':>22} {'loss (one process)':>20}")
    rng = np.random.default_rng(1)
    step = 0
    loss = single_loss = float("nan")
    for _ in range(args.epochs):
        order = rng.permutation(len(y))
        for start in range(0, len(y) - args.batch_size + 1, args.batch_size):
            batch = order[start:start + args.batch_size]
            mine = np.array_split(batch, size)[rank]          # this rank's part
            loss, grads = loss_and_grads(params, x[mine], y[mine])
            loss = comm.allreduce(loss) / size               # the full batch's mean loss
            opt.step(grads)
            if rank == 0:
                single_loss, single_grads = loss_and_grads(single_params, x[batch], y[batch])
                single.step(single_grads)
                if step % 10 == 0 or step == steps - 1:
                    print(f"{step:5d} {loss:22.12f} {single_loss:20.12f}")
            step += 1
    if rank == 0:
        gap = max(float(np.max(np.abs(a - b))) for a, b in zip(params, single_params))
        print(f"final loss: data parallel {loss:.6f}, one process {single_loss:.6f} "
              f"(relative difference {abs(loss - single_loss) / abs(single_loss):.2e})")
        print(f"largest difference between the two models' params: {gap:.2e}")


if __name__ == "__main__":
    main()

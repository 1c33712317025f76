"""The ``fastlr`` command line.

``fastlr demo`` trains a small NumPy model twice from the same initial weights with AdamW
under a warmup-cosine schedule -- once with fastlr's compiled step, once with the same
optimizer driven by ``fastlr.reference`` -- and prints the loss curves side by side and
what one optimizer step costs with each.
"""

import argparse
import sys
import time

import numpy as np


def _softmax_regression_problem(n_samples, n_features, n_classes, seed):
    """A synthetic classification problem with a learnable linear structure."""
    rng = np.random.default_rng(seed)
    true_w = rng.standard_normal((n_features, n_classes))
    x = rng.standard_normal((n_samples, n_features))
    logits = x @ true_w + 0.5 * rng.standard_normal((n_samples, n_classes))
    y = np.argmax(logits, axis=1)
    return x, y


def _loss_and_grads(params, x, y):
    """Cross-entropy of a one-hidden-layer MLP and its gradients (forward and backward in
    NumPy)."""
    w1, b1, w2, b2 = params
    h_pre = x @ w1 + b1
    h = np.maximum(h_pre, 0.0)
    logits = h @ w2 + b2
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    n = x.shape[0]
    loss = -np.mean(np.log(p[np.arange(n), y] + 1e-12))
    d_logits = p
    d_logits[np.arange(n), y] -= 1.0
    d_logits /= n
    g_w2 = h.T @ d_logits
    g_b2 = d_logits.sum(axis=0)
    d_h = (d_logits @ w2.T) * (h_pre > 0)
    g_w1 = x.T @ d_h
    g_b1 = d_h.sum(axis=0)
    return float(loss), [g_w1, g_b1, g_w2, g_b2]


def _train(use_reference, init, x, y, steps, lr, dtype):
    import fastlr
    from fastlr import schedules

    params = [p.astype(dtype, copy=True) for p in init]
    schedule = schedules.warmup_cosine(lr, warmup_steps=max(1, steps // 10), total_steps=steps)
    opt = fastlr.AdamW(params, lr=schedule, weight_decay=1e-4)
    step = opt.step_reference if use_reference else opt.step
    losses, step_time = [], 0.0
    for _ in range(steps):
        loss, grads = _loss_and_grads(params, x, y)
        grads = [g.astype(dtype, copy=False) for g in grads]
        losses.append(loss)
        start = time.perf_counter()
        step(grads)
        step_time += time.perf_counter() - start
    accuracy = float(np.mean(np.argmax(np.maximum(x @ params[0] + params[1], 0) @ params[2]
                                       + params[3], axis=1) == y))
    return losses, accuracy, step_time / steps, params


def demo(steps=200, hidden=256, lr=3e-3, seed=0, dtype="float32", out=None):
    """Train the same MLP with fastlr.AdamW's compiled step and its fastlr.reference twin."""
    out = sys.stdout if out is None else out

    x, y = _softmax_regression_problem(2048, 64, 10, seed)
    rng = np.random.default_rng(seed + 1)
    init = [rng.standard_normal((64, hidden)) * np.sqrt(2 / 64), np.zeros(hidden),
            rng.standard_normal((hidden, 10)) * np.sqrt(1 / hidden), np.zeros(10)]
    n_params = sum(p.size for p in init)
    print(f"fastlr demo: a {64}-{hidden}-10 MLP ({n_params} {dtype} parameters), "
          f"{steps} full-batch AdamW steps (warmup-cosine lr) on 2048 synthetic samples",
          file=out)
    fast = _train(False, init, x, y, steps, lr, dtype)
    slow = _train(True, init, x, y, steps, lr, dtype)
    print(f"{'step':>6} {'loss (fastlr)':>15} {'loss (reference)':>17}", file=out)
    for t in sorted({0, steps // 4, steps // 2, 3 * steps // 4, steps - 1}):
        print(f"{t + 1:>6} {fast[0][t]:>15.6f} {slow[0][t]:>17.6f}", file=out)
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(fast[3], slow[3]))
    print(f"training accuracy: fastlr {fast[1]:.3f}, reference {slow[1]:.3f}; "
          f"max |param difference| {diff:.2e}", file=out)
    print(f"optimizer step (4 arrays): fastlr {fast[2] * 1e6:.1f} us, reference "
          f"{slow[2] * 1e6:.1f} us -> {slow[2] / fast[2]:.1f}x faster", file=out)
    return {"fastlr": fast, "reference": slow, "max_param_diff": diff}


def main(argv=None):
    import fastlr

    parser = argparse.ArgumentParser(prog="fastlr", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"fastlr {fastlr.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p_demo = sub.add_parser("demo", help="train a small NumPy MLP with fastlr and with the "
                                         "NumPy reference, and compare")
    p_demo.add_argument("--steps", type=int, default=200, help="optimizer steps (default 200)")
    p_demo.add_argument("--hidden", type=int, default=256, help="hidden units (default 256)")
    p_demo.add_argument("--lr", type=float, default=3e-3, help="learning rate (default 3e-3)")
    p_demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p_demo.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    args = parser.parse_args(argv)
    if args.command == "demo":
        if args.steps < 1 or args.hidden < 1:
            parser.error("--steps and --hidden must be >= 1")
        demo(steps=args.steps, hidden=args.hidden, lr=args.lr, seed=args.seed,
             dtype=args.dtype)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

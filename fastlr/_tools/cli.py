"""The ``fastlr`` command line: ``fastlr demo``, ``fastlr schedule``, ``fastlr bench``.

``fastlr demo`` trains a small NumPy MLP on scikit-learn's bundled handwritten digits (a
synthetic dataset when scikit-learn is missing): a learning-rate range test picks the lr,
then the same model is trained twice from the same weights -- with fastlr's compiled
optimizer step and with the same optimizer driven by ``fastlr.reference`` -- and both runs
are compared: losses, held-out accuracy, and what one optimizer step costs with each.

``fastlr schedule NAME --arg value ...`` prints or draws any built-in schedule.
``fastlr bench`` times the optimizer steps against NumPy and torch (see fastlr._tools.bench).
"""

import argparse
import ast
import inspect
import os
import sys
import time

import numpy as np

OPTIMIZERS = ("adamw", "adam", "sgd", "rmsprop")
SCHEDULES = ("warmup_cosine", "one_cycle", "cosine", "constant")


# ---------------------------------------------------------------------------------------
# data and model: a one-hidden-layer MLP, forward and backward in NumPy
# ---------------------------------------------------------------------------------------
def load_data(seed, out=None):
    """(X_train, y_train, X_test, y_test, description): digits when scikit-learn is
    installed, else a synthetic 10-class problem of the same shape."""
    rng = np.random.default_rng(seed)
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        load_digits = None
    if load_digits is not None:
        digits = load_digits()
        x, y = digits.data.astype(np.float64), digits.target.astype(np.int64)
        name = "scikit-learn's handwritten digits (8x8 images, 10 classes)"
    else:
        centers = rng.standard_normal((10, 64)) * 2.0
        y = rng.integers(0, 10, 1797)
        x = centers[y] + rng.standard_normal((1797, 64)) * 3.0
        name = ("a synthetic 10-class problem (scikit-learn is not installed: "
                "pip install scikit-learn for the digits dataset)")
    order = rng.permutation(len(y))
    x, y = x[order], y[order]
    n_test = len(y) // 5
    mean, std = x[n_test:].mean(axis=0), x[n_test:].std(axis=0) + 1e-6
    x = (x - mean) / std
    return x[n_test:], y[n_test:], x[:n_test], y[:n_test], name


def init_params(n_in, hidden, n_out, seed, dtype):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((n_in, hidden)) * np.sqrt(2.0 / n_in)).astype(dtype),
            np.zeros(hidden, dtype=dtype),
            (rng.standard_normal((hidden, n_out)) * np.sqrt(1.0 / hidden)).astype(dtype),
            np.zeros(n_out, dtype=dtype)]


def loss_and_grads(params, x, y):
    """Mean cross-entropy of the MLP on (x, y) and its gradients, in params' dtype."""
    w1, b1, w2, b2 = params
    dtype = w1.dtype
    x = x.astype(dtype, copy=False)
    h_pre = x @ w1 + b1
    h = np.maximum(h_pre, 0)
    logits = h @ w2 + b2
    logits = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    n = len(y)
    loss = float(-np.mean(np.log(p[np.arange(n), y] + 1e-12)))
    d = p
    d[np.arange(n), y] -= 1
    d /= n
    d_h = (d @ w2.T) * (h_pre > 0)
    grads = [x.T @ d_h, d_h.sum(axis=0), h.T @ d, d.sum(axis=0)]
    return loss, [g.astype(dtype, copy=False) for g in grads]


def accuracy(params, x, y):
    w1, b1, w2, b2 = params
    return float(np.mean(np.argmax(np.maximum(x @ w1 + b1, 0) @ w2 + b2, axis=1) == y))


def make_optimizer(name, params, lr, weight_decay=1e-4):
    import fastlr

    if name == "adamw":
        return fastlr.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "adam":
        return fastlr.Adam(params, lr=lr)
    if name == "sgd":
        return fastlr.SGD(params, lr=lr, momentum=0.9, nesterov=True,
                          weight_decay=weight_decay)
    return fastlr.RMSprop(params, lr=lr, weight_decay=weight_decay)


def make_schedule(name, peak, total_steps):
    from fastlr import schedules

    if name == "warmup_cosine":
        return schedules.warmup_cosine(peak, warmup_steps=max(1, total_steps // 10),
                                       total_steps=total_steps)
    if name == "one_cycle":
        return schedules.one_cycle(peak, total_steps)
    if name == "cosine":
        return schedules.cosine(peak, total_steps)
    return schedules.constant(peak)


class _Progress:
    """A one-line progress display on a terminal, a line per epoch otherwise."""

    def __init__(self, out, total, label):
        self.out, self.total, self.label = out, total, label
        self.tty = hasattr(out, "isatty") and out.isatty()

    def update(self, done, text):
        if self.tty:
            width = 24
            filled = int(width * done / self.total)
            self.out.write(f"\r  {self.label} [{'#' * filled}{'.' * (width - filled)}] "
                           f"{done}/{self.total} {text}   ")
            self.out.flush()
        elif done == self.total or done % max(1, self.total // 5) == 0:
            print(f"  {self.label} epoch {done}/{self.total}: {text}", file=self.out)

    def close(self):
        if self.tty:
            self.out.write("\n")


def train(opt, use_reference, params, data, epochs, batch_size, seed, out, label):
    """Mini-batch training; returns (per-step losses, seconds spent in optimizer steps)."""
    x, y = data
    rng = np.random.default_rng(seed)
    step = opt.step_reference if use_reference else opt.step
    losses, step_time = [], 0.0
    progress = _Progress(out, epochs, label)
    for epoch in range(epochs):
        order = rng.permutation(len(y))
        for start in range(0, len(y), batch_size):
            idx = order[start:start + batch_size]
            loss, grads = loss_and_grads(params, x[idx], y[idx])
            losses.append(loss)
            t0 = time.perf_counter()
            step(grads)
            step_time += time.perf_counter() - t0
        progress.update(epoch + 1, f"loss {np.mean(losses[-(len(y) // batch_size):]):.4f}")
    progress.close()
    return np.array(losses), step_time


def demo(optimizer="adamw", schedule="warmup_cosine", epochs=30, batch_size=64, hidden=128,
         seed=0, out_dir=None, plots=True, dtype="float32", out=None):
    """The main job: range test, then training with fastlr and with its reference twin."""
    from fastlr.lr_finder import find_lr

    out = sys.stdout if out is None else out
    started = time.perf_counter()
    x_tr, y_tr, x_te, y_te, name = load_data(seed, out)
    dtype = np.dtype(dtype)
    x_tr, x_te = x_tr.astype(dtype), x_te.astype(dtype)
    init = init_params(x_tr.shape[1], hidden, 10, seed + 1, dtype)
    n_params = sum(p.size for p in init)
    steps_per_epoch = -(-len(y_tr) // batch_size)
    total_steps = epochs * steps_per_epoch
    print(f"fastlr demo: {name}", file=out)
    print(f"  {len(y_tr)} training / {len(y_te)} held-out samples; a {x_tr.shape[1]}-{hidden}-10 "
          f"MLP ({n_params} {dtype.name} parameters); {optimizer}, {epochs} epochs of batch "
          f"{batch_size} ({total_steps} steps)", file=out)

    # 1. learning-rate range test on a copy of the initial weights
    probe = [p.copy() for p in init]
    opt = make_optimizer(optimizer, probe, lr=1e-3)
    rng = np.random.default_rng(seed + 2)

    def batch_loss(step):
        idx = rng.integers(0, len(y_tr), batch_size)
        return loss_and_grads(probe, x_tr[idx], y_tr[idx])

    found = find_lr(opt, batch_loss, start_lr=1e-5, end_lr=10.0, num_steps=100)
    lr = float(min(found.suggested_lr, 1.0))
    print(f"  learning-rate range test: {len(found.lrs)} steps from {found.lrs[0]:.0e} to "
          f"{found.lrs[-1]:.1e}; suggestion {lr:.2e} (valley)", file=out)

    # 2. the same training twice: compiled step and the reference twin
    sched = make_schedule(schedule, lr, total_steps)
    runs = {}
    for label, use_reference in (("fastlr", False), ("reference", True)):
        params = [p.copy() for p in init]
        opt = make_optimizer(optimizer, params, lr=sched)
        losses, step_time = train(opt, use_reference, params, (x_tr, y_tr), epochs,
                                  batch_size, seed + 3, out, f"{label:9s}")
        runs[label] = dict(losses=losses, step_us=step_time / total_steps * 1e6,
                           train_acc=accuracy(params, x_tr, y_tr),
                           test_acc=accuracy(params, x_te, y_te), params=params)
    fast, ref = runs["fastlr"], runs["reference"]
    diff = float(np.max(np.abs(fast["losses"] - ref["losses"])))
    print(f"  final training loss: fastlr {fast['losses'][-1]:.5f}, reference "
          f"{ref['losses'][-1]:.5f} (largest difference over all steps {diff:.1e})", file=out)
    print(f"  held-out accuracy:   fastlr {fast['test_acc']:.4f}, reference "
          f"{ref['test_acc']:.4f}", file=out)
    print(f"  optimizer step:      fastlr {fast['step_us']:.1f} us, reference "
          f"{ref['step_us']:.1f} us -> {ref['step_us'] / fast['step_us']:.1f}x faster", file=out)

    # 3. pictures
    written = []
    if plots:
        try:
            from fastlr import plot

            plot.require_matplotlib()
        except ImportError as error:
            print(f"  no pictures: {error}", file=out)
        else:
            if out_dir is None:
                out_dir = os.path.join(os.getcwd(),
                                       time.strftime("fastlr-demo-%Y%m%d-%H%M%S"))
            os.makedirs(out_dir, exist_ok=True)
            path = os.path.join(out_dir, "schedule.png")
            plot.schedule({repr(sched): sched}, total_steps + 1, path=path,
                          title=f"learning rate ({schedule})")
            written.append(path)
            path = os.path.join(out_dir, "lr_finder.png")
            found.plot(path=path)
            written.append(path)
            path = os.path.join(out_dir, "loss.png")
            plot.curves({"fastlr": fast["losses"], "reference": ref["losses"]}, log=True,
                        path=path, title="training loss per step")
            written.append(path)
            print(f"  pictures: {', '.join(written)}", file=out)
    print(f"  total time {time.perf_counter() - started:.1f} s", file=out)
    return dict(runs=runs, lr=lr, finder=found, schedule=sched, max_loss_diff=diff,
                pictures=written)


# ---------------------------------------------------------------------------------------
# fastlr schedule NAME --arg value ...
# ---------------------------------------------------------------------------------------
def _schedule_from_args(name, pairs):
    from fastlr import schedules

    if name not in schedules.__all__ or name in ("Schedule", "as_schedule", "from_callable"):
        raise SystemExit(f"fastlr schedule: unknown schedule {name!r}; one of: "
                         f"{', '.join(n for n in schedules.__all__ if n[0].islower() and n not in ('as_schedule', 'from_callable'))}")
    fn = getattr(schedules, name)
    kwargs, i = {}, 0
    while i < len(pairs):
        key = pairs[i]
        if not key.startswith("--") or i + 1 >= len(pairs):
            raise SystemExit(f"fastlr schedule: expected --name value pairs, got {pairs[i:]}")
        text = pairs[i + 1]
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        kwargs[key[2:].replace("-", "_")] = value
        i += 2
    try:
        inspect.signature(fn).bind(**kwargs)
    except TypeError as error:
        raise SystemExit(f"fastlr schedule {name}: {error}; signature: {name}"
                         f"{inspect.signature(fn)}") from None
    try:
        return fn(**kwargs)
    except (TypeError, ValueError) as error:
        # the message already names the callable (fastlr.schedules.<name>: ...)
        raise SystemExit(str(error)) from None


def main(argv=None):
    import fastlr

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:
        from fastlr._tools.bench import main as bench_main

        return bench_main(argv[1:])
    parser = argparse.ArgumentParser(prog="fastlr", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"fastlr {fastlr.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="train a NumPy MLP with fastlr and with its reference "
                                    "twin, after a learning-rate range test")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="adamw")
    p.add_argument("--schedule", choices=SCHEDULES, default="warmup_cosine")
    p.add_argument("--epochs", type=int, default=30, help="default 30")
    p.add_argument("--batch-size", type=int, default=64, help="default 64")
    p.add_argument("--hidden", type=int, default=128, help="hidden units (default 128)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--out", default=None,
                   help="directory for the pictures (default: a new fastlr-demo-* folder)")
    p.add_argument("--no-plots", action="store_true", help="draw no pictures")
    sub.add_parser("bench", help="time fastlr against the NumPy reference, in-place NumPy and "
                                 "torch, with rooflines (fastlr bench --help)")
    s = sub.add_parser("schedule", help="print or draw a built-in schedule, e.g. "
                                        "fastlr schedule cosine --init 0.1 --total_steps 100")
    s.add_argument("name", help="a constructor of fastlr.schedules, e.g. warmup_cosine")
    s.add_argument("--steps", type=int, default=None, help="steps to show (default: enough "
                                                           "to see the end)")
    s.add_argument("--out", default=None, help="write a PNG here")
    s.add_argument("--print", action="store_true", help="print step and value")
    s.add_argument("--log", action="store_true", help="log-scaled lr axis")
    args, rest = parser.parse_known_args(argv)
    if args.command == "demo":
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        if args.epochs < 1 or args.batch_size < 1 or args.hidden < 1:
            parser.error("--epochs, --batch-size and --hidden must be >= 1")
        demo(optimizer=args.optimizer, schedule=args.schedule, epochs=args.epochs,
             batch_size=args.batch_size, hidden=args.hidden, seed=args.seed,
             out_dir=args.out, plots=not args.no_plots, dtype=args.dtype)
        return 0
    sched = _schedule_from_args(args.name, rest)
    steps = args.steps
    if steps is None:
        lengths = [v for k, v in sched._kwargs.items() if "steps" in k or k == "period"]
        lengths += [a for a in sched._args if isinstance(a, int) and not isinstance(a, bool)]
        steps = int(1.2 * max(lengths)) + 1 if lengths else 100
    if args.out is None or args.print:
        for t, v in zip(range(steps), sched.values(np.arange(steps))):
            print(f"{t}\t{v:.10g}")
    if args.out is not None:
        from fastlr import plot

        try:
            plot.schedule({repr(sched): sched}, steps, log=args.log, path=args.out)
        except ImportError as error:
            raise SystemExit(f"fastlr schedule: {error}") from None
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

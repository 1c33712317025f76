"""The ``fastlr`` command line: ``fastlr demo``, ``fastlr schedule``, ``fastlr bench``,
``fastlr compare``.

``fastlr demo`` trains a small NumPy MLP on scikit-learn's bundled handwritten digits (a
synthetic dataset when scikit-learn is missing): a learning-rate range test picks the lr,
then the same model is trained twice from the same weights -- with fastlr's compiled
optimizer step and with the same optimizer driven by ``fastlr.reference`` -- and both runs
are compared: losses, held-out accuracy, and what one optimizer step costs with each.

``fastlr schedule NAME --arg value ...`` prints or draws any built-in schedule.
``fastlr bench`` times the optimizer steps against NumPy and torch (see fastlr._tools.bench).
``fastlr compare`` is the learning-rate sensitivity study (see fastlr._tools.compare).
"""

import argparse
import ast
import inspect
import os
import sys
import time

import numpy as np

from fastlr import _specs

#: The demo's optimizers: every row of the optimizer table, by lower-case class name.
_ROWS = {o.cls.lower(): o for o in _specs.OPTIMIZERS.values()}
OPTIMIZERS = tuple(_ROWS)
#: Options the demo gives an optimizer besides the lr (the others keep the class defaults).
DEMO_OPTIONS = {"sgd": {"momentum": 0.9, "nesterov": True, "weight_decay": 1e-4},
                "adamw": {"weight_decay": 1e-4}, "rmsprop": {"weight_decay": 1e-4}}
SCHEDULES = ("warmup_cosine", "one_cycle", "cosine", "constant")

# The top-level help, plain text (the module docstring above is reST, for the API docs).
DESCRIPTION = """\
fastlr's command line: optimizer steps and learning-rate schedules as Cython kernels on
NumPy arrays.

commands:
  demo      train a NumPy MLP with fastlr and with its pure-NumPy twin, after a
            learning-rate range test, and compare them (fastlr demo --help)
  schedule  print or draw a built-in learning-rate schedule (fastlr schedule --help
            lists them; fastlr schedule NAME --help shows one's arguments)
  bench     time fastlr's steps against NumPy and torch, with rooflines
            (fastlr bench --help)
  compare   the learning-rate sensitivity study: which optimizer forgives a bad lr
            (fastlr compare --help)

examples:
  fastlr demo --optimizer adam --epochs 10
  fastlr schedule cosine --init 0.1 --total_steps 100 --out cosine.png
  fastlr bench --quick
  fastlr compare --png compare.png
"""


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
    return (*split_standardize(x, y, rng), name)


def split_standardize(x, y, rng):
    """(X_train, y_train, X_test, y_test): the samples shuffled by ``rng``, a fifth held
    out, standardized by the training part's mean and std."""
    order = rng.permutation(len(y))
    x, y = x[order], y[order]
    n_test = len(y) // 5
    mean, std = x[n_test:].mean(axis=0), x[n_test:].std(axis=0) + 1e-6
    x = (x - mean) / std
    return x[n_test:], y[n_test:], x[:n_test], y[:n_test]


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


def make_optimizer(name, params, lr):
    """The demo's optimizer ``name`` (a lower-case class name of the optimizer table) with
    ``lr`` and DEMO_OPTIONS."""
    import fastlr

    cls = getattr(fastlr, _ROWS[name].cls)
    if "lr" not in cls._schedulable and callable(lr):
        lr = float(lr(0))       # Rprop: lr only sets where the step sizes start
    return cls(params, lr=lr, **DEMO_OPTIONS.get(name, {}))


class TooFewSteps(ValueError):
    """The demo's run is too short for its schedule (raised before any training)."""


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
    steps_per_epoch = -(-len(y) // batch_size)
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
        progress.update(epoch + 1, f"mean minibatch loss "
                                   f"{np.mean(losses[-steps_per_epoch:]):.4f}")
    progress.close()
    return np.array(losses), step_time


def _picture_folder(out_dir):
    """(fastlr.plot, the folder, created, "") for the demo's pictures, or (None, None, why)
    when matplotlib is missing; an OSError when the folder cannot be created."""
    try:
        from fastlr import plot

        plot.require_matplotlib()
    except ImportError as error:
        return None, None, f"no pictures: {error}"
    if out_dir is None:
        out_dir = os.path.join(os.getcwd(), time.strftime("fastlr-demo-%Y%m%d-%H%M%S"))
    os.makedirs(out_dir, exist_ok=True)       # before training: a bad folder fails at once
    return plot, out_dir, ""


def demo(optimizer="adamw", schedule="warmup_cosine", epochs=30, batch_size=64, hidden=128,
         seed=0, out_dir=None, plots=True, dtype="float32", out=None):
    """The main job: range test, then training with fastlr and with its reference twin."""
    from fastlr.lr_finder import find_lr

    out = sys.stdout if out is None else out
    started = time.perf_counter()
    plot, out_dir, no_pictures = _picture_folder(out_dir) if plots else (None, None, "")
    x_tr, y_tr, x_te, y_te, name = load_data(seed, out)
    dtype = np.dtype(dtype)
    x_tr, x_te = x_tr.astype(dtype), x_te.astype(dtype)
    init = init_params(x_tr.shape[1], hidden, 10, seed + 1, dtype)
    n_params = sum(p.size for p in init)
    steps_per_epoch = -(-len(y_tr) // batch_size)
    total_steps = epochs * steps_per_epoch
    try:                                      # before the range test: fail at once
        make_schedule(schedule, 1.0, total_steps)
    except ValueError as error:
        raise TooFewSteps(f"--schedule {schedule} cannot run {total_steps} step"
                          f"{'s' if total_steps > 1 else ''} ({epochs} epoch"
                          f"{'s' if epochs > 1 else ''} of {steps_per_epoch} batch"
                          f"{'es' if steps_per_epoch > 1 else ''} of {batch_size} out of "
                          f"{len(y_tr)} samples): use more --epochs or a smaller "
                          f"--batch-size ({error})") from None
    print(f"fastlr demo: {name}", file=out)
    print(f"  {len(y_tr)} training / {len(y_te)} held-out samples; a {x_tr.shape[1]}-{hidden}-10 "
          f"MLP ({n_params} {dtype.name} parameters); {optimizer}, {epochs} "
          f"epoch{'s' if epochs > 1 else ''} of batch "
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
                           train_loss=loss_and_grads(params, x_tr, y_tr)[0],
                           train_acc=accuracy(params, x_tr, y_tr),
                           test_acc=accuracy(params, x_te, y_te), params=params)
    fast, ref = runs["fastlr"], runs["reference"]
    diff = float(np.max(np.abs(fast["losses"] - ref["losses"])))
    print(f"  training-set loss after training (all {len(y_tr)} samples): fastlr "
          f"{fast['train_loss']:.5f}, reference {ref['train_loss']:.5f}", file=out)
    print(f"  minibatch losses:    fastlr and reference differ by at most {diff:.1e} over all "
          f"{total_steps} steps", file=out)
    print(f"  held-out accuracy:   fastlr {fast['test_acc']:.4f}, reference "
          f"{ref['test_acc']:.4f}", file=out)
    print(f"  optimizer step:      fastlr {fast['step_us']:.1f} us, reference "
          f"{ref['step_us']:.1f} us -> {ref['step_us'] / fast['step_us']:.1f}x faster", file=out)

    # 3. pictures
    written = []
    if no_pictures:
        print(f"  {no_pictures}", file=out)
    if plot is not None:
        path = os.path.join(out_dir, "schedule.png")
        plot.schedule({plot.label(sched): sched}, total_steps + 1, path=path,
                      title=f"learning rate ({schedule})")
        written.append(path)
        path = os.path.join(out_dir, "lr_finder.png")
        found.plot(path=path)
        written.append(path)
        path = os.path.join(out_dir, "loss.png")
        plot.curves({"fastlr": fast["losses"], "reference (NumPy twin)": ref["losses"]},
                    log=True, path=path, xlabel="step",
                    title="minibatch training loss at each step")
        written.append(path)
        print(f"  pictures: {', '.join(written)}", file=out)
    print(f"  total time {time.perf_counter() - started:.1f} s", file=out)
    return dict(runs=runs, lr=lr, finder=found, schedule=sched, max_loss_diff=diff,
                pictures=written)


# ---------------------------------------------------------------------------------------
# fastlr schedule NAME --arg value ...
# ---------------------------------------------------------------------------------------
def schedule_names():
    """The constructors of fastlr.schedules that ``fastlr schedule`` offers."""
    from fastlr import schedules

    return [n for n in schedules.__all__ if n[0].islower()
            and n not in ("as_schedule", "from_callable")]


def _plain(text):
    """reST inline markup (``x``, :func:`x`) as plain text, for --help."""
    import re

    text = re.sub(r":\w+:`~?([^`]+)`", r"\1", text)
    return text.replace("``", "")


def _first_paragraph(fn):
    doc = inspect.getdoc(fn) or ""
    return _plain(" ".join(doc.split("\n\n")[0].split()))


_SCHEDULE_OPS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.USub, ast.UAdd)


def _schedule_expression(tree):
    """Whether ``tree`` (an ast.Expression) only calls fastlr.schedules constructors on
    literals and combines them with + - * / (nothing else is evaluated)."""
    names = set(schedule_names())
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            if node.id not in names or not isinstance(node.ctx, ast.Load):
                return False
        elif isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name):
                return False
        elif not isinstance(node, (ast.Expression, ast.Constant, ast.List, ast.Tuple,
                                   ast.Dict, ast.keyword, ast.BinOp, ast.UnaryOp,
                                   ast.Load, *_SCHEDULE_OPS)):
            return False
    return True


def _literal(text):
    """A command-line value: a Python literal (0.1, 100, [10, 20], True, None), a schedule
    expression of fastlr.schedules constructors (``cosine(0.1, 100) * 0.5``,
    ``[cosine(0.1, 100), 0.001]``) or else the text itself (a str)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        pass
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError:
        return text
    if not _schedule_expression(tree):
        return text
    from fastlr import schedules

    namespace = {"__builtins__": {}}
    namespace.update((n, getattr(schedules, n)) for n in schedule_names())
    try:
        return eval(compile(tree, "<fastlr schedule argument>", "eval"), namespace)
    except (TypeError, ValueError) as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _schedules_help():
    import textwrap

    lines = ["usage: fastlr schedule NAME [--ARG VALUE ...] [--steps N] [--out FILE.png] "
             "[--print] [--log]", "",
             "Print (step, lr) or draw a built-in schedule of fastlr.schedules. Each argument "
             "of the", "schedule is an option (--total_steps 100 or --total-steps 100); "
             "fastlr schedule NAME --help", "shows NAME's arguments and defaults.", "",
             "schedules:"]
    for name in schedule_names():
        from fastlr import schedules

        sig = str(inspect.signature(getattr(schedules, name)))
        lines.append(f"  {name}{sig}")
        doc = _first_paragraph(getattr(schedules, name))
        lines += textwrap.wrap(doc, 88, initial_indent="      ", subsequent_indent="      ")
    lines += ["", "example:", "  fastlr schedule one_cycle --peak 0.1 --total_steps 1000 "
              "--out one_cycle.png"]
    return "\n".join(lines) + "\n"


def _schedule_parser(name, fn):
    """An argparse parser for schedule ``name``: one option per argument of ``fn``, with its
    default in the help, and the drawing options."""
    p = argparse.ArgumentParser(prog=f"fastlr schedule {name}", allow_abbrev=False,
                                description=f"{name}{inspect.signature(fn)}: "
                                            f"{_first_paragraph(fn)}",
                                epilog="Values are Python literals: 0.1, 100, [10, 20], True, "
                                       "'cos'; a schedule argument also takes an expression of "
                                       "schedules, e.g. 'cosine(0.1, 100) * 0.5'.")
    group = p.add_argument_group(f"arguments of {name}")
    for param in inspect.signature(fn).parameters.values():
        flags = [f"--{param.name}"]
        if "_" in param.name:
            flags.append(f"--{param.name.replace('_', '-')}")
        required = param.default is inspect.Parameter.empty
        if param.kind is inspect.Parameter.VAR_POSITIONAL:
            what = "required: a list of schedules or numbers, e.g. '[cosine(0.1, 100), 0.01]'"
        else:
            what = "required" if required else f"default {param.default!r}"
        group.add_argument(*flags, dest=param.name, type=_literal, default=argparse.SUPPRESS,
                           metavar="VALUE", help=what)
    out = p.add_argument_group("output")
    out.add_argument("--steps", type=int, default=None,
                     help="steps to show (default: enough to see the end, several cycles of "
                          "a cyclic schedule)")
    out.add_argument("--out", default=None, help="write a picture here (PNG, SVG, PDF by the "
                                                 "extension)")
    out.add_argument("--print", action="store_true",
                     help="print step and value (the default without --out)")
    out.add_argument("--log", action="store_true", help="log-scaled lr axis")
    return p


def _schedule_main(argv):
    """``fastlr schedule ...``: returns the exit status (SystemExit with a one-line message
    on an error)."""
    from fastlr import plot, schedules

    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(_schedules_help())
        return 0
    name = argv[0]
    if name not in schedule_names():
        raise SystemExit(f"fastlr schedule: unknown schedule {name!r}; one of: "
                         f"{', '.join(schedule_names())} (fastlr schedule --help)")
    fn = getattr(schedules, name)
    parser = _schedule_parser(name, fn)
    args = vars(parser.parse_args(argv[1:]))
    steps, path, show, log = (args.pop(k) for k in ("steps", "out", "print", "log"))
    positional = []
    for param in inspect.signature(fn).parameters.values():
        if param.kind is inspect.Parameter.VAR_POSITIONAL:
            if param.name not in args:
                raise SystemExit(f"fastlr schedule {name}: --{param.name} is required (a "
                                 f"list, e.g. '[cosine(0.1, 100), 0.01]')")
            positional = args.pop(param.name)
            if not isinstance(positional, (list, tuple)):
                positional = [positional]
    try:
        inspect.signature(fn).bind(*positional, **args)
    except TypeError as error:
        raise SystemExit(f"fastlr schedule {name}: {error}; see fastlr schedule {name} "
                         f"--help") from None
    try:
        sched = fn(*positional, **args)
    except (TypeError, ValueError) as error:
        # the message already names the callable (fastlr.schedules.<name>: ...)
        raise SystemExit(str(error)) from None
    if steps is None:
        steps = plot.default_steps(sched)
    if steps < 1:
        raise SystemExit(f"fastlr schedule: --steps must be >= 1, got {steps}")
    if path is not None:
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise SystemExit(f"fastlr schedule: cannot write {path}: no folder {folder}")
    if path is None or show:
        for t, v in zip(range(steps), sched.values(np.arange(steps))):
            print(f"{t}\t{v:.10g}")
    if path is not None:
        try:
            plot.schedule({plot.label(sched): sched}, steps, log=log, path=path)
        except ImportError as error:
            raise SystemExit(f"fastlr schedule: {error}") from None
        except (OSError, ValueError) as error:    # unwritable, unknown format
            raise SystemExit(f"fastlr schedule: cannot write {path}: "
                             f"{getattr(error, 'strerror', None) or error}") from None
        print(f"wrote {path}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------------------
# fastlr
# ---------------------------------------------------------------------------------------
def _parser():
    import fastlr

    parser = argparse.ArgumentParser(prog="fastlr", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"fastlr {fastlr.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{demo,schedule,bench,compare}")
    p = sub.add_parser("demo", help="train a NumPy MLP with fastlr and with its reference "
                                    "twin, after a learning-rate range test",
                       description="Train a small NumPy MLP on scikit-learn's handwritten "
                                   "digits twice from the same weights, with fastlr's "
                                   "compiled step and with its pure-NumPy twin, after a "
                                   "learning-rate range test picks the lr; compare losses, "
                                   "accuracy and step time, and draw pictures.")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="adamw",
                   help="one of the optimizer table's rows (default adamw)")
    p.add_argument("--schedule", choices=SCHEDULES, default="warmup_cosine",
                   help="default warmup_cosine")
    p.add_argument("--epochs", type=int, default=30, help="default 30")
    p.add_argument("--batch-size", type=int, default=64, help="default 64")
    p.add_argument("--hidden", type=int, default=128, help="hidden units (default 128)")
    p.add_argument("--seed", type=int, default=0, help="default 0")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                   help="default float32")
    p.add_argument("--out", default=None,
                   help="folder for the pictures (default: a new fastlr-demo-* folder)")
    p.add_argument("--no-plots", action="store_true", help="draw no pictures")
    sub.add_parser("schedule", add_help=False,
                   help="print or draw a built-in schedule (fastlr schedule --help lists "
                        "them)")
    sub.add_parser("bench", add_help=False,
                   help="time fastlr against the NumPy reference, in-place NumPy and torch, "
                        "with rooflines (fastlr bench --help)")
    sub.add_parser("compare", add_help=False,
                   help="the learning-rate sensitivity study of AdamW, schedule-free, "
                        "Prodigy, D-Adapt Adam and SGD (fastlr compare --help)")
    return parser


def main(argv=None):
    """The ``fastlr`` command; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = _parser()
    if not argv:
        parser.print_help()
        return 0
    if argv[0] == "bench":
        from fastlr._tools.bench import main as bench_main

        return bench_main(argv[1:])
    if argv[0] == "schedule":
        return _schedule_main(argv[1:])
    if argv[0] == "compare":
        from fastlr._tools.compare import main as compare_main

        return compare_main(argv[1:])
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.batch_size < 1 or args.hidden < 1:
        parser.error("--epochs, --batch-size and --hidden must be >= 1")
    if args.seed < 0:
        parser.error(f"--seed must be >= 0, got {args.seed}")
    try:
        demo(optimizer=args.optimizer, schedule=args.schedule, epochs=args.epochs,
             batch_size=args.batch_size, hidden=args.hidden, seed=args.seed,
             out_dir=args.out, plots=not args.no_plots, dtype=args.dtype)
    except OSError as error:       # the picture folder: not creatable, not writable
        where = f" {error.filename}" if error.filename else ""
        raise SystemExit(f"fastlr demo: cannot write{where}: "
                         f"{error.strerror or error}") from None
    except TooFewSteps as error:
        parser.error(str(error))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

#!/usr/bin/env python3
"""Performance guard: instructions per optimizer step on small arrays, counted by valgrind.

Small-array steps are dominated by Python-level overhead (argument checks, list walks,
dispatch), which a "harmless" fix can multiply without any test noticing. Timings on a
shared CI machine are too noisy to catch that; instruction counts from
``valgrind --tool=callgrind`` are deterministic whatever the load. For each case below the
guard runs a small driver (this file, ``--case NAME --steps N``) under callgrind: after
set-up and a warm-up it runs N steps, then 2N steps, each phase ended by a marker call on
which callgrind dumps its counters (``--dump-before``), and takes

    instructions per step = (Ir(2N-step phase) - Ir(N-step phase)) / N

so the interpreter start, imports, set-up, warm-up and the marker's own cost drop out, and
torch's import (over a minute under valgrind) is paid once. Budgets live in
``.ci/perf_budgets.json``; a case fails when it costs more than ``budget * (1 + tolerance)``
and is reported (passing) as much cheaper below ``budget * (1 - tolerance)``.

    python .ci/perfguard.py                 # check (exit 1 when a case is over budget)
    python .ci/perfguard.py --update        # re-record every budget from this checkout
    python .ci/perfguard.py --only adam_1x1k_f32,sklearn_adam_mlp_f64   # a subset
    python .ci/perfguard.py --case adam_1x1k_f32 --steps 10            # the driver itself

Every driver runs with PYTHONHASHSEED=0, OMP_NUM_THREADS=1, PYTHONDONTWRITEBYTECODE=1,
fastlr.set_num_threads(1) and FASTLR_CPU=baseline (fastlr's SSE2 core loops, which every
x86-64 CPU runs, so the count does not depend on whether CI's CPU has AVX2). Only public
APIs are used. Needs valgrind (``apt-get install -y valgrind``); without it the guard exits
0 with a message, or 2 when CI=true. Standard library only, plus fastlr/numpy (and torch,
optional) inside the drivers.
"""

import argparse
import concurrent.futures
import datetime
import gc
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BUDGETS = os.path.join(HERE, "perf_budgets.json")
# 15%: far above the noise (a rerun gives the same count, exactly; another memory layout
# moves a case by up to ~1.2%, NumPy 2.2 -> 2.4 by ~1%) and above what another build of the
# same CPython gives (pyenv's 3.11.7 vs Debian's PGO/LTO 3.11.2: up to 12% fewer), so a
# refresh is needed only when CI's Python changes; yet, on the recorded interpreter, a step
# that gets 15% costlier fails (the 4x regression of the past by far).
DEFAULT_TOLERANCE = 0.15
WARMUP = 5                  # steps before the counted ones (lazy state, first-call caches)
SKIP_EXIT = 77              # a driver's exit status when an optional dependency is missing

# Fixed for every driver run: the counts must not depend on the caller's environment.
DRIVER_ENV = {
    "PYTHONHASHSEED": "0",
    "PYTHONDONTWRITEBYTECODE": "1",   # write nothing into the checkout or site-packages
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "FASTLR_CPU": "baseline",
    "ATEN_CPU_CAPABILITY": "default",  # torch's unvectorized ATen kernels, on any CPU
}


# ---- the cases ---------------------------------------------------------------------------
# Each builder sets things up and returns a zero-argument callable doing one step. N is the
# number of steps of the first counted phase (the second does 2N); N * per-step cost is 5-40
# M instructions, so one stray event (a GC pass, a malloc arena) moves the result little.

def _threads():
    import fastlr

    fastlr.set_num_threads(1)


def _case_adam_1x1k_f32():
    import numpy as np

    import fastlr

    _threads()
    params = [np.linspace(-1, 1, 1024, dtype=np.float32)]
    grads = [np.linspace(0.5, -0.5, 1024, dtype=np.float32)]
    opt = fastlr.Adam(params, lr=1e-3)
    return lambda: opt.step(grads)


def _case_adam_200x100_f32():
    import numpy as np

    import fastlr

    _threads()
    params = [np.linspace(-1, 1, 100, dtype=np.float32) * (k + 1) for k in range(200)]
    grads = [np.linspace(0.5, -0.5, 100, dtype=np.float32) for _ in range(200)]
    opt = fastlr.Adam(params, lr=1e-3)
    return lambda: opt.step(grads)


def _case_kernels_adam_1k_f32():
    import numpy as np

    import fastlr
    from fastlr import kernels

    _threads()
    p = np.linspace(-1, 1, 1024, dtype=np.float32)
    g = np.linspace(0.5, -0.5, 1024, dtype=np.float32)
    state = kernels.make_state("adam", p)
    t = [0]

    def step():
        t[0] += 1
        fastlr.kernels.adam(p, g, **state, step=t[0], lr=1e-3)

    return step


def _case_sklearn_adam_mlp_f64():
    import numpy as np

    from fastlr.compat.sklearn import AdamOptimizer

    _threads()
    shapes = [(64, 128), (128, 10), (128,), (10,)]   # a 64-128-10 MLP: coefs_ + intercepts_
    params = [np.linspace(-1, 1, int(np.prod(s))).reshape(s) for s in shapes]
    grads = [np.linspace(0.5, -0.5, int(np.prod(s))).reshape(s) for s in shapes]
    opt = AdamOptimizer(params, learning_rate_init=1e-3)
    return lambda: opt.update_params(params, grads)


def _case_torch_adam_10x6k4_f32():
    try:
        import torch
    except ImportError:
        sys.exit(SKIP_EXIT)
    from fastlr.compat.torch import Adam

    _threads()
    torch.set_num_threads(1)
    params = [torch.nn.Parameter(torch.linspace(-1, 1, 6400) * (k + 1)) for k in range(10)]
    for p in params:
        p.grad = torch.linspace(0.5, -0.5, 6400)
    opt = Adam(params, lr=1e-3)
    return opt.step


# name -> (builder, N, needs, description). `needs`: an optional module whose absence
# skips the case.
CASES = {
    "adam_1x1k_f32": (_case_adam_1x1k_f32, 400, None,
                      "fastlr.Adam.step, 1 float32 array of 1024"),
    "adam_200x100_f32": (_case_adam_200x100_f32, 100, None,
                         "fastlr.Adam.step, 200 float32 arrays of 100"),
    "kernels_adam_1k_f32": (_case_kernels_adam_1k_f32, 400, None,
                            "fastlr.kernels.adam, 1024 float32 (validated call)"),
    "sklearn_adam_mlp_f64": (_case_sklearn_adam_mlp_f64, 100, None,
                             "compat.sklearn AdamOptimizer.update_params, 64-128-10 MLP f64"),
    "torch_adam_10x6k4_f32": (_case_torch_adam_10x6k4_f32, 20, "torch",
                              "compat.torch.Adam.step, 10 CPU float32 tensors of 6400"),
}


MARKER_FUNCTIONS = ("sched_get_priority_max", "__sched_get_priority_max")  # libc's names


def marker():
    """Mark a phase boundary: callgrind dumps its counters on entering the libc function
    behind ``os.sched_get_priority_max`` (--dump-before), which nothing else calls."""
    os.sched_get_priority_max(os.SCHED_OTHER)


def run_case(name, steps, warmup=WARMUP):
    """The driver: set ``name`` up, run ``warmup`` steps, then ``steps`` and ``2 * steps``
    counted steps, each phase closed by a marker."""
    step = CASES[name][0]()
    for _ in range(warmup):
        step()
    # The cyclic GC runs every 700 net allocations (gen0), every 10th of those on gen1 too,
    # and a full pass's cost grows with every object alive. Collecting now resets its
    # counters, and freezing moves everything set up so far out of its reach, so where the
    # collections fall in the counted phases, and what they cost, no longer depends on what
    # happened before (how many modules were imported, how long this file is).
    gc.collect()
    gc.freeze()
    marker()
    for _ in range(steps):
        step()
    marker()
    for _ in range(2 * steps):
        step()
    marker()
    gc.unfreeze()


# ---- measuring -----------------------------------------------------------------------------

_TOTAL = re.compile(r"^(?:totals|summary):\s+(\d+)", re.MULTILINE)
_PART = re.compile(r"^part:\s+(\d+)", re.MULTILINE)


def parse_callgrind_total(path):
    """Total ``Ir`` (instructions executed) from a callgrind output file: its ``totals:``
    line, or its ``summary:`` line (older valgrind writes both, or only one)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    found = _TOTAL.findall(text)
    if not found:
        raise ValueError(f"{path}: no 'totals:' or 'summary:' line (not a callgrind output "
                         f"file, or callgrind was killed before writing it)")
    return int(found[-1])


def marker_parts(out):
    """The Ir of each dump that a marker triggered, in order, from callgrind's files
    ``out.1``, ``out.2``, ... (one per --dump-before; ``out`` itself is the last part, up to
    the program's exit)."""
    parts = []
    for fn in os.listdir(os.path.dirname(out) or "."):
        path = os.path.join(os.path.dirname(out), fn)
        if not fn.startswith(os.path.basename(out) + "."):
            continue
        with open(path, encoding="utf-8", errors="replace") as f:
            head = f.read(4096)
        part = _PART.search(head)
        if "Trigger: --dump-before" in head and part:
            parts.append((int(part.group(1)), parse_callgrind_total(path)))
    return [ir for _, ir in sorted(parts)]


def per_step(parts, steps):
    """Instructions per step from the marker dumps [setup, N steps, 2N steps]: the
    difference of the two counted phases over N, so the marker's own cost cancels."""
    if len(parts) != 3:
        raise ValueError(f"expected 3 marker dumps (setup, N steps, 2N steps), got "
                         f"{len(parts)}: {parts}; did something else call "
                         f"{MARKER_FUNCTIONS[0]}?")
    _, short, long_ = parts
    if not 1.5 * short < long_ < 2.5 * short:
        raise ValueError(f"the 2N-step phase ({long_:,} Ir) is not about twice the N-step "
                         f"phase ({short:,} Ir): the phases are not comparable")
    return (long_ - short) / steps


def driver_env():
    env = dict(os.environ)
    env.update(DRIVER_ENV)
    return env


def valgrind_command(name, steps, out, log):
    return (["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
             f"--log-file={log}", "--dump-line=no"]
            + [f"--dump-before={fn}" for fn in MARKER_FUNCTIONS]
            + [sys.executable, os.path.abspath(__file__), "--case", name,
               "--steps", str(steps)])


def _callgrind(name, steps, workdir, timeout):
    """Run the driver for ``name`` under callgrind; returns its marker dumps' Ir (None when
    the case skipped itself)."""
    os.makedirs(os.path.join(workdir, name))
    out = os.path.join(workdir, name, "callgrind.out")
    log = os.path.join(workdir, name, "valgrind.log")
    proc = subprocess.run(valgrind_command(name, steps, out, log), env=driver_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout,
                          text=True)
    if proc.returncode == SKIP_EXIT:
        return None
    if proc.returncode != 0:
        try:
            with open(log, encoding="utf-8", errors="replace") as f:
                tail = f.read()[-3000:]
        except OSError:
            tail = ""
        raise RuntimeError(f"driver {name} --steps {steps} exited {proc.returncode}:\n"
                           f"{proc.stdout[-3000:]}{tail}")
    return marker_parts(out)


def measure(names, jobs=2, timeout=900, verbose=False):
    """{name: result}; result: ``per_step`` (float) and ``parts`` (the marker dumps' Ir),
    or ``skipped`` (a reason), or ``error`` (text)."""
    results = {n: {} for n in names}
    todo = []
    for n in names:
        needs = CASES[n][2]
        if needs and not _importable(needs):
            results[n] = {"skipped": f"{needs} not importable"}
        else:
            todo.append(n)
    # the slow run (torch's import takes a minute under valgrind) first, to overlap the rest
    todo.sort(key=lambda n: CASES[n][2] is None)
    with tempfile.TemporaryDirectory(prefix="fastlr-perfguard-") as workdir, \
            concurrent.futures.ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = {pool.submit(_callgrind, n, CASES[n][1], workdir, timeout): n for n in todo}
        for fut in concurrent.futures.as_completed(futures):
            n = futures[fut]
            try:
                parts = fut.result()
                if parts is None:
                    results[n] = {"skipped": f"{CASES[n][2]} not importable"}
                    continue
                results[n] = {"per_step": per_step(parts, CASES[n][1]), "parts": parts}
            except Exception as exc:  # noqa: BLE001 - reported per case
                results[n] = {"error": str(exc)}
                continue
            if verbose:
                print(f"  {n}: marker dumps Ir {', '.join(f'{p:,}' for p in parts)}",
                      flush=True)
    return results


def _importable(module):
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


# ---- budgets -------------------------------------------------------------------------------

def environment():
    """What the counts depend on: recorded with the budgets, printed with every check."""
    from importlib import metadata

    def version(dist):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    vg = None
    if shutil.which("valgrind"):
        vg = subprocess.run(["valgrind", "--version"], stdout=subprocess.PIPE, text=True,
                            check=False).stdout.strip()
    return {
        "machine": f"{platform.machine()} {cpu}".strip(),
        "os": platform.platform(terse=True),
        "python": platform.python_version(),
        "numpy": version("numpy"),
        "torch": version("torch"),
        "valgrind": vg,
        "fastlr_cpu": DRIVER_ENV["FASTLR_CPU"],
    }


def load_budgets(path=BUDGETS):
    """The budget file as a dict (``tolerance``, ``cases``); a clear error when absent."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise SystemExit(f"perfguard: no budget file {path}; record one with "
                         f"`python .ci/perfguard.py --update`") from None
    if not isinstance(data.get("cases"), dict):
        raise SystemExit(f"perfguard: {path} has no 'cases' object")
    return data


def compare(budgets, results, tolerance):
    """Rows (case, budget, measured, ratio, verdict, failed) from budgets and measurements.

    ``budgets``: {case: {"instructions_per_step": n, ...}}; ``results``: as measure()
    returns. Over ``budget * (1 + tolerance)``: failed. Under ``budget * (1 - tolerance)``:
    passes, with a note suggesting a refresh. No budget for a measured case: failed.
    """
    rows = []
    for name, r in results.items():
        entry = budgets.get(name)
        budget = entry.get("instructions_per_step") if isinstance(entry, dict) else None
        if "skipped" in r:
            rows.append((name, budget, None, None, f"skipped ({r['skipped']})", False))
            continue
        if "error" in r:
            rows.append((name, budget, None, None, f"ERROR: {r['error']}", True))
            continue
        measured = r["per_step"]
        if budget is None:
            rows.append((name, None, measured, None,
                         "NO BUDGET: record it with `python .ci/perfguard.py --update`", True))
            continue
        ratio = measured / budget
        if ratio > 1 + tolerance:
            verdict, failed = f"OVER BUDGET (> +{tolerance:.0%})", True
        elif ratio < 1 - tolerance:
            verdict, failed = "ok, much cheaper: refresh the budget (--update)", False
        else:
            verdict, failed = "ok", False
        rows.append((name, budget, measured, ratio, verdict, failed))
    return rows


def environment_notes(cases, env, keys=("python", "numpy", "torch", "valgrind", "machine")):
    """Lines naming what differs between the budgets' recording and this run, and budgets
    for cases that no longer exist."""
    notes = [f"budget for unknown case {n!r} (renamed or removed? --update drops nothing)"
             for n in cases if n not in CASES]
    for key in keys:
        then = sorted({str(e.get("recorded_with", {}).get(key)) for e in cases.values()
                       if isinstance(e, dict)})
        if env.get(key) is not None and then and then != [str(env.get(key))]:
            notes.append(f"budgets recorded with {key} {' / '.join(then)}, this run has "
                         f"{env.get(key)}: counts may differ (another CPython build: up to ~12%)")
    return notes


def format_table(rows):
    def num(x):
        return "-" if x is None else f"{x:,.0f}"

    head = ("case", "budget Ir/step", "measured Ir/step", "ratio", "verdict")
    body = [(name, num(b), num(m), "-" if q is None else f"{q:.3f}", v)
            for name, b, m, q, v, _ in rows]
    widths = [max(len(r[i]) for r in [head] + body) for i in range(4)]
    lines = []
    for r in [head] + body:
        lines.append("  ".join([r[0].ljust(widths[0])] + [r[i].rjust(widths[i])
                                                            for i in (1, 2, 3)] + [r[4]]))
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def update_budgets(results, path=BUDGETS, tolerance=None):
    """Write measured counts into the budget file (cases skipped now keep their entry)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        data = {}
    cases = data.get("cases", {})
    env = environment()
    env["recorded"] = datetime.date.today().isoformat()
    for name, r in results.items():
        if "per_step" in r:
            cases[name] = {"instructions_per_step": round(r["per_step"]),
                           "steps": CASES[name][1], "description": CASES[name][3],
                           "recorded_with": env}
    data = {
        "_comment": "Instructions per step (valgrind callgrind Ir) of fastlr's small-array "
                    "hot paths; checked by .ci/perfguard.py, refreshed with "
                    "`python .ci/perfguard.py --update`.",
        "tolerance": data.get("tolerance", DEFAULT_TOLERANCE) if tolerance is None
        else tolerance,
        "cases": {n: cases[n] for n in sorted(cases)},
    }
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    os.replace(path + ".tmp", path)


# ---- command line --------------------------------------------------------------------------

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--update", action="store_true",
                    help="measure and write the budgets (after an intended cost change)")
    ap.add_argument("--only", help="comma-separated case names (default: all)")
    ap.add_argument("--tolerance", type=float,
                    help="allowed relative excess (default: the budget file's, else 0.15)")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                    help="valgrind runs at once (default: 2)")
    ap.add_argument("--budgets", default=BUDGETS, help="budget file (default: %(default)s)")
    ap.add_argument("--list", action="store_true", help="list the cases")
    ap.add_argument("-v", "--verbose", action="store_true", help="print the raw Ir counts")
    ap.add_argument("--case", help=argparse.SUPPRESS)    # driver mode: run one case
    ap.add_argument("--steps", type=int, default=10, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.case:
        run_case(args.case, args.steps)
        return 0
    if args.list:
        for name, (_, n, needs, desc) in CASES.items():
            print(f"{name:24} N={n:<4} {desc}" + (f" (needs {needs})" if needs else ""))
        return 0

    names = list(CASES)
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in CASES]
        if unknown:
            ap.error(f"unknown case(s) {', '.join(unknown)}; known: {', '.join(CASES)}")

    if not shutil.which("valgrind"):
        msg = ("perfguard: valgrind is not installed, so instruction counts cannot be "
               "measured (Debian/Ubuntu: apt-get install -y valgrind)")
        if os.environ.get("CI", "").lower() == "true":
            print(msg + "; CI=true: failing", file=sys.stderr)
            return 2
        print(msg + "; skipping the performance guard")
        return 0

    budgets = None if args.update else load_budgets(args.budgets)
    tolerance = args.tolerance
    if tolerance is None:
        tolerance = (budgets or {}).get("tolerance", DEFAULT_TOLERANCE)

    env = environment()
    print(f"perfguard: {len(names)} cases under callgrind, {args.jobs} at a time (python "
          f"{env['python']}, numpy {env['numpy']}, torch {env['torch'] or 'not installed'}, "
          f"FASTLR_CPU={env['fastlr_cpu']})", flush=True)
    start = time.monotonic()
    results = measure(names, jobs=args.jobs, verbose=args.verbose)
    elapsed = time.monotonic() - start

    if args.update:
        failed = [n for n, r in results.items() if "error" in r]
        for n in failed:
            print(f"{n}: ERROR: {results[n]['error']}", file=sys.stderr)
        if failed:
            print("perfguard: budgets NOT written", file=sys.stderr)
            return 1
        update_budgets(results, args.budgets, args.tolerance)
        for n, r in results.items():
            print(f"  {n:24} " + (f"{r['per_step']:>12,.0f} Ir/step" if "per_step" in r
                                  else f"skipped ({r['skipped']}; old budget kept)"))
        print(f"perfguard: budgets written to {args.budgets} ({elapsed:.0f} s)")
        return 0

    rows = compare(budgets["cases"], results, tolerance)
    print(format_table(rows))
    for note in environment_notes(budgets["cases"], env):
        print("note: " + note)
    bad = [r for r in rows if r[5]]
    print(f"perfguard: {'FAILED' if bad else 'passed'} ({len(bad)} of {len(rows)} cases "
          f"failed; tolerance {tolerance:.0%}; {elapsed:.0f} s)")
    if bad:
        print("An intended cost increase? Refresh with `python .ci/perfguard.py --update` "
              "and commit .ci/perf_budgets.json with the change that explains it.")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

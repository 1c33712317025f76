"""Shared by the reliability tests (tests/reliability/test_*.py) and the scripts they run in
subprocesses: one call of every kernel, with every state buffer its options use, and a
runner for a repository checkout's Python in a fresh interpreter with a timeout."""

import os
import subprocess
import sys
import textwrap

import numpy as np

import fastlr

TESTS = os.path.dirname(os.path.abspath(__file__))
# the folder holding the fastlr under test (an in-place build's tree, or site-packages for
# an installed copy); subprocesses get it first on their path, never an unbuilt source tree
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(fastlr.__file__)))

# kernel -> (make_state options, call options); "step" and "mu_product" are added per call.
KERNEL_CALLS = {
    "sgd": (dict(momentum=0.9), dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)),
    "rmsprop": (dict(momentum=0.9, centered=True),
                dict(lr=0.01, momentum=0.9, weight_decay=0.01)),
    "adam": (dict(amsgrad=True), dict(lr=1e-3, weight_decay=0.01)),
    "adamw": (dict(amsgrad=True), dict(lr=1e-3)),
    "adagrad": ({}, dict(lr=0.01, lr_decay=1e-3)),
    "adadelta": ({}, dict(lr=1.0)),
    "adamax": ({}, dict(lr=2e-3)),
    "nadam": ({}, dict(lr=2e-3)),
    "radam": ({}, dict(lr=1e-3)),
    "lion": ({}, dict(lr=1e-4)),
}
NO_STEP = ("rmsprop", "adadelta", "lion")


def kernel_buffers(name, param):
    """The zero-filled state buffers kernel ``name`` needs for ``param``."""
    from fastlr import kernels

    return kernels.make_state(name, param, **KERNEL_CALLS[name][0])


def call_kernel(mod, name, param, grad, state, step, n_threads=None, mu_product=1.0, **over):
    """One call of kernel ``name`` of ``mod`` (fastlr.kernels or fastlr.reference). Returns
    what the kernel returns (NAdam: the new mu_product)."""
    kwargs = dict(KERNEL_CALLS[name][1])
    kwargs.update(over)
    if name not in NO_STEP:
        kwargs["step"] = step
    if name == "nadam":
        kwargs["mu_product"] = mu_product
    return getattr(mod, name)(param, grad, **state, n_threads=n_threads, **kwargs)


def run_every_kernel(mod, dtype, n, n_threads, steps=3, seed=0):
    """Every kernel for ``steps`` steps on fresh arrays of ``n`` elements; returns
    {name: [param, *state buffers]} (copies)."""
    out = {}
    rng = np.random.default_rng(seed)
    p0 = rng.standard_normal(n).astype(dtype)
    g = (rng.standard_normal(n) * 0.1).astype(dtype)
    for name in KERNEL_CALLS:
        p = p0.copy()
        state = kernel_buffers(name, p)
        mu = 1.0
        for t in range(1, steps + 1):
            r = call_kernel(mod, name, p, g, state, t, n_threads=n_threads, mu_product=mu)
            if name == "nadam":
                mu = r
        out[name] = [p.copy()] + [b.copy() for b in state.values()]
    return out


def run_script(source, timeout=120, env=None):
    """Run ``source`` in a fresh interpreter that imports this checkout's fastlr (and can
    import the helpers above), from a directory outside the tree. A hang fails the test
    (the process group is killed at ``timeout``) instead of hanging the suite."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = os.pathsep.join([ROOT, TESTS] + (
        [full_env["PYTHONPATH"]] if full_env.get("PYTHONPATH") else []))
    full_env.update(env or {})
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(source)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd="/", env=full_env,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        out, err = proc.communicate()
        raise AssertionError(f"the script hung (killed after {timeout} s)\nstdout:\n{out}\n"
                             f"stderr:\n{err}") from None
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{out}\nstderr:\n{err}"
    return out


def digest_every_kernel(mod, dtype, n, n_threads, steps=2, seed=0):
    """As run_every_kernel, but a sha256 of the results (no copies kept: large n is cheap)."""
    import hashlib

    h = hashlib.sha256()
    rng = np.random.default_rng(seed)
    p0 = rng.standard_normal(n).astype(dtype)
    g = (rng.standard_normal(n) * 0.1).astype(dtype)
    for name in KERNEL_CALLS:
        p = p0.copy()
        state = kernel_buffers(name, p)
        mu = 1.0
        for t in range(1, steps + 1):
            r = call_kernel(mod, name, p, g, state, t, n_threads=n_threads, mu_product=mu)
            if name == "nadam":
                mu = r
        for a in [p, *state.values()]:
            h.update(a.tobytes())
        del p, state
    return h.hexdigest()


FORK_N = (1 << 20) + 4099      # > 1M elements: threaded (PARALLEL_MIN_SIZE is 32768)


def fork_job(opt=None, grads=None):
    """The work a (forked or spawned) process does with fastlr: every kernel asked for two
    threads, an optimizer (AdamW with a schedule and clipping, threads from the module
    setting) and the functional clip_grad_norm, all on > 1M elements. Returns what it saw:
    a digest of every result, in_forked_child() and get_num_threads()."""
    import hashlib

    import fastlr
    from fastlr import _kernels, kernels, schedules

    h = hashlib.sha256()
    h.update(digest_every_kernel(kernels, np.float32, FORK_N, 2).encode())
    h.update(digest_every_kernel(kernels, np.float64, FORK_N, 2).encode())
    if opt is None:
        opt, grads = fork_optimizer()
    for g in grads:
        opt.step(g)
    for p in opt.params:
        h.update(p.tobytes())
    g = [x.copy() for x in grads[0]]
    norm = fastlr.clip_grad_norm(g, 1.0, n_threads=2)
    h.update(np.float64(norm).tobytes())
    for x in g:
        h.update(x.tobytes())
    return {"digest": h.hexdigest(), "forked": _kernels.in_forked_child(),
            "threads": fastlr.get_num_threads(), "steps": opt.steps, "pid": os.getpid()}


def fork_optimizer():
    import fastlr
    from fastlr import schedules

    rng = np.random.default_rng(3)
    params = [rng.standard_normal(FORK_N), rng.standard_normal((300, 201)).astype(np.float64)]
    grads = [[rng.standard_normal(p.shape) for p in params] for _ in range(3)]
    opt = fastlr.AdamW(params, lr=schedules.warmup_cosine(1e-2, warmup_steps=2, total_steps=9),
                       max_grad_norm=1.0)
    return opt, grads


def pool_job(_):
    """fork_job for a multiprocessing pool (importable by spawn/forkserver workers)."""
    return fork_job()

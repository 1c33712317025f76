"""``fastlr bench``: how fast fastlr's optimizer steps are on this machine, and how close to
its memory bandwidth.

The optimizers are the rows of fastlr's optimizer table (``fastlr._specs``: ``sgd``,
``rmsprop``, ``adam``, ``adamw``, ``adagrad``, ``adadelta``, ``adamax``, ``nadam``, ``radam``,
``lion``, each with its class defaults) and the SGD variants ``momentum`` and ``nesterov``.
For each optimizer, array size, dtype and thread count it times one in-place step of

* ``fastlr``     -- the compiled kernel (``fastlr.kernels``),
* ``reference``  -- its pure-NumPy twin (``fastlr.reference``: readable NumPy, temporaries),
* ``numpy``      -- a best-effort in-place NumPy step (``out=`` ufuncs into preallocated
  scratch: ``fastlr.reference.inplace``, the same update as the reference; SGD, RMSprop,
  Adam and AdamW have one, the other optimizers' rows show "-" and the report says so),
* ``torch``      -- ``torch.optim`` with ``fused=True`` (RMSprop has no fused CPU kernel:
  the faster of ``foreach=True`` and the for-loop), ``opt.step()`` as a user calls it,
  ``torch.set_num_threads(k)`` for the same k (when torch is installed and has the
  optimizer),
* ``roofline``   -- a plain C loop with the same memory streams and trivial arithmetic
  (``fastlr._tools.roofline``): the bandwidth this machine gives that access pattern, measured
  in the same run, at the same size and thread count.

The optimizers with their own classes (not rows of the table) have rows too, chosen with
``--optimizers`` (never in the default set): ``adafactor``, ``muon``, ``sparseadam`` (a
row-sparse grad touching 1% of the rows), ``lbfgs`` (one ``step(closure)`` of 20
iterations on a least-squares closure), ``schedulefreesgd``, ``schedulefreeadamw``,
``schedulefreeradam``, ``lamb``, ``lars``, ``prodigy``, and ``dadaptadam``,
``dadaptsgd``, ``dadaptadagrad`` once fastlr has those classes. For them ``fastlr`` is one
``opt.step(...)`` of the fastlr class on one param (square-ish 2-D for the matrix
optimizers), ``reference`` the same step by its NumPy twin, and the ``torch`` columns the
peer's ``opt.step()``: torch.optim's class, or the authors' package (``schedulefree``,
``prodigyopt``, ``dadaptation``) when it is installed; LAMB and LARS have no torch
counterpart. The roofline is the loop with the streams the step must move; Muon and LBFGS
are compute-bound (matrix products; closure calls and the two-loop recursion) and Prodigy
and D-Adaptation move more streams than any roofline loop: their GB/s and roofline cells
are "-", and the report says why. Prodigy and D-Adaptation run with ``growth_rate=1`` (the
estimate held at d0: repeated steps on one grad would grow it to inf; same work per step).

All of them are sampled round-robin in one process, so a noisy neighbour slows every
implementation alike; the table reports medians. GB/s counts the bytes a step must move
(reads + writes, no write-allocate: SGD 12, SGD+momentum/Nesterov/RMSprop 20, Adam/AdamW
28 bytes per float32 element, twice that for float64); "% roofline" is the kernel's GB/s
over the pattern loop's GB/s. In cache the pattern loop runs at cache bandwidth, which an
optimizer step (call overhead, divisions, square roots) does not reach: there the column
says how far from bandwidth-bound the step is, not how far from its own limit.

Buffers of every implementation (and of the roofline loop) are laid out alike
(``--layout staggered``, the default): streams a little more than n*itemsize apart. Same-
size arrays allocated one after the other can alias in the memory system and run at half
the bandwidth on some machines; ``--layout natural`` shows what plain ``np.zeros`` gives.

OpenMP: ``fastlr bench`` runs with ``OMP_WAIT_POLICY=passive`` so that the OpenMP threads
of fastlr and of torch (two runtimes in one process) sleep rather than spin between
parallel regions and steal each other's cores, and with ``GOMP_SPINCOUNT=10000`` (about
0.1 ms) so that a runtime's threads still wait briefly for its next region before they
sleep. Pure passive (``--spin-count 0``) makes every parallel region wake a sleeping
thread; on a 2-vCPU VM that costs 20-100 us, which buries fastlr's and torch's 2-thread
steps below ~1M elements under the hypervisor's wake-up latency. With 0.1 ms of spinning,
a runtime stops competing for the cores at most 0.1 ms after its last step, under 2 % of
a timed batch (>= 5 ms). libgomp (fastlr's and torch's own copy alike) reads these
variables when it loads, so ``main`` re-runs itself in a subprocess with them set when
they differ (a value already in the environment is kept). :func:`run` cannot do that: set
them before Python starts when calling it directly (the result records them under
``machine``).

glibc's malloc thresholds are pinned at the values a long-running process reaches (as in
the asv suite), so the reference's, NumPy's and torch's temporaries are recycled rather
than mmap'ed and page-faulted on every step: that only speeds up the baselines.

    fastlr bench               # ~1 minute: 5 optimizers x 1K..16M, float32, 1 and max threads
    fastlr bench --quick       # a few seconds
    fastlr bench --optimizers adam --sizes 64K,16M --dtypes float32,float64 --json out.json
"""

import argparse
import ctypes
import gc
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from typing import NamedTuple

import numpy as np

import fastlr
from fastlr import _specs, kernels, reference
from fastlr._core import dispatch as _dispatch
from fastlr._tools import roofline as _roofline
from fastlr.reference import inplace as _inplace
from fastlr.reference.inplace import (numpy_inplace_adam, numpy_inplace_adamw,  # noqa: F401
                                      numpy_inplace_rmsprop, numpy_inplace_sgd, numpy_scratch)

__all__ = [
    "run",
    "main",
    "format_report",
    "plot",
    "machine_info",
    "SPECS",
    "make_inputs",
    "clone_inputs",
    "fastlr_stepper",
    "reference_stepper",
    "numpy_stepper",
    "torch_stepper",
    "has_numpy",
    "pattern",
    "numpy_inplace_sgd",
    "numpy_inplace_rmsprop",
    "numpy_inplace_adam",
    "numpy_inplace_adamw",
    "numpy_scratch",
    "EXTRA",
    "extra_rows",
    "all_optimizers",
    "extra_shape",
    "make_extra_inputs",
    "clone_extra_inputs",
    "extra_fastlr_stepper",
    "extra_reference_stepper",
    "extra_peer_stepper",
    "peer_label",
]

#: The step number every timed call uses (> 1: momentum buffers take the steady-state path).
STEP = 10
SEED = 20240611

DEFAULT_OPTIMIZERS = ("sgd", "momentum", "rmsprop", "adam", "adamw")
DEFAULT_SIZES = (1 << 10, 1 << 16, 1 << 20, 1 << 24)
DEFAULT_DTYPES = ("float32",)
DEFAULT_REPEAT = 7
DEFAULT_MIN_SAMPLE = 5e-3
QUICK_OPTIMIZERS = ("sgd", "adam")
QUICK_SIZES = (1 << 10, 1 << 16)
QUICK_REPEAT = 3
QUICK_MIN_SAMPLE = 1e-3

IMPLS = ("fastlr", "reference", "numpy", "torch")
#: GOMP_SPINCOUNT set by ``main`` when the environment has none (see the module notes).
DEFAULT_SPIN_COUNT = 10000
TORCH_MODES = ("fused", "foreach", "for-loop")


class Spec(NamedTuple):
    """One benchmarked optimizer configuration."""

    kernel: str          # the function name in fastlr.kernels / fastlr.reference
    hyper: dict          # its keyword arguments (besides step, the scalars and n_threads)
    state: tuple         # state buffer names, in argument order
    uses_step: bool      # the kernel takes step=
    torch_class: str     # torch.optim class name ("" when torch has none)
    torch_kwargs: dict
    torch_fused: bool    # torch has a fused CPU kernel for it
    title: str
    scalars: dict = {}   # per-param scalar state the kernel takes (NAdam's mu_product)
    torch_state: dict = {}   # state buffer name -> torch's state key, where they differ


#: torch.optim classes with a fused CPU implementation (torch 2.13).
TORCH_FUSED_CPU = ("SGD", "Adam", "AdamW", "Adagrad")

#: Rows besides the table's one per optimizer, and the table rows' bench settings that
#: differ from the class defaults: name -> (class, hyperparameters, title).
VARIANTS = {
    "sgd": ("SGD", {"lr": 1e-2}, "SGD"),
    "momentum": ("SGD", {"lr": 1e-2, "momentum": 0.9}, "SGD, momentum 0.9"),
    "nesterov": ("SGD", {"lr": 1e-2, "momentum": 0.9, "nesterov": True},
                 "SGD, Nesterov momentum 0.9"),
    "adamw": ("AdamW", {}, "AdamW, weight decay 1e-2"),
}


def _spec(cls, overrides, title):
    """The bench configuration of a table row: the class defaults that are not zero (or
    False) as the kernel's keyword arguments, ``overrides`` on top; the state buffers those
    options need."""
    row = _specs.optimizer(cls)
    fam = _specs.family(row.family)
    hyper, torch_kwargs = {}, {}
    for h in fam.hypers:
        if h.name in row.fixed or (fam.kernel_keywords and h.name not in fam.kernel_keywords):
            continue                # fixed, or not the kernel's (Rprop's lr fills a buffer)
        if h.pair:
            pair = row.defaults.get(h.pair)
            index = [x.name for x in fam.hypers if x.pair == h.pair].index(h.name)
            default = pair[index] if pair is not None else h.default
        else:
            default = row.defaults.get(h.name, h.default)
        value = overrides.get(h.name, default)
        if value:
            hyper[h.name] = value
    for name, value in hyper.items():
        h = next(x for x in fam.hypers if x.name == name)
        if h.pair:
            torch_kwargs[h.pair] = tuple(hyper.get(x.name, x.default) for x in fam.hypers
                                         if x.pair == h.pair)
        else:
            torch_kwargs[name] = value
    values = {**dict(row.options), **{h.name: hyper.get(h.name, 0) for h in fam.hypers}}
    state = _specs.state_names(fam.name, {n: values.get(n, 0)
                                          for n in _specs.state_options(fam.name)})
    return Spec(row.kernel, hyper, state, fam.uses_step, row.torch, torch_kwargs,
                row.torch in TORCH_FUSED_CPU, title, dict(fam.scalar_state),
                {k: v for k, v in row.torch_state.items() if k != "step"})


def _build_specs():
    specs = {}
    for row in _specs.OPTIMIZERS.values():
        for name, (cls, overrides, title) in VARIANTS.items():
            if cls == row.cls:
                specs[name] = _spec(cls, overrides, title)
        if row.kernel not in specs:
            specs[row.kernel] = _spec(row.cls, {}, row.cls)
    return specs


#: Every benchmarked configuration, by name: one per row of the table (its kernel name) and
#: the SGD variants "momentum" and "nesterov".
SPECS = _build_specs()
OPTIMIZERS = tuple(SPECS)

#: The roofline pattern of a step by its number of state buffers (p and g, plus those).
_PATTERN_BY_STATE = {0: "sgd", 1: "momentum", 2: "adam"}


def pattern(optimizer):
    """The roofline loop with ``optimizer``'s memory streams."""
    n = len(SPECS[optimizer].state)
    if n not in _PATTERN_BY_STATE:
        raise ValueError(f"fastlr bench: no roofline pattern for {n} state buffers")
    return _PATTERN_BY_STATE[n]


def bytes_per_element(optimizer, dtype):
    """Bytes one element of a step of ``optimizer`` reads plus writes."""
    return _roofline.bytes_per_element(pattern(optimizer), dtype)


# In-place NumPy baselines live with the other NumPy twins, in fastlr.reference.inplace.
NUMPY_INPLACE = _inplace.INPLACE


# ---------------------------------------------------------------------------------------
# Inputs and steppers (zero-argument callables doing one step in place)
# ---------------------------------------------------------------------------------------
def _names(optimizer):
    return ("param", "grad") + SPECS[optimizer].state


def make_inputs(optimizer, n, dtype="float32", *, seed=SEED, layout="staggered"):
    """Param, grad and state for ``optimizer`` at ``n`` elements: a dict of arrays.

    The state looks like the optimizer's after ``STEP - 1`` steps of N(0, 1e-2) gradients:
    nothing zero, nothing near the subnormal range. Values repeat with a period of 64 K
    elements (cheap to make at 16 M; irrelevant to speed). Arrays are laid out by
    ``fastlr._tools.roofline.stream_arrays(layout=...)``.
    """
    if optimizer not in SPECS:
        raise ValueError(f"unknown optimizer {optimizer!r}; expected one of "
                         f"{', '.join(OPTIMIZERS)}")
    dt = np.dtype(dtype)
    names = _names(optimizer)
    arrays = _roofline.stream_arrays(n, dt, len(names), layout)
    rng = np.random.default_rng([seed, n, dt.itemsize])
    block = max(1, min(n, 1 << 16))
    t = STEP - 1
    values = {
        "param": lambda: rng.standard_normal(block),
        "grad": lambda: rng.normal(0.0, 1e-2, block),
        "momentum_buffer": lambda: rng.normal(0.0, 1e-2, block) * (1 - 0.9 ** t) / 0.1,
        "square_avg": lambda: (1 - 0.99 ** t) * rng.normal(0.0, 1e-2, block) ** 2 + 1e-12,
        "exp_avg": lambda: (1 - 0.9 ** t) * rng.normal(0.0, 1e-2, block),
        "exp_avg_sq": lambda: (1 - 0.999 ** t) * rng.normal(0.0, 1e-2, block) ** 2 + 1e-12,
        "exp_inf": lambda: np.abs(rng.normal(0.0, 1e-2, block)) + 1e-12,
        "state_sum": lambda: t * rng.normal(0.0, 1e-2, block) ** 2 + 1e-12,
        "acc_delta": lambda: (1 - 0.9 ** t) * rng.normal(0.0, 1e-4, block) ** 2 + 1e-12,
    }
    # any other buffer (a new row's): small positive values, safe under a square root
    other = lambda: rng.normal(0.0, 1e-2, block) ** 2 + 1e-12        # noqa: E731
    out = {}
    for name, a in zip(names, arrays):
        v = values.get(name, other)().astype(dt)
        if n:
            flat = a.reshape(-1)
            reps = n // block
            flat[:reps * block].reshape(reps, block)[...] = v
            flat[reps * block:] = v[:n - reps * block]
        out[name] = a
    return out


def clone_inputs(inputs, layout="staggered"):
    """A copy of ``inputs`` (from :func:`make_inputs`) in fresh buffers of ``layout``."""
    names = list(inputs)
    first = inputs[names[0]]
    arrays = _roofline.stream_arrays(first.size, first.dtype, len(names), layout)
    out = {}
    for name, a in zip(names, arrays):
        np.copyto(a, inputs[name].reshape(-1))
        out[name] = a.reshape(inputs[name].shape)
    return out


def fastlr_stepper(optimizer, arrays, n_threads=1):
    """One fastlr kernel call on ``arrays`` (updated in place): a zero-argument callable.

    The call is written out (positional arrays, one keyword per hyperparameter, constants
    bound as locals) as a user would write it, so that it costs what such a call costs."""
    spec = SPECS[optimizer]
    scope = {"fn": getattr(kernels, spec.kernel)}
    args = []
    for i, name in enumerate(("param", "grad") + spec.state):
        scope[f"a{i}"] = arrays[name]
        args.append(f"a{i}")
    kw = dict(_kwargs(spec), n_threads=n_threads)
    for name, value in kw.items():
        scope[f"k_{name}"] = value
    call = ", ".join(args + [f"{name}=k_{name}" for name in kw])
    params = ", ".join(f"{v}={v}" for v in scope)
    exec(f"def _make({params}):\n    return lambda: fn({call})\n", scope)
    return scope["_make"]()


def _kwargs(spec):
    kw = dict(spec.hyper)
    if spec.uses_step:
        kw["step"] = STEP
    kw.update(spec.scalars)
    return kw


def reference_stepper(optimizer, arrays):
    """One ``fastlr.reference`` call on ``arrays``: a zero-argument callable."""
    spec = SPECS[optimizer]
    fn = getattr(reference, spec.kernel)
    args = tuple(arrays[name] for name in _names(optimizer))
    kw = _kwargs(spec)
    return lambda: fn(*args, **kw)


def numpy_stepper(optimizer, arrays, scratch=None):
    """One in-place NumPy step (``numpy_inplace_*``) on ``arrays``: a zero-argument callable,
    or None when ``optimizer`` has no in-place NumPy baseline (see :func:`has_numpy`).
    ``scratch``: two arrays like param (allocated, staggered, when None)."""
    spec = SPECS[optimizer]
    fn = NUMPY_INPLACE.get(spec.kernel)
    if fn is None:
        return None
    args = tuple(arrays[name] for name in _names(optimizer))
    p = arrays["param"]
    if scratch is None:
        scratch = [a.reshape(p.shape) for a in _roofline.stream_arrays(p.size, p.dtype, 2)]
    kw = dict(_kwargs(spec), scratch=scratch)
    return lambda: fn(*args, **kw)


def has_numpy(optimizer):
    """Whether ``optimizer`` has an in-place NumPy baseline (fastlr.reference.inplace)."""
    return SPECS[optimizer].kernel in NUMPY_INPLACE


def _import_torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def torch_stepper(optimizer, arrays, mode="fused"):
    """``torch.optim.<Class>([param], ..., <mode>).step`` over ``arrays`` (shared memory,
    updated in place): a zero-argument callable. ``mode`` is "fused", "foreach" or
    "for-loop". One step is taken here so torch creates its state, then the state tensors
    are replaced by views of ``arrays`` (the same values and memory layout as the other
    implementations). Raises NotImplementedError without torch or for a mode torch lacks
    (fused RMSprop). Note: torch's foreach Nesterov SGD uses ``grad`` as scratch (adds
    momentum * buf into it), so repeated steps in that mode change the gradient."""
    torch = _import_torch()
    if torch is None:
        raise NotImplementedError("torch is not installed")
    spec = SPECS[optimizer]
    if not spec.torch_class or not hasattr(torch.optim, spec.torch_class):
        raise NotImplementedError(f"torch has no {optimizer} optimizer")
    kwargs = dict(spec.torch_kwargs)
    if mode == "fused":
        if not spec.torch_fused:
            raise NotImplementedError(f"torch has no fused CPU {spec.torch_class}")
        kwargs["fused"] = True
    elif mode == "foreach":
        kwargs["foreach"] = True
    elif mode == "for-loop":
        kwargs["foreach"] = False
    else:
        raise ValueError(f"torch mode must be one of {', '.join(TORCH_MODES)}, got {mode!r}")
    saved = {name: arrays[name].copy() for name in spec.state}
    param = torch.nn.Parameter(torch.from_numpy(arrays["param"]))
    param.grad = torch.from_numpy(arrays["grad"])
    opt = getattr(torch.optim, spec.torch_class)([param], **kwargs)
    opt.step()
    state = opt.state[param]
    for name in spec.state:
        np.copyto(arrays[name], saved[name])
        state[spec.torch_state.get(name, name)] = torch.from_numpy(arrays[name])
    opt._fastlr_bench_param = param      # keep the tensors alive with the callable
    return opt.step


# ---------------------------------------------------------------------------------------
# Rows for the optimizers outside the table (their own classes)
# ---------------------------------------------------------------------------------------
# The table's rows time one validated kernel call (fastlr.kernels) against the kernel's
# twin. The optimizers with their own classes (Adafactor, Muon, SparseAdam, LBFGS, the
# schedule-free ones, LAMB, LARS, Prodigy, D-Adaptation) are timed as a user runs them: one
# ``opt.step(...)`` of the fastlr class on one param, against the same step computed by the
# class's NumPy twin, and against the peer package's ``opt.step()`` (torch.optim, or the
# authors' package) on torch views of the same arrays. Every stepper starts from a fresh
# optimizer (state created at its first call) and carries its state from call to call,
# so k calls of the fastlr and of the reference stepper are the same k updates.
#
# ``reference`` is the twin of the fastlr step: the twin function (fastlr.reference) called
# per update with its state, or, where the twin is the loop of a class whose Python part
# computes per-step scalars, the fastlr class with its compiled loop swapped for the twin's:
# schedule-free and Prodigy through ``_with_twins``, SparseAdam by its own
# ``step_reference``. The twin replaces exactly the compiled part.
#
# ``pattern`` is the roofline loop with the step's memory streams (the bytes a step must
# move), or None where no streaming loop bounds the step: Muon (matrix products, O(r^2 c)
# flops per O(r c) bytes), LBFGS (20 iterations of a closure and a two-loop recursion over
# the history per step) are compute-bound; Prodigy and D-Adaptation have more streams than
# any roofline loop. The pattern moves ``_extra_stream_elements`` elements (SparseAdam:
# the touched rows only).


class ExtraRow(NamedTuple):
    """One benchmarked optimizer outside the table (see the notes above)."""

    cls: str              # the fastlr class name (the row's name: its lower case[_mode])
    title: str
    matrix: bool          # a 2-D, square-ish param of n elements (else 1-D)
    kwargs: dict          # the class's (and the peer's, and the twin's) keyword arguments
    reference: object = None    # (inputs) -> zero-argument callable, or None (no twin)
    reference_note: str = ""    # why reference is None
    peer: tuple = ()            # (module, class) of the peer optimizer, () when none
    peer_modes: tuple = (None,)     # ("foreach", "for-loop"), or (None,): the default call
    peer_note: str = ""         # why there is no peer
    pattern: object = None      # roofline pattern name, or None
    roofline_note: str = ""     # why pattern is None
    sparse: bool = False        # a row-sparse grad (SPARSE_FRACTION of the rows)
    closure: bool = False       # LBFGS: step(closure)
    peer_kwargs: object = None  # the peer's keyword arguments when not ``kwargs``
    dtypes: tuple = ("float32", "float64")      # the dtypes the row runs (others: no rows)


def _square_shape(n):
    """A 2-D shape of n elements, as square as n's divisors allow (rows <= cols)."""
    m = int(np.sqrt(n))
    while n % m:
        m -= 1
    return (m, n // m)


#: the fraction of rows a row-sparse grad touches
SPARSE_FRACTION = 0.01
#: LBFGS: one step of these options on the least-squares closure (all iterations run)
LBFGS_OPTIONS = {"max_iter": 20, "history_size": 10, "tolerance_grad": 0.0,
                 "tolerance_change": 0.0}


def _with_twins(module, twins, call):
    """``call`` with ``module``'s attributes ``twins`` (name -> NumPy twin) swapped in for
    the call only: the fastlr class's Python part around the twin's loop."""
    def run():
        saved = {name: getattr(module, name) for name in twins}
        for name, twin in twins.items():
            setattr(module, name, twin)
        try:
            return call()
        finally:
            for name, value in saved.items():
                setattr(module, name, value)
    return run


def _counter_stepper(update):
    """A stepper calling ``update(t)`` with t = 1, 2, ... (the twin's update number)."""
    t = [0]

    def step():
        t[0] += 1
        update(t[0])
    return step


def _zeros(p):
    return np.zeros_like(p)


def _adafactor_row(p):
    return np.zeros(p.shape[:-1] + (1,), p.dtype)


def _adafactor_col(p):
    return np.zeros(p.shape[:-2] + (1, p.shape[-1]), p.dtype)


def _twin(name, state, counted):
    """The reference stepper of a row whose twin is ``fastlr.reference.<name>(param, grad,
    *state, [step=t,] **kwargs)``: ``state`` makes its buffers (fresh, as the class's)
    from the param; ``counted``: the twin takes the update number."""
    def make(inputs):
        p, g = inputs["param"], inputs["grad"]
        bufs = [new(p) for new in state]
        fn = getattr(reference, name)
        kw = EXTRA[name].kwargs
        if counted:
            return _counter_stepper(lambda t: fn(p, g, *bufs, step=t, **kw))
        return lambda: fn(p, g, *bufs, **kw)
    return make


def _ref_class(name):
    """The reference stepper of a row whose class has ``step_reference`` (the same update
    by the NumPy twin) for its options."""
    def make(inputs):
        opt = getattr(fastlr, EXTRA[name].cls)([inputs["param"]], **EXTRA[name].kwargs)
        grads = [inputs["grad"]]
        return lambda: opt.step_reference(grads)
    return make


def _ref_sparseadam(inputs):
    opt = fastlr.SparseAdam([inputs["param"]], **EXTRA["sparseadam"].kwargs)
    grads = [_sparse_grad(inputs)]
    return lambda: opt.step_reference(grads)


def _class_with_twin_loops(name, module, twin_module, loops, holder=None):
    """The reference stepper of a class whose compiled loops are module globals of
    ``module`` (``holder``: an attribute holding them, as schedule-free's ``_kernels``):
    the fastlr class's step with ``loops`` taken from ``twin_module`` (same names and
    signatures). Raises NotImplementedError when a module or loop is missing."""
    def make(inputs):
        import importlib
        try:
            mod = importlib.import_module(module)
            twin = importlib.import_module(twin_module)
            found = {n: getattr(twin, n) for n in loops}
        except (ImportError, AttributeError) as e:
            raise NotImplementedError(f"the NumPy twin's loops are missing ({e})") from None
        twins = found if holder is None else {holder: _Namespace(getattr(mod, holder), found)}
        opt = _fastlr_class_stepper(name, inputs, 1, build_only=True)
        grads = [inputs["grad"]]
        return _with_twins(mod, twins, lambda: opt.step(grads))
    return make


def _ref_schedulefree(name):
    return _class_with_twin_loops(name, "fastlr.optim.schedulefree",
                                  "fastlr.reference.schedulefree",
                                  ("sgd_step", "adam_step", "switch"), holder="_kernels")


class _Namespace:
    """``module``'s attributes with ``overrides`` on top."""

    def __init__(self, module, overrides):
        self._module = module
        self.__dict__.update(overrides)

    def __getattr__(self, name):
        return getattr(self._module, name)


#: Prodigy and D-Adaptation: growth_rate=1 holds the estimate d at d0. Repeated steps on one
#: fixed grad (the timing loop) would otherwise grow d without bound, to inf in float32
#: after a few hundred steps, and time arithmetic on inf and NaN; the estimate is still
#: computed every step (then clamped), so the work per step is the same.
_LR_FREE = {"lr": 1.0, "growth_rate": 1.0}
_MANY_STREAMS = "more memory streams than any roofline loop (sgd, momentum, adam)"
_TORCH_MODES = ("foreach", "for-loop")

#: The rows outside the table, by name (the class name in lower case, or <class>_<mode> for
#: a mode of a class, as AdamW's bfloat16 state: float32 only). A row whose class
#: fastlr does not have (D-Adaptation, until it lands) is left out (see extra_rows).
EXTRA = {
    "adafactor": ExtraRow(
        "Adafactor", "Adafactor (factored second moment)", True, {"lr": 1e-2},
        reference=_twin("adafactor", (_adafactor_row, _adafactor_col), True),
        peer=("torch.optim", "Adafactor"), peer_modes=_TORCH_MODES, pattern="sgd"),
    "muon": ExtraRow(
        "Muon", "Muon (Newton-Schulz, 5 steps)", True, {"lr": 1e-3},
        reference=_twin("muon", (_zeros,), False), peer=("torch.optim", "Muon"),
        roofline_note="compute-bound: Newton-Schulz matrix products, O(rows^2 cols) flops"),
    "sparseadam": ExtraRow(
        "SparseAdam", "SparseAdam, row-sparse grad (1% of rows)", True, {"lr": 1e-3},
        reference=_ref_sparseadam, peer=("torch.optim", "SparseAdam"), pattern="adam",
        sparse=True),
    "lbfgs": ExtraRow(
        "LBFGS", "LBFGS, one step(closure): 20 iterations, history 10", False,
        dict(LBFGS_OPTIONS), closure=True, peer=("torch.optim", "LBFGS"),
        reference_note="fastlr.reference has no LBFGS twin (torch is the oracle)",
        roofline_note="compute-bound: 20 closure calls and two-loop recursions per step"),
    "schedulefreesgd": ExtraRow(
        "ScheduleFreeSGD", "ScheduleFreeSGD", False, {"lr": 1.0},
        reference=_ref_schedulefree("schedulefreesgd"), peer=("schedulefree",
                                                              "SGDScheduleFree"),
        peer_modes=_TORCH_MODES, pattern="momentum"),
    "schedulefreeadamw": ExtraRow(
        "ScheduleFreeAdamW", "ScheduleFreeAdamW", False, {"lr": 2.5e-3},
        reference=_ref_schedulefree("schedulefreeadamw"), peer=("schedulefree",
                                                                "AdamWScheduleFree"),
        peer_modes=_TORCH_MODES, pattern="adam"),
    "schedulefreeradam": ExtraRow(
        "ScheduleFreeRAdam", "ScheduleFreeRAdam", False, {"lr": 2.5e-3},
        reference=_ref_schedulefree("schedulefreeradam"), peer=("schedulefree",
                                                                "RAdamScheduleFree"),
        peer_modes=_TORCH_MODES, pattern="adam"),
    "lamb": ExtraRow(
        "LAMB", "LAMB (layer-wise trust ratio)", True, {"lr": 1e-3},
        reference=_twin("lamb", (_zeros, _zeros), True), pattern="adam",
        peer_note="no torch counterpart (torch.optim has no LAMB)"),
    "lars": ExtraRow(
        "LARS", "LARS (layer-wise trust ratio), momentum 0.9", True, {"lr": 1e-3},
        reference=_twin("lars", (_zeros,), False), pattern="momentum",
        peer_note="no torch counterpart (torch.optim has no LARS)"),
    "prodigy": ExtraRow(
        "Prodigy", "Prodigy (d estimate held at d0)", False, _LR_FREE,
        reference=_class_with_twin_loops("prodigy", "fastlr.optim.lrfree",
                                         "fastlr.reference.lrfree", ("prodigy_step",)),
        peer=("prodigyopt", "Prodigy"), roofline_note=_MANY_STREAMS),
    **{name.lower(): ExtraRow(
        name, f"{name} (d estimate held at d0)", False, _LR_FREE, peer=("dadaptation", name),
        reference=_class_with_twin_loops(name.lower(), "fastlr.optim.dadapt",
                                         "fastlr.reference.dadapt", (loop,)),
        roofline_note=_MANY_STREAMS)
       for name, loop in (("DAdaptAdam", "dadapt_adam_step"), ("DAdaptSGD", "dadapt_sgd_step"),
                          ("DAdaptAdaGrad", "dadapt_adagrad_step"))},
    # a mode of a table row, named <class>_<mode>: AdamW with its moments in bfloat16
    "adamw_bf16state": ExtraRow(
        "AdamW", "AdamW, state_dtype='bfloat16' (float32 params)", False,
        {"lr": 1e-3, "state_dtype": "bfloat16"}, reference=_ref_class("adamw_bf16state"),
        peer=("torch.optim", "AdamW"), peer_kwargs={"lr": 1e-3, "fused": True},
        roofline_note="no roofline loop with bfloat16 streams (20 bytes per element: param "
                      "r/w and grad in float32, both moments r/w in bfloat16)",
        dtypes=("float32",)),
}


def extra_rows():
    """The rows outside the table whose class this fastlr has, in EXTRA's order (looked up
    at each call: a class that lands later gets its row at once)."""
    return tuple(name for name, row in EXTRA.items() if hasattr(fastlr, row.cls))


def all_optimizers():
    """Every optimizer name ``run`` and ``--optimizers`` accept: the table's rows
    (:data:`OPTIMIZERS`), then :func:`extra_rows`."""
    return OPTIMIZERS + extra_rows()


def _extra(optimizer):
    if optimizer not in extra_rows():
        raise ValueError(f"unknown optimizer {optimizer!r}; expected one of "
                         f"{', '.join(all_optimizers())}")
    return EXTRA[optimizer]


def extra_shape(optimizer, n):
    """The param's shape in ``optimizer``'s row at ``n`` elements."""
    return _square_shape(n) if _extra(optimizer).matrix else (n,)


def make_extra_inputs(optimizer, n, dtype="float32", *, seed=SEED, layout="staggered"):
    """The arrays of a row outside the table at ``n`` elements: ``param`` (N(0, 1)) and
    ``grad`` (N(0, 1e-2)), laid out by ``stream_arrays(layout=...)``; a row-sparse row has
    ``indices`` (sorted, SPARSE_FRACTION of the rows, at least one) and ``rows`` instead of
    a dense grad; LBFGS has ``a`` (log-spaced over [1, 1e3]) and ``b`` (N(0, 1)) of its
    closure ``0.5 * sum(a * (x - b)**2)``."""
    row = _extra(optimizer)
    dt = np.dtype(dtype)
    shape = extra_shape(optimizer, n)
    rng = np.random.default_rng([seed, n, dt.itemsize])
    arrays = _roofline.stream_arrays(n, dt, 2, layout)
    out = {"param": arrays[0].reshape(shape)}
    out["param"][...] = rng.standard_normal(shape)
    if row.sparse:
        k = max(1, int(shape[0] * SPARSE_FRACTION))
        out["indices"] = np.sort(rng.choice(shape[0], size=k, replace=False)).astype(np.int64)
        out["rows"] = rng.normal(0.0, 1e-2, (k, shape[1])).astype(dt)
    elif row.closure:
        out["a"] = np.logspace(0, 3, n).astype(dt)
        out["b"] = rng.standard_normal(n).astype(dt)
    else:
        out["grad"] = arrays[1].reshape(shape)
        out["grad"][...] = rng.normal(0.0, 1e-2, shape)
    return out


def clone_extra_inputs(inputs, layout="staggered"):
    """A copy of ``inputs`` (from :func:`make_extra_inputs`); param and grad in fresh
    buffers of ``layout``."""
    p = inputs["param"]
    arrays = _roofline.stream_arrays(p.size, p.dtype, 2, layout)
    out = {}
    for name, a in inputs.items():
        if name in ("param", "grad"):
            b = arrays[0 if name == "param" else 1].reshape(a.shape)
            np.copyto(b, a)
            out[name] = b
        else:
            out[name] = a.copy()
    return out


def _sparse_grad(inputs):
    return fastlr.RowSparseGrad(inputs["indices"], inputs["rows"])


def _lbfgs_closure(inputs):
    x, a, b = inputs["param"], inputs["a"], inputs["b"]

    def closure():
        r = x - b
        g = a * r
        return 0.5 * float(g @ r), [g]
    return closure


def _fastlr_class_stepper(optimizer, inputs, n_threads=1, build_only=False):
    row = _extra(optimizer)
    cls = getattr(fastlr, row.cls)
    kw = dict(row.kwargs)
    try:
        import inspect
        if "n_threads" in inspect.signature(cls).parameters:
            kw["n_threads"] = n_threads
    except (TypeError, ValueError):                     # pragma: no cover - no signature
        pass
    p = inputs["param"]
    if row.closure:
        x0 = p.copy()
        closure = _lbfgs_closure(inputs)

        def lbfgs_step():
            p[...] = x0
            cls([p], **kw).step(closure)
        return lbfgs_step
    opt = cls([p], **kw)
    if hasattr(opt, "train"):               # the schedule-free optimizers step in train mode
        opt.train()
    if build_only:
        return opt
    grads = [_sparse_grad(inputs) if row.sparse else inputs["grad"]]
    return lambda: opt.step(grads)


def extra_fastlr_stepper(optimizer, inputs, n_threads=1):
    """One ``step`` of the fastlr class (a fresh instance, one param) on ``inputs``: a
    zero-argument callable. ``n_threads`` goes to the classes that take it; the others
    follow ``fastlr.set_num_threads`` (set by the benchmark before each sample)."""
    return _fastlr_class_stepper(optimizer, inputs, n_threads)


def extra_reference_stepper(optimizer, inputs):
    """The same updates by the NumPy twin: a zero-argument callable, or None when the
    optimizer has no twin (``EXTRA[optimizer].reference_note`` says why). Raises
    NotImplementedError when the twin's loops are missing from this fastlr."""
    make = _extra(optimizer).reference
    return None if make is None else make(inputs)


def _import_peer(optimizer):
    """The peer's class, or raise NotImplementedError saying why there is none."""
    row = _extra(optimizer)
    if not row.peer:
        raise NotImplementedError(row.peer_note)
    torch = _import_torch()
    if torch is None:
        raise NotImplementedError("torch is not installed")
    module_name, cls_name = row.peer
    try:
        import importlib
        module = importlib.import_module(module_name)
    except ImportError:
        raise NotImplementedError(f"{module_name} is not installed") from None
    if not hasattr(module, cls_name):
        raise NotImplementedError(f"{module_name} has no {cls_name}")
    return torch, getattr(module, cls_name)


def peer_label(optimizer):
    """``module.Class`` of ``optimizer``'s peer, or None."""
    row = _extra(optimizer)
    return ".".join(row.peer) if row.peer else None


def extra_peer_stepper(optimizer, inputs, mode=None):
    """The peer's ``opt.step()`` on torch views of ``inputs`` (updated in place; a fresh
    optimizer): a zero-argument callable. ``mode``: "foreach", "for-loop" or None (the
    peer's default). Raises NotImplementedError when there is no peer or it is not
    installed (the message says which)."""
    torch, cls = _import_peer(optimizer)
    row = _extra(optimizer)
    kw = dict(row.kwargs if row.peer_kwargs is None else row.peer_kwargs)
    if mode == "foreach":
        kw["foreach"] = True
    elif mode == "for-loop":
        kw["foreach"] = False
    elif mode is not None:
        raise ValueError(f"peer mode must be foreach, for-loop or None, got {mode!r}")
    p = inputs["param"]
    tp = torch.nn.Parameter(torch.from_numpy(p))
    if row.closure:
        x0 = torch.from_numpy(p.copy())
        ta, tb = torch.from_numpy(inputs["a"]), torch.from_numpy(inputs["b"])

        def closure():
            with torch.no_grad():
                r = tp - tb
                g = ta * r
                tp.grad = g
                return float(g @ r) * 0.5

        def lbfgs_step():
            with torch.no_grad():
                tp.copy_(x0)
            cls([tp], **kw).step(closure)
        lbfgs_step._fastlr_bench_param = tp
        return lbfgs_step
    if row.sparse:
        idx = torch.from_numpy(inputs["indices"]).reshape(1, -1)
        tp.grad = torch.sparse_coo_tensor(idx, torch.from_numpy(inputs["rows"]), p.shape,
                                          check_invariants=True).coalesce()
    else:
        tp.grad = torch.from_numpy(inputs["grad"])
    opt = cls([tp], **kw)
    if hasattr(opt, "train"):
        opt.train()
    opt._fastlr_bench_param = tp           # keep the tensors alive with the callable

    def step():
        with torch.no_grad():
            opt.step()
    return step


_BLAS = []          # [threadpoolctl.ThreadpoolController or None], made at first use


def _blas_controller():
    """threadpoolctl's controller of NumPy's BLAS, or None without threadpoolctl."""
    if not _BLAS:
        try:
            from threadpoolctl import ThreadpoolController
            _BLAS.append(ThreadpoolController())
        except ImportError:
            _BLAS.append(None)
    return _BLAS[0]


def _blas_threads():
    """NumPy's BLAS thread count (the largest of its libraries'), or None when it cannot
    be set (no threadpoolctl)."""
    ctl = _blas_controller()
    if ctl is None:
        return None
    counts = [lib.num_threads for lib in ctl.select(user_api="blas").lib_controllers]
    return max(counts) if counts else None


def _set_threads(k):
    """fastlr's thread count and, with threadpoolctl, NumPy's BLAS's (Muon's matrix
    products, LBFGS's dot products): without a limit the BLAS threads oversubscribe the
    cores the other implementation's threads were given."""
    fastlr.set_num_threads(k)
    ctl = _blas_controller()
    if ctl is not None:
        ctl.limit(limits=k, user_api="blas")


def _extra_stream_elements(optimizer, inputs):
    row = _extra(optimizer)
    if row.sparse:
        return inputs["rows"].size
    return inputs["param"].size


# ---------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------
class _Entry:
    """One implementation at one thread count: calibrated batch, samples (s per call)."""

    def __init__(self, impl, threads, fn=None, prepare=None, roofline=None, mode=None):
        self.impl = impl
        self.threads = threads
        self.fn = fn
        self.prepare = prepare
        self.roofline = roofline      # (pattern, buffers) for the pattern loop
        self.mode = mode
        self.batch = 1
        self.samples = []

    def _batch_time(self, batch):
        if self.roofline is not None:
            pattern, bufs = self.roofline
            return _roofline.time_passes(pattern, bufs, self.threads, batch)
        fn = self.fn
        t0 = time.perf_counter()
        for _ in range(batch):
            fn()
        return (time.perf_counter() - t0) / batch

    def calibrate(self, min_sample):
        if self.prepare is not None:
            self.prepare()
        self._batch_time(1)                           # warm up: caches, page faults, threads
        batch = 1
        while True:
            t = self._batch_time(batch) * batch
            if t >= min_sample or batch >= 1 << 22:
                break
            batch = max(batch + 1, int(batch * min(10.0, 1.2 * min_sample / max(t, 1e-9))))
        self.batch = batch

    def sample(self):
        if self.prepare is not None:
            self.prepare()
        self.samples.append(self._batch_time(self.batch))

    def median(self):
        return statistics.median(self.samples) if self.samples else None


def _measure(entries, repeat, min_sample):
    """Calibrate, then ``repeat`` round-robin rounds (start rotated each round)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        for e in entries:
            e.calibrate(min_sample)
        for r in range(repeat):
            k = r % len(entries)
            for e in entries[k:] + entries[:k]:
                e.sample()
    finally:
        if enabled:
            gc.enable()


def _group(optimizer, n, dtype, threads, repeat, min_sample, torch, layout):
    """Measure every implementation for one (optimizer, n, dtype); one row per thread count."""
    spec = SPECS[optimizer]
    streams = pattern(optimizer)
    base = make_inputs(optimizer, n, dtype, layout=layout)
    entries = []
    for k in threads:
        entries.append(_Entry("fastlr", k, fastlr_stepper(optimizer, clone_inputs(base, layout),
                                                          k)))
    for k in threads:
        entries.append(_Entry("roofline", k,
                              roofline=(streams, _roofline.make_buffers(streams, n, dtype,
                                                                        layout))))
    if has_numpy(optimizer):
        entries.append(_Entry("numpy", 1, numpy_stepper(optimizer,
                                                        clone_inputs(base, layout))))
    entries.append(_Entry("reference", 1, reference_stepper(optimizer,
                                                            clone_inputs(base, layout))))
    if torch is not None and spec.torch_class and hasattr(torch.optim, spec.torch_class):
        modes = ("fused",) if spec.torch_fused else ("foreach", "for-loop")
        for mode in modes:
            step = torch_stepper(optimizer, clone_inputs(base, layout), mode)
            entries.extend(_torch_entries(step, threads, torch, mode))
    del base
    _measure(entries, repeat, min_sample)

    head = {"optimizer": optimizer, "title": spec.title, "dtype": str(np.dtype(dtype)),
            "n": n, "pattern": streams,
            "bytes_per_element": bytes_per_element(optimizer, dtype),
            "numpy_baseline": has_numpy(optimizer)}
    return _timed_rows(entries, threads, n, head)


def _one(entries, impl, k=None):
    """The entry of ``impl`` (at ``k`` threads), or None."""
    for e in entries:
        if e.impl == impl and (k is None or e.threads == k):
            return e
    return None


def _torch_entries(step, threads, torch, mode):
    """Entries timing ``step`` (torch's or a torch-based peer's) at each thread count."""
    return [_Entry("torch", k, step, prepare=(lambda k=k: torch.set_num_threads(k)),
                   mode=mode) for k in threads]


def _timed_rows(entries, threads, n, head):
    """One row per thread count from measured ``entries``: ``head`` (the row's fixed
    fields; ``bytes_per_element`` None where no roofline applies), the times, speedups
    and bandwidths."""
    rows = []
    bpe = head["bytes_per_element"]
    ref, numpy_entry = _one(entries, "reference"), _one(entries, "numpy")
    for k in threads:
        fast = _one(entries, "fastlr", k)
        roof = _one(entries, "roofline", k)
        t_fast = fast.median()
        times = {"fastlr": t_fast, "reference": ref.median() if ref else None,
                 "numpy": numpy_entry.median() if numpy_entry else None, "torch": None}
        torch_times = {e.mode: e.median() for e in entries
                       if e.impl == "torch" and e.threads == k}
        torch_mode = None
        if torch_times:
            torch_mode = min(torch_times, key=torch_times.get)
            times["torch"] = torch_times[torch_mode]
        t_roof = roof.median() if roof else None
        samples = {"fastlr": fast.samples, "roofline": roof.samples if roof else None,
                   "reference": ref.samples if ref else None,
                   "numpy": numpy_entry.samples if numpy_entry else None}
        for e in entries:
            if e.impl == "torch" and e.threads == k:
                samples[f"torch-{e.mode}"] = e.samples
        rows.append({
            **head,
            "threads": k,
            "time_s": times,
            "torch_mode": torch_mode,
            "torch_time_s": torch_times,
            "roofline_time_s": t_roof,
            "speedup": {impl: (times[impl] / t_fast if times[impl] else None)
                        for impl in ("reference", "numpy", "torch")},
            "ns_per_element": t_fast / n * 1e9,
            "gbps": bpe * n / t_fast / 1e9 if bpe else None,
            "roofline_gbps": bpe * n / t_roof / 1e9 if bpe else None,
            "roofline_fraction": t_roof / t_fast if bpe else None,
            "samples_s": samples,
            "batch": {f"{e.impl}{'-' + e.mode if e.mode else ''}@{e.threads}": e.batch
                      for e in entries if e.threads == k or e.impl in ("numpy", "reference")},
        })
    return rows


def _extra_group(optimizer, n, dtype, threads, repeat, min_sample, torch, layout):
    """As :func:`_group`, for a row outside the table: fastlr's class step per thread
    count (``fastlr.set_num_threads(k)`` and, with threadpoolctl, NumPy's BLAS limited to
    k threads before each sample; ``n_threads=k`` where the class takes it), the twin (1
    thread), the peer per mode and thread count
    (``torch.set_num_threads(k)``), and the roofline loop over the streams the step must
    move where one applies."""
    row = EXTRA[optimizer]
    if str(np.dtype(dtype)) not in row.dtypes:
        return []                   # (a float32-only mode asked for float64: no rows)
    base = make_extra_inputs(optimizer, n, dtype, layout=layout)
    n_stream = _extra_stream_elements(optimizer, base)
    entries = []
    for k in threads:
        entries.append(_Entry("fastlr", k,
                              extra_fastlr_stepper(optimizer, clone_extra_inputs(base, layout),
                                                   k),
                              prepare=(lambda k=k: _set_threads(k))))
    if row.pattern is not None:
        for k in threads:
            entries.append(_Entry("roofline", k, roofline=(
                row.pattern, _roofline.make_buffers(row.pattern, n_stream, dtype, layout))))
    reference_note = row.reference_note or None
    try:
        ref = extra_reference_stepper(optimizer, clone_extra_inputs(base, layout))
    except NotImplementedError as e:
        ref, reference_note = None, str(e)
    if ref is not None:
        entries.append(_Entry("reference", 1, ref, prepare=lambda: _set_threads(1)))
    peer_note = row.peer_note or None
    if torch is None:
        peer_note = peer_note or "torch not used (--no-torch or not installed)"
    else:
        for mode in row.peer_modes:
            try:
                step = extra_peer_stepper(optimizer, clone_extra_inputs(base, layout), mode)
            except NotImplementedError as e:
                peer_note = str(e)
                break
            entries.extend(_torch_entries(step, threads, torch, mode or "default"))
    del base
    _measure(entries, repeat, min_sample)
    have_peer = any(e.impl == "torch" for e in entries)
    head = {"optimizer": optimizer, "title": row.title, "dtype": str(np.dtype(dtype)),
            "n": n, "shape": list(extra_shape(optimizer, n)), "pattern": row.pattern,
            "bytes_per_element": (_roofline.bytes_per_element(row.pattern, dtype)
                                  * n_stream / n if row.pattern is not None else None),
            "numpy_baseline": False, "peer": peer_label(optimizer),
            "peer_note": None if have_peer else peer_note,
            "reference_note": reference_note,
            "roofline_note": row.roofline_note or None}
    return _timed_rows(entries, threads, n, head)


# ---------------------------------------------------------------------------------------
# Machine description
# ---------------------------------------------------------------------------------------
def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _usable_cores():
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def machine_info(torch=None):
    """What the numbers were measured on: CPU, cores, versions, fastlr's build."""
    info = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": _usable_cores(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": getattr(torch, "__version__", None),
        "fastlr": fastlr.__version__,
        "cpu_target": fastlr._kernels.cpu_target(),
        # the kernel modules outside the core-loop table (int8 state, 16-bit params, ...):
        # each one's build, up to x86-64-v4 (fastlr._core.dispatch.module_target)
        "kernel_modules": {name: _dispatch.module_target(name) for name in _dispatch.MODULES},
        "roofline_loops": _roofline.cpu_variant(),
        "openmp": bool(kernels.HAVE_OPENMP),
        "max_threads": fastlr.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "gomp_spincount": os.environ.get("GOMP_SPINCOUNT"),
        "malloc_pinned": _MALLOC_PINNED,
        "blas_threads_limited": _blas_controller() is not None,
    }
    if torch is not None:
        try:
            info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        except Exception:                           # pragma: no cover - old torch
            pass
    return info


# ---------------------------------------------------------------------------------------
# The programmatic API
# ---------------------------------------------------------------------------------------
_MALLOC_PINNED = False


def _pin_malloc():
    """Fix glibc malloc's mmap/trim thresholds at the ceiling a long-running process
    reaches (32 / 64 MiB), once; a no-op off glibc or when MALLOC_MMAP_THRESHOLD_ /
    MALLOC_TRIM_THRESHOLD_ are set. See benchmarks/common.py:steady_state_malloc."""
    global _MALLOC_PINNED
    if _MALLOC_PINNED or not sys.platform.startswith("linux"):
        return
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    m_trim_threshold, m_mmap_threshold = -1, -3          # <malloc.h>
    _MALLOC_PINNED = bool(mallopt(m_mmap_threshold, 32 << 20)) and bool(
        mallopt(m_trim_threshold, 64 << 20))


def _default_threads():
    top = max(1, fastlr.get_num_threads())
    return (1, top) if top > 1 else (1,)


def run(optimizers=None, sizes=None, dtypes=None, threads=None, repeat=None, *, quick=False,
        torch=None, layout="staggered", min_sample=None, progress=None, pin_malloc=True):
    """Run the benchmark and return its results as a JSON-ready dict.

    ``optimizers`` (names of :func:`all_optimizers`: the table's rows of :data:`SPECS`
    and the classes of :func:`extra_rows`), ``sizes`` (elements), ``dtypes``, ``threads``
    (thread counts) and ``repeat`` (round-robin rounds; medians are reported) default to
    the full run, or with ``quick=True`` to a few-seconds smoke run. ``torch``: None uses
    torch when it is installed, False never, True requires it. ``min_sample``: seconds per
    timed batch. ``progress``: a text stream for progress lines (None: silent).
    ``pin_malloc``: fix glibc's malloc thresholds for the rest of the process (see the
    module notes; it makes the baselines' temporaries cheaper and their timings stable).

    Returns ``{"machine": ..., "config": ..., "rows": [...], "elapsed_s": ...}``; each row
    is one (optimizer, dtype, n, threads) with ``time_s`` per implementation (median
    seconds per step), ``speedup`` of fastlr over each, ``gbps``, ``roofline_gbps`` and
    ``roofline_fraction``, and the raw samples. A row outside the table also has ``shape``
    (the param's), ``peer`` (``module.Class`` of the optimizer in the ``torch`` columns),
    ``peer_note`` / ``reference_note`` (why a column is empty) and ``roofline_note``; its
    ``gbps``, ``roofline_*`` and ``bytes_per_element`` are None where no roofline applies.
    """
    optimizers = tuple(optimizers or (QUICK_OPTIMIZERS if quick else DEFAULT_OPTIMIZERS))
    sizes = tuple(int(n) for n in (sizes or (QUICK_SIZES if quick else DEFAULT_SIZES)))
    dtypes = tuple(str(np.dtype(d)) for d in (dtypes or DEFAULT_DTYPES))
    threads = tuple(int(k) for k in (threads or _default_threads()))
    repeat = int(repeat or (QUICK_REPEAT if quick else DEFAULT_REPEAT))
    min_sample = float(min_sample or (QUICK_MIN_SAMPLE if quick else DEFAULT_MIN_SAMPLE))
    choices = all_optimizers()
    for name in optimizers:
        if name not in choices:
            raise ValueError(f"unknown optimizer {name!r}; expected one of "
                             f"{', '.join(choices)}")
    for d in dtypes:
        if d not in ("float32", "float64"):
            raise ValueError(f"dtype must be float32 or float64, got {d}")
    if any(n < 1 for n in sizes) or any(k < 1 for k in threads) or repeat < 1:
        raise ValueError("sizes, threads and repeat must be >= 1")
    if layout not in ("staggered", "natural"):
        raise ValueError(f"layout must be 'staggered' or 'natural', got {layout!r}")
    if torch is False:
        torch_mod = None
    else:
        torch_mod = _import_torch()
        if torch_mod is None and torch is True:
            raise ImportError("torch is not installed (pass torch=None to skip it)")
    saved_torch_threads = torch_mod.get_num_threads() if torch_mod is not None else None
    saved_threads = fastlr.get_num_threads()
    saved_blas = _blas_threads() if any(o not in SPECS for o in optimizers) else None
    if pin_malloc:
        _pin_malloc()

    start = time.perf_counter()
    groups = [(o, d, n) for o in optimizers for d in dtypes for n in sizes]
    rows = []
    try:
        for i, (opt, dtype, n) in enumerate(groups):
            if progress is not None:
                _progress(progress, i, len(groups), opt, dtype, n, time.perf_counter() - start)
            group = _group if opt in SPECS else _extra_group
            rows.extend(group(opt, n, dtype, threads, repeat, min_sample, torch_mod, layout))
            gc.collect()
    finally:
        fastlr.set_num_threads(saved_threads)
        if saved_blas is not None:
            _blas_controller().limit(limits=saved_blas, user_api="blas")
        if saved_torch_threads is not None:
            torch_mod.set_num_threads(saved_torch_threads)
        if progress is not None:
            _progress_done(progress, len(groups), time.perf_counter() - start)
    return {
        "format": "fastlr-bench-1",
        "machine": machine_info(torch_mod),
        "config": {"optimizers": list(optimizers), "sizes": list(sizes),
                   "dtypes": list(dtypes), "threads": list(threads), "repeat": repeat,
                   "min_sample_s": min_sample, "layout": layout, "quick": bool(quick),
                   "step": STEP, "torch": torch_mod is not None},
        "rows": rows,
        "elapsed_s": time.perf_counter() - start,
    }


def _progress(stream, i, total, opt, dtype, n, elapsed):
    line = f"[{i + 1}/{total}] {opt} {dtype} n={_size_label(n)} ({elapsed:.0f} s)"
    if _isatty(stream):
        stream.write("\r\033[K" + line)
    else:
        stream.write(line + "\n")
    stream.flush()


def _progress_done(stream, total, elapsed):
    line = f"fastlr bench: {total} groups in {elapsed:.1f} s"
    stream.write(("\r\033[K" + line + "\n") if _isatty(stream) else line + "\n")
    stream.flush()


def _isatty(stream):
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


# ---------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------
def _size_label(n):
    for unit, shift in (("G", 30), ("M", 20), ("K", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift}{unit}"
    return str(n)


def _parse_size(text):
    t = text.strip().upper()
    mult = 1
    if t and t[-1] in "KMG":
        mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[t[-1]]
        t = t[:-1]
    try:
        value = float(t) * mult
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 1024, 64K, 16M)")
    if value < 1 or value != int(value):
        raise argparse.ArgumentTypeError(f"not a positive whole size: {text!r}")
    return int(value)


def _time_label(t):
    if t is None:
        return "-"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if t >= scale:
            return f"{t / scale:.3g} {unit}"
    return f"{t / 1e-9:.3g} ns"


def _ratio_label(x):
    if x is None:
        return "-"
    return f"{x:.2f}x" if x < 10 else f"{x:.1f}x" if x < 100 else f"{x:.0f}x"


#: A multi-thread row whose fastlr (or roofline) step runs at less than this fraction of
#: the speed of the 1-thread row (same optimizer, dtype and size) says a core was busy.
SLOW_THREADS = 0.5


def _row_label(r):
    return f"{r['optimizer']} {r['dtype']} {_size_label(r['n'])} {r['threads']} thr"


def noise_notes(rows):
    """Notes on rows that measured the machine's noise rather than fastlr: fastlr faster
    than the roofline loop with the same streams (above 100%: the roofline sample was
    slowed), and multi-thread rows below SLOW_THREADS x the 1-thread row's speed (a busy
    core, the threads waited for it). [] when the rows look sound."""
    over = [r for r in rows if (r["roofline_fraction"] or 0.0) > 1.0]
    single = {(r["optimizer"], r["dtype"], r["n"]): r for r in rows if r["threads"] == 1}
    slow = []
    for r in rows:
        one = single.get((r["optimizer"], r["dtype"], r["n"]))
        if r["threads"] <= 1 or one is None:
            continue
        scale = one["time_s"]["fastlr"] / r["time_s"]["fastlr"]
        if one["roofline_time_s"] and r["roofline_time_s"]:
            scale = min(scale, one["roofline_time_s"] / r["roofline_time_s"])
        if scale < SLOW_THREADS:
            slow.append((r, scale))
    notes = []
    if over:
        worst = max(over, key=lambda r: r["roofline_fraction"])
        notes.append(
            f"note: {len(over)} row{'s' if len(over) > 1 else ''} above 100% of the roofline "
            f"(worst {_row_label(worst)}: {100 * worst['roofline_fraction']:.0f}%): fastlr "
            f"cannot beat a plain loop over the same memory, so the roofline's samples were "
            f"slowed (a busy core, a clock change); those rows are noise, rerun on an idle "
            f"machine.")
    if slow:
        worst, scale = min(slow, key=lambda item: item[1])
        notes.append(
            f"note: {len(slow)} multi-thread row{'s' if len(slow) > 1 else ''} below "
            f"{SLOW_THREADS:g}x the speed of 1 thread (worst {_row_label(worst)}: "
            f"{scale:.2f}x): a core was busy with other work and the threads waited for it; "
            f"those rows are noise, rerun on an idle machine or with fewer --threads.")
    return notes


def _gbps_label(x, form="{:.1f}"):
    return "-" if x is None else form.format(x)


def _peer_cell(r):
    """The "torch mode" cell: torch's mode; for a row outside the table whose peer is not
    torch.optim, the peer's package and mode."""
    mode = r["torch_mode"]
    peer = r.get("peer")
    if mode is None:
        return "-"
    if peer and not peer.startswith("torch."):
        package = peer.split(".")[0]
        return package if mode == "default" else f"{package} {mode}"
    return mode


def _extra_legend(rows, machine):
    """The report's notes on the empty cells of rows outside the table."""
    lines = []
    notes = {}
    for r in rows:
        for key, column in (("reference_note", "x ref"), ("peer_note", "torch"),
                            ("roofline_note", "roof")):
            if r.get(key):
                notes.setdefault((column, r[key]), []).append(r["optimizer"])
    for (column, note), names in notes.items():
        names = ", ".join(dict.fromkeys(names))
        lines.append(f"{column} '-' for {names}: {note}")
    peers = {r["optimizer"]: r["peer"] for r in rows
             if r.get("peer") and r["time_s"]["torch"] is not None}
    if peers:
        lines.append("torch columns of the classes outside the table: " + "; ".join(
            f"{name} vs {peer}.step()" for name, peer in peers.items()))
    if any("peer" in r for r in rows):
        lines.append("classes outside the table: fastlr = one opt.step() of the fastlr class "
                     "(one param, fresh state), x ref = the same step by its NumPy twin; "
                     + ("NumPy's BLAS limited to each row's thread count (threadpoolctl)"
                        if machine.get("blas_threads_limited") else
                        "NumPy's BLAS threads not limited (pip install threadpoolctl)"))
    return lines


def _other_module_targets(m):
    """'; int8state x86-64-v4, mixed x86-64-v4': the kernel modules built for another level
    than the core loops (none in results from before the key was recorded)."""
    mods = m.get("kernel_modules") or {}
    other = [f"{name} {t}" for name, t in sorted(mods.items()) if t != m["cpu_target"]]
    return "; " + ", ".join(other) if other else ""


def format_report(results):
    """The machine header and the results table, as text."""
    m = results["machine"]
    c = results["config"]
    torch_part = f"torch {m['torch']}" if m.get("torch") else "torch not installed"
    lines = [
        f"fastlr bench: {m['cpu']}, {m['usable_cores']} usable of {m['cores']} cores",
        f"  python {m['python']}, numpy {m['numpy']}, {torch_part}, fastlr {m['fastlr']} "
        f"(core loops {m['cpu_target']}{_other_module_targets(m)}, "
        f"roofline loops {m.get('roofline_loops', '?')}, "
        f"OpenMP {'on' if m['openmp'] else 'off'}), "
        f"OMP_WAIT_POLICY={m.get('omp_wait_policy') or 'unset'}, "
        f"GOMP_SPINCOUNT={m.get('gomp_spincount') or 'unset'}",
        f"  median of {c['repeat']} interleaved rounds per cell; layout {c['layout']}; "
        f"time is one in-place step; xN = that implementation's time / fastlr's;",
        "  GB/s = bytes the step must move / time; roofline = a C loop with the same "
        "streams, same size and threads, this run",
        "",
    ]
    header = ("optimizer", "dtype", "size", "thr", "fastlr", "torch", "x ref", "x numpy",
              "x torch", "torch mode", "GB/s", "roof GB/s", "% roof")
    table = []
    for r in results["rows"]:
        table.append((
            r["optimizer"], r["dtype"], _size_label(r["n"]), str(r["threads"]),
            _time_label(r["time_s"]["fastlr"]), _time_label(r["time_s"]["torch"]),
            _ratio_label(r["speedup"]["reference"]), _ratio_label(r["speedup"]["numpy"]),
            _ratio_label(r["speedup"]["torch"]), _peer_cell(r),
            _gbps_label(r["gbps"]), _gbps_label(r["roofline_gbps"]),
            _gbps_label(r["roofline_fraction"] and 100 * r["roofline_fraction"], "{:.0f}%"),
        ))
    widths = [max(len(h), *(len(row[i]) for row in table)) if table else len(h)
              for i, h in enumerate(header)]
    left = {0, 1, 9}

    def fmt(row):
        return "  ".join(cell.ljust(w) if i in left else cell.rjust(w)
                         for i, (cell, w) in enumerate(zip(row, widths))).rstrip()

    lines.append(fmt(header))
    lines.append(fmt(tuple("-" * w for w in widths)))
    prev = None
    for r, row in zip(results["rows"], table):
        key = (r["optimizer"], r["dtype"])
        if prev is not None and key != prev:
            lines.append("")
        prev = key
        lines.append(fmt(row))
    lines.append("")
    without = sorted({r["optimizer"] for r in results["rows"]
                      if not r.get("numpy_baseline", True)})
    if without:
        lines.append(f"x numpy '-': no in-place NumPy baseline for {', '.join(without)} "
                     f"(fastlr.reference.inplace has none)")
    lines.extend(_extra_legend(results["rows"], m))
    lines.extend(noise_notes(results["rows"]))
    lines.append(f"{len(results['rows'])} rows in {results['elapsed_s']:.1f} s")
    return "\n".join(lines)


def _require_matplotlib():
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("fastlr bench --plot needs matplotlib: pip install 'fastlr[plot]' "
                          "(or pip install matplotlib)") from None
    return Figure


def plot(results, path):
    """Write a PNG bar chart of ``results`` to ``path``: for each dtype and thread count,
    fastlr's speedup over each implementation (log scale) and, below it, fastlr's % of
    the roofline. Needs matplotlib (imported here)."""
    Figure = _require_matplotlib()
    rows = results["rows"]
    panels = sorted({(r["dtype"], r["threads"]) for r in rows}) or [("float32", 1)]
    groups = []
    for r in rows:
        g = (r["optimizer"], r["n"])
        if g not in groups:
            groups.append(g)
    fig = Figure(figsize=(max(7.0, 0.6 * len(groups) + 2.0), 5.0 * len(panels)))
    axes = fig.subplots(2 * len(panels), 1, squeeze=False,
                        gridspec_kw={"height_ratios": [1.6, 1.0] * len(panels)})[:, 0]
    colors = {"reference": "#bbbbbb", "numpy": "#6fa8dc", "torch": "#e69138"}
    x = np.arange(len(groups))
    labels = [f"{o}\n{_size_label(n)}" for o, n in groups]
    peers = any(r.get("peer") for r in rows)
    rotation = 30 if any(len(o) > 10 for o, _ in groups) else 0
    for i, (dtype, k) in enumerate(panels):
        ax, ax2 = axes[2 * i], axes[2 * i + 1]
        by = {(r["optimizer"], r["n"]): r for r in rows
              if r["dtype"] == dtype and r["threads"] == k}
        for j, impl in enumerate(("reference", "numpy", "torch")):
            vals = [by[g]["speedup"][impl] if g in by and by[g]["speedup"][impl] else np.nan
                    for g in groups]
            label = f"vs {impl}" if impl != "torch" or not peers else "vs torch or peer"
            ax.bar(x + (j - 1) * 0.27, vals, 0.27, label=label, color=colors[impl])
        ax.axhline(1.0, color="black", lw=0.8)
        ax.set_yscale("log")
        ax.set_ylabel("speedup (x)")
        ax.set_title(f"{dtype}, {k} thread{'s' if k > 1 else ''}: fastlr's speedup",
                     fontsize=10)
        ax.set_xticks(x, labels, fontsize=7, rotation=rotation)
        ax.legend(fontsize=7, loc="upper right")
        pct = [100 * by[g]["roofline_fraction"] if g in by and by[g]["roofline_fraction"]
               else np.nan for g in groups]
        ax2.bar(x, pct, 0.6, color="#6aa84f")
        ax2.axhline(100.0, color="black", lw=0.8)
        ax2.set_ylabel("% of roofline")
        ax2.set_title("fastlr GB/s / GB/s of a C loop with the same streams (same size)",
                      fontsize=9)
        ax2.set_xticks(x, labels, fontsize=7, rotation=rotation)
    fig.suptitle(f"fastlr bench: {results['machine']['cpu']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    return path


# ---------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------
def _csv(convert, allowed=None, what="value"):
    def parse(text):
        out = []
        for part in text.split(","):
            part = part.strip()
            if not part:
                continue
            value = convert(part)
            if allowed is not None and value not in allowed:
                raise argparse.ArgumentTypeError(
                    f"unknown {what} {part!r}; expected one of {', '.join(allowed)}")
            out.append(value)
        if not out:
            raise argparse.ArgumentTypeError(f"no {what} given")
        return out
    return parse


def _dtype_name(text):
    return {"f32": "float32", "f64": "float64"}.get(text.lower(), text.lower())


def _threads_value(text):
    if text.lower() == "max":
        return max(1, fastlr.get_num_threads())
    try:
        k = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a thread count: {text!r}")
    if k < 1:
        raise argparse.ArgumentTypeError(f"thread counts must be >= 1, got {k}")
    return k


def _parser():
    p = argparse.ArgumentParser(
        prog="fastlr bench",
        description="Time fastlr's optimizer steps against fastlr.reference, in-place NumPy "
                    "and torch (fused), and against this machine's memory bandwidth for the "
                    "same access pattern. About a minute by default; --quick for a few "
                    "seconds.",
        epilog="Runs with OMP_WAIT_POLICY=passive and GOMP_SPINCOUNT=10000 (re-running "
               "itself in a subprocess to set them; values already in the environment are "
               "kept) so that fastlr's and torch's OpenMP threads do not spin against each "
               "other for more than ~0.1 ms.")
    p.add_argument("--optimizers", type=_csv(str.lower, all_optimizers(), "optimizer"),
                   help=f"comma-separated, from the table's rows {', '.join(OPTIMIZERS)} "
                        f"and the classes outside it {', '.join(extra_rows())} "
                        f"(default {','.join(DEFAULT_OPTIMIZERS)})")
    p.add_argument("--sizes", type=_csv(_parse_size, what="size"),
                   help="comma-separated element counts, K/M/G = 2**10/20/30 "
                        "(default 1K,64K,1M,16M)")
    p.add_argument("--dtypes", type=_csv(_dtype_name, ("float32", "float64"), "dtype"),
                   help="float32,float64 (default float32)")
    p.add_argument("--threads", type=_csv(_threads_value, what="thread count"),
                   help="comma-separated thread counts, or max (default 1,max)")
    p.add_argument("--repeat", type=int, help=f"interleaved rounds (default {DEFAULT_REPEAT})")
    p.add_argument("--min-sample", type=float, help="seconds per timed batch (default 0.005)")
    p.add_argument("--layout", choices=("staggered", "natural"), default="staggered",
                   help="buffer placement: staggered (default, conflict-free, the same for "
                        "every implementation) or natural (separate np.zeros arrays)")
    p.add_argument("--quick", action="store_true",
                   help="a few-seconds smoke run (sgd,adam; 1K,64K; 3 rounds)")
    p.add_argument("--no-torch", action="store_true", help="skip torch even if installed")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON ('-': stdout)")
    p.add_argument("--plot", metavar="PATH", help="write a PNG bar chart (needs matplotlib)")
    p.add_argument("--spin-count", type=int, metavar="N",
                   help="GOMP_SPINCOUNT for both OpenMP runtimes (default: the environment's, "
                        f"else {DEFAULT_SPIN_COUNT}; 0: pure passive waiting)")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return p


def _openmp_env(spin_count):
    """The OpenMP variables the benchmark wants: the environment's, else ours."""
    want = {"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "passive"),
            "GOMP_SPINCOUNT": os.environ.get("GOMP_SPINCOUNT", str(DEFAULT_SPIN_COUNT))}
    if spin_count is not None:
        want["GOMP_SPINCOUNT"] = str(spin_count)
    return want


def _relaunch(argv, openmp_env):
    """Run ``fastlr bench`` again in a child with ``openmp_env`` set; its exit code."""
    env = dict(os.environ)
    env.update(openmp_env)
    env["FASTLR_BENCH_CHILD"] = "1"
    root = os.path.dirname(os.path.dirname(os.path.abspath(fastlr.__file__)))
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in
                                                  env.get("PYTHONPATH", "").split(os.pathsep)
                                                  if p])
    # drop sys.path[0] (the current directory for -c): at the top of a clone it would
    # import the source tree instead of the fastlr this process runs
    code = ("import sys; sys.path.pop(0); from fastlr._tools.bench import main; "
            "sys.exit(main(sys.argv[1:]))")
    try:
        code = subprocess.call([sys.executable, "-c", code, *argv], env=env)
    except KeyboardInterrupt:
        return 130
    if code < 0:                                  # killed by a signal
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = (": the system may have run out of memory (try smaller --sizes)"
                if -code == signal.SIGKILL else "")
        print(f"fastlr bench: the benchmark process was killed by {name}{hint}",
              file=sys.stderr)
        return 128 - code
    return code


def main(argv=None):
    """``fastlr bench [options]``; returns the exit code (0 on success)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:                       # --help or a usage error
        return e.code if isinstance(e.code, int) else 2
    if args.repeat is not None and args.repeat < 1:
        print("fastlr bench: --repeat must be >= 1", file=sys.stderr)
        return 2
    if args.plot:
        try:
            _require_matplotlib()
        except ImportError as e:
            print(f"fastlr bench: {e}", file=sys.stderr)
            return 2
    if args.min_sample is not None and not 0 < args.min_sample < math.inf:
        print(f"fastlr bench: --min-sample must be a positive number of seconds, got "
              f"{args.min_sample:g}", file=sys.stderr)
        return 2
    if args.spin_count is not None and args.spin_count < 0:
        print("fastlr bench: --spin-count must be >= 0", file=sys.stderr)
        return 2
    openmp_env = _openmp_env(args.spin_count)
    if (any(os.environ.get(k) != v for k, v in openmp_env.items())
            and not os.environ.get("FASTLR_BENCH_CHILD")):
        return _relaunch(argv, openmp_env)
    try:
        results = run(args.optimizers, args.sizes, args.dtypes, args.threads, args.repeat,
                      quick=args.quick, torch=False if args.no_torch else None,
                      layout=args.layout, min_sample=args.min_sample,
                      progress=None if args.quiet else sys.stderr)
    except KeyboardInterrupt:
        print("\nfastlr bench: interrupted", file=sys.stderr)
        return 130
    to_stdout_json = args.json == "-"
    report = format_report(results)
    print(report, file=sys.stderr if to_stdout_json else sys.stdout)
    if args.json:
        text = json.dumps(results, indent=1, allow_nan=False)
        if to_stdout_json:
            sys.stdout.write(text + "\n")
        else:
            with open(args.json, "w") as f:
                f.write(text + "\n")
            print(f"results written to {args.json}", file=sys.stderr)
    if args.plot:
        plot(results, args.plot)
        print(f"chart written to {args.plot}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Parity of fastlr's optimizer kernels with ``torch.optim`` 2.13.

Both implementations are checked against torch's single-tensor path
(``foreach=False``): the pure-NumPy oracle ``fastlr.reference`` and the
compiled ``fastlr.kernels``.  Each case runs 100 steps with seeded random
gradients (whose scale varies from step to step, so that ``eps`` and the
AMSGrad maximum both matter) in float32 and float64, for a 2-D and a 1-D
parameter, and compares the parameter *and every state buffer* after every
step, with the tolerances of docs/design.md (Numerics)::

    max|fastlr - torch| <= rtol * max(1, max|torch|)
    rtol = 1e-10 (float64), 1e-4 (float32)

The torch trajectory of each case is computed once and shared by the two
implementations.  The whole file runs in a few seconds.
"""

import contextlib
import functools
import importlib
import zlib

import numpy as np
import pytest

torch = pytest.importorskip(
    "torch",
    reason="torch not installed; pip install torch==2.13.0 to run the parity tests",
)

N_STEPS = 100
SHAPES = [(7, 13), (37,)]
DTYPES = [np.float64, np.float32]
RTOL = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-4}


# ---------------------------------------------------------------------------
# cases: (id, torch optimizer, torch kwargs, fastlr function, fastlr kwargs,
#         state buffers)  -- fastlr's optional state is switched on by
#         passing a buffer, so "state" lists the buffers this case uses.
#         All names in "state" are both torch's state keys and fastlr's
#         argument names.
# ---------------------------------------------------------------------------

def _sgd(id, **kw):
    state = ("momentum_buffer",) if kw.get("momentum", 0) != 0 else ()
    return pytest.param("SGD", kw, "sgd", kw, state, id=f"sgd-{id}")


def _rmsprop(id, centered=False, **kw):
    state = ("square_avg",)
    if kw.get("momentum", 0) > 0:
        state += ("momentum_buffer",)
    if centered:
        state += ("grad_avg",)
    return pytest.param("RMSprop", dict(kw, centered=centered), "rmsprop", kw,
                        state, id=f"rmsprop-{id}")


def _adam(id, cls="Adam", amsgrad=False, betas=(0.8, 0.95), **kw):
    state = ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if amsgrad else ())
    torch_kw = dict(kw, amsgrad=amsgrad, betas=betas)
    fl_kw = dict(kw, beta1=betas[0], beta2=betas[1])
    return pytest.param(cls, torch_kw, cls.lower(), fl_kw, state,
                        id=f"{cls.lower()}-{id}")


SGD_BASE = dict(lr=0.05)
RMS_BASE = dict(lr=1e-2, alpha=0.9, eps=1e-4)
ADAM_BASE = dict(lr=1e-2, eps=1e-3)

CASES = [
    # --- SGD -----------------------------------------------------------
    _sgd("plain", **SGD_BASE),
    _sgd("momentum", **SGD_BASE, momentum=0.9),
    _sgd("dampening", **SGD_BASE, momentum=0.9, dampening=0.1),
    _sgd("nesterov", **SGD_BASE, momentum=0.9, nesterov=True),
    _sgd("weight_decay", **SGD_BASE, weight_decay=0.05),
    _sgd("weight_decay-momentum", **SGD_BASE, momentum=0.9, dampening=0.1,
         weight_decay=0.05),
    _sgd("maximize", **SGD_BASE, maximize=True),
    _sgd("maximize-momentum", **SGD_BASE, momentum=0.9, maximize=True),
    _sgd("all", **SGD_BASE, momentum=0.8, nesterov=True, weight_decay=0.05,
         maximize=True),
    # --- RMSprop -------------------------------------------------------
    _rmsprop("plain", **RMS_BASE),
    _rmsprop("centered", centered=True, **RMS_BASE),
    _rmsprop("momentum", **RMS_BASE, momentum=0.9),
    _rmsprop("weight_decay", **RMS_BASE, weight_decay=0.05),
    _rmsprop("maximize", **RMS_BASE, maximize=True),
    _rmsprop("centered-momentum", centered=True, **RMS_BASE, momentum=0.9),
    _rmsprop("all", centered=True, **RMS_BASE, momentum=0.7, weight_decay=0.05,
             maximize=True),
    # --- Adam ----------------------------------------------------------
    _adam("plain", **ADAM_BASE),
    _adam("amsgrad", amsgrad=True, **ADAM_BASE),
    _adam("weight_decay", **ADAM_BASE, weight_decay=0.05),
    _adam("decoupled_weight_decay", **ADAM_BASE, weight_decay=0.05,
          decoupled_weight_decay=True),
    _adam("maximize", **ADAM_BASE, maximize=True),
    # beta1 < 0.5: torch's lerp switches to its other formula
    _adam("small_beta1", betas=(0.3, 0.9), **ADAM_BASE),
    _adam("all", amsgrad=True, **ADAM_BASE, weight_decay=0.05,
          decoupled_weight_decay=True, maximize=True),
    _adam("amsgrad-l2-maximize", amsgrad=True, **ADAM_BASE, weight_decay=0.05,
          maximize=True),
    # --- AdamW ---------------------------------------------------------
    _adam("default_weight_decay", cls="AdamW", **ADAM_BASE),
    _adam("weight_decay", cls="AdamW", **ADAM_BASE, weight_decay=0.1),
    _adam("amsgrad", cls="AdamW", amsgrad=True, **ADAM_BASE, weight_decay=0.1),
    _adam("amsgrad-maximize", cls="AdamW", amsgrad=True, **ADAM_BASE,
          weight_decay=0.1, maximize=True),
]


# ---------------------------------------------------------------------------
# data and the torch side
# ---------------------------------------------------------------------------

def _seed(*parts):
    return zlib.crc32(repr(parts).encode())


def _problem(torch_name, torch_kw, shape, dtype):
    """Seeded initial parameter and N_STEPS gradients of varying scale."""
    rng = np.random.default_rng(_seed(torch_name, sorted(torch_kw.items()), shape))
    p0 = rng.standard_normal(shape)
    scales = 10.0 ** rng.uniform(-2.0, 1.0, size=N_STEPS)
    grads = [s * rng.standard_normal(shape) for s in scales]
    return p0.astype(dtype), [g.astype(dtype) for g in grads]


@contextlib.contextmanager
def _torch_default_dtype(dtype):
    """Temporarily set torch's default dtype (restored on exit).

    Torch keeps its Adam/RMSprop step count in a tensor of the default dtype
    (float32 unless the default is float64), so float64 runs use a float64
    default to keep everything in double precision.
    """
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64 if dtype == np.float64 else torch.float32)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


@functools.lru_cache(maxsize=None)
def _torch_trajectory(torch_name, torch_kw_items, state, shape, dtype):
    """Per-step snapshots {name: ndarray} of param and state from torch."""
    torch_kw = dict(torch_kw_items)
    p0, grads = _problem(torch_name, torch_kw, shape, dtype)
    snapshots = []
    with _torch_default_dtype(dtype), torch.no_grad():
        param = torch.nn.Parameter(torch.from_numpy(p0.copy()))
        opt = getattr(torch.optim, torch_name)([param], foreach=False, **torch_kw)
        for g in grads:
            param.grad = torch.from_numpy(g.copy())
            opt.step()
            st = opt.state[param]
            snap = {"param": param.detach().numpy().copy()}
            for name in state:
                snap[name] = st[name].detach().numpy().copy()
            snapshots.append(snap)
    return snapshots


# ---------------------------------------------------------------------------
# the implementations under test
# ---------------------------------------------------------------------------

@pytest.fixture(params=["reference", "kernels"])
def impl(request):
    """fastlr.reference (pure NumPy) or fastlr.kernels (compiled).

    Imported lazily so the reference half runs even when the extension has
    not been built; the compiled half then errors (it does not skip: a
    missing build must not pass silently).
    """
    return importlib.import_module(f"fastlr.{request.param}")


def _assert_close(name, got, want, step, dtype):
    assert got.dtype == want.dtype == dtype, (name, got.dtype, want.dtype)
    assert got.shape == want.shape, (name, got.shape, want.shape)
    with np.errstate(invalid="ignore"):
        scale = max(1.0, float(np.max(np.abs(want))))
        err = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64))))
    tol = RTOL[np.dtype(dtype)] * scale
    assert err <= tol, (
        f"{name} after step {step}: max|fastlr - torch| = {err:.3e} > {tol:.3e}"
    )


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("torch_name, torch_kw, fl_name, fl_kw, state", CASES)
def test_parity(impl, torch_name, torch_kw, fl_name, fl_kw, state, shape, dtype):
    dtype = np.dtype(dtype)
    expected = _torch_trajectory(
        torch_name, tuple(sorted(torch_kw.items())), state, shape, dtype.type
    )
    p0, grads = _problem(torch_name, torch_kw, shape, dtype)

    fn = getattr(impl, fl_name)
    param = p0.copy()
    buffers = {name: np.zeros_like(param) for name in state}
    takes_step = fl_name != "rmsprop"

    for t, (g, want) in enumerate(zip(grads, expected), start=1):
        g_before = g.copy()
        kw = dict(fl_kw, step=t) if takes_step else fl_kw
        assert fn(param, g, **buffers, **kw) is None
        np.testing.assert_array_equal(g, g_before, err_msg="grad was modified")
        _assert_close("param", param, want["param"], t, dtype)
        for name in state:
            _assert_close(name, buffers[name], want[name], t, dtype)

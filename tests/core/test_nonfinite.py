"""NaN and +-Inf in the gradient, a param or a state buffer, for every optimizer.

Default (``skip_nonfinite=False``): non-finite values propagate element-wise, as in torch.
Each case warms up with one finite step, puts the value at element 1 of param 0 (its grad,
the param itself, or one state buffer through the live view ``opt.state[0][name]``), steps
once more and checks:

* the result is :meth:`Optimizer.step_reference`'s on a copy (fastlr.reference), with NaN,
  +Inf and -Inf at the same places (Adam/AdamW's finite params to their few-ulp tolerance);
* the result is torch.optim's (``foreach=False``) for the nine torch families, element by
  element: the same class (finite, NaN, +Inf, -Inf) everywhere and finite values within
  the parity tolerance of docs/design.md (Numerics) (skipped without torch);
* only element 1 of param 0 and of its state is touched by the value: every other element
  of every buffer stays finite (updates are element-wise; no clipping here);
* what element 1 becomes in the param and in each state buffer is EXPECTED below (the table
  of docs/nonfinite.md is this dict).

``skip_nonfinite=True`` scans the grads only: a non-finite grad skips the whole step (False
returned; params, state, per-param step counts, ``steps`` and the next lr bit-identical;
``skipped_steps`` + 1), while a non-finite param or state buffer is not looked at: the step
is applied, bit-identical to the default. ``fastlr.clip_grad_norm`` with a NaN/Inf grad does
what torch's ``clip_grad_norm_`` does (factor NaN, or 0 so that Inf * 0 = NaN), and
``error_if_nonfinite=True`` raises without writing.
"""

import pathlib
import warnings

import numpy as np
import pytest

import fastlr

# name: (fastlr constructor kwargs, torch kwargs or None); every state buffer switched on.
OPTIMIZERS = {
    "SGD": dict(lr=0.01, momentum=0.9),
    "RMSprop": dict(lr=0.01, momentum=0.9, centered=True),
    "Adam": dict(lr=0.01, amsgrad=True),
    "AdamW": dict(lr=0.01),
    "Adagrad": dict(lr=0.01),
    "Adadelta": dict(lr=1.0),
    "Adamax": dict(lr=0.01),
    "NAdam": dict(lr=0.01),
    "RAdam": dict(lr=0.01),
    "Lion": dict(lr=0.01),
}
TORCH_FAMILIES = [name for name in OPTIMIZERS if name != "Lion"]   # torch 2.13 has no Lion
TORCH_STATE = {"state_sum": "sum"}        # fastlr name -> torch name, where they differ

STATE = {"SGD": ("momentum_buffer",), "RMSprop": ("square_avg", "momentum_buffer", "grad_avg"),
         "Adam": ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"), "AdamW": ("exp_avg", "exp_avg_sq"),
         "Adagrad": ("state_sum",), "Adadelta": ("square_avg", "acc_delta"),
         "Adamax": ("exp_avg", "exp_inf"), "NAdam": ("exp_avg", "exp_avg_sq"),
         "RAdam": ("exp_avg", "exp_avg_sq"), "Lion": ("exp_avg",)}

VALUES = {"nan": np.nan, "+inf": np.inf, "-inf": -np.inf}
DTYPES = (np.float64, np.float32)
SHAPES = ((5,), (3,))


def places(name):
    """Where a value can be put: the grad, the param, each state buffer."""
    return ("grad", "param") + STATE[name]


def cases():
    for name in OPTIMIZERS:
        for where in places(name):
            for value in VALUES:
                yield name, where, value


def classify(x):
    """'fin', 'nan', '+inf' or '-inf'."""
    x = float(x)
    if np.isnan(x):
        return "nan"
    if np.isinf(x):
        return "+inf" if x > 0 else "-inf"
    return "fin"


# ---------------------------------------------------------------------------------------
# running a case
# ---------------------------------------------------------------------------------------
def initial(dtype):
    params = [np.linspace(-1.0, 1.0, 5).astype(dtype), np.array([0.5, -0.25, 2.0], dtype)]
    grads = [[np.array([0.3, -0.2, 0.1, 0.4, -0.5], dtype), np.array([0.1, 0.2, -0.3], dtype)],
             [np.array([-0.1, 0.25, 0.2, -0.3, 0.05], dtype),
              np.array([0.2, -0.1, 0.4], dtype)]]
    return params, grads


def build(name, dtype, **options):
    params, grads = initial(dtype)
    opt = getattr(fastlr, name)(params, **OPTIMIZERS[name], **options)
    return opt, params, grads


def inject(opt, params, grads, where, value):
    """Put `value` at element 1 of param 0's grad, param or state buffer `where`."""
    if where == "grad":
        grads[1][0] = grads[1][0].copy()
        grads[1][0][1] = value
    elif where == "param":
        params[0][1] = value
    else:
        opt.state[0][where][1] = value          # a live view


def run_case(name, where, value, dtype, *, reference=False, **options):
    """Warm-up step, injection, step: (optimizer, params, what step returned)."""
    opt, params, grads = build(name, dtype, **options)
    step = opt.step_reference if reference else opt.step
    with np.errstate(all="ignore"):
        step(grads[0])
        inject(opt, params, grads, where, VALUES[value])
        out = step(grads[1])
    return opt, params, out


def buffers(opt, params):
    """{'param': params[0], state name: buffer of param 0, ...} and the same for param 1."""
    out = []
    for i, p in enumerate(params):
        d = {"param": p}
        d.update({k: v for k, v in opt.state[i].items() if isinstance(v, np.ndarray)})
        out.append(d)
    return out


# ---------------------------------------------------------------------------------------
# the documented behaviour: EXPECTED[(optimizer, where, value)] = {buffer: class}
# (element 1 of param 0 after the step; every buffer not listed stays finite)
# ---------------------------------------------------------------------------------------
EXPECTED = {
    ('SGD', 'grad', 'nan'): {'param': 'nan', 'momentum_buffer': 'nan'},
    ('SGD', 'grad', '+inf'): {'param': '-inf', 'momentum_buffer': '+inf'},
    ('SGD', 'grad', '-inf'): {'param': '+inf', 'momentum_buffer': '-inf'},
    ('SGD', 'param', 'nan'): {'param': 'nan'},
    ('SGD', 'param', '+inf'): {'param': '+inf'},
    ('SGD', 'param', '-inf'): {'param': '-inf'},
    ('SGD', 'momentum_buffer', 'nan'): {'param': 'nan', 'momentum_buffer': 'nan'},
    ('SGD', 'momentum_buffer', '+inf'): {'param': '-inf', 'momentum_buffer': '+inf'},
    ('SGD', 'momentum_buffer', '-inf'): {'param': '+inf', 'momentum_buffer': '-inf'},
    ('RMSprop', 'grad', 'nan'): {'param': 'nan', 'square_avg': 'nan', 'momentum_buffer': 'nan',
        'grad_avg': 'nan'},
    ('RMSprop', 'grad', '+inf'): {'param': 'nan', 'square_avg': '+inf', 'momentum_buffer': 'nan',
        'grad_avg': '+inf'},
    ('RMSprop', 'grad', '-inf'): {'param': 'nan', 'square_avg': '+inf', 'momentum_buffer': 'nan',
        'grad_avg': '-inf'},
    ('RMSprop', 'param', 'nan'): {'param': 'nan'},
    ('RMSprop', 'param', '+inf'): {'param': '+inf'},
    ('RMSprop', 'param', '-inf'): {'param': '-inf'},
    ('RMSprop', 'square_avg', 'nan'): {'param': 'nan', 'square_avg': 'nan',
        'momentum_buffer': 'nan'},
    ('RMSprop', 'square_avg', '+inf'): {'square_avg': '+inf'},
    ('RMSprop', 'square_avg', '-inf'): {'param': 'nan', 'square_avg': '-inf',
        'momentum_buffer': 'nan'},
    ('RMSprop', 'momentum_buffer', 'nan'): {'param': 'nan', 'momentum_buffer': 'nan'},
    ('RMSprop', 'momentum_buffer', '+inf'): {'param': '-inf', 'momentum_buffer': '+inf'},
    ('RMSprop', 'momentum_buffer', '-inf'): {'param': '+inf', 'momentum_buffer': '-inf'},
    ('RMSprop', 'grad_avg', 'nan'): {'param': 'nan', 'momentum_buffer': 'nan', 'grad_avg': 'nan'},
    ('RMSprop', 'grad_avg', '+inf'): {'param': 'nan', 'momentum_buffer': 'nan', 'grad_avg': 'nan'},
    ('RMSprop', 'grad_avg', '-inf'): {'param': 'nan', 'momentum_buffer': 'nan', 'grad_avg': 'nan'},
    ('Adam', 'grad', 'nan'): {'param': 'nan', 'exp_avg': 'nan', 'exp_avg_sq': 'nan',
        'max_exp_avg_sq': 'nan'},
    ('Adam', 'grad', '+inf'): {'param': 'nan', 'exp_avg': '+inf', 'exp_avg_sq': '+inf',
        'max_exp_avg_sq': '+inf'},
    ('Adam', 'grad', '-inf'): {'param': 'nan', 'exp_avg': '-inf', 'exp_avg_sq': '+inf',
        'max_exp_avg_sq': '+inf'},
    ('Adam', 'param', 'nan'): {'param': 'nan'},
    ('Adam', 'param', '+inf'): {'param': '+inf'},
    ('Adam', 'param', '-inf'): {'param': '-inf'},
    ('Adam', 'exp_avg', 'nan'): {'param': 'nan', 'exp_avg': 'nan'},
    ('Adam', 'exp_avg', '+inf'): {'param': 'nan', 'exp_avg': 'nan'},
    ('Adam', 'exp_avg', '-inf'): {'param': 'nan', 'exp_avg': 'nan'},
    ('Adam', 'exp_avg_sq', 'nan'): {'param': 'nan', 'exp_avg_sq': 'nan', 'max_exp_avg_sq': 'nan'},
    ('Adam', 'exp_avg_sq', '+inf'): {'exp_avg_sq': '+inf', 'max_exp_avg_sq': '+inf'},
    ('Adam', 'exp_avg_sq', '-inf'): {'exp_avg_sq': '-inf'},
    ('Adam', 'max_exp_avg_sq', 'nan'): {'param': 'nan', 'max_exp_avg_sq': 'nan'},
    ('Adam', 'max_exp_avg_sq', '+inf'): {'max_exp_avg_sq': '+inf'},
    ('Adam', 'max_exp_avg_sq', '-inf'): {},
    ('AdamW', 'grad', 'nan'): {'param': 'nan', 'exp_avg': 'nan', 'exp_avg_sq': 'nan'},
    ('AdamW', 'grad', '+inf'): {'param': 'nan', 'exp_avg': '+inf', 'exp_avg_sq': '+inf'},
    ('AdamW', 'grad', '-inf'): {'param': 'nan', 'exp_avg': '-inf', 'exp_avg_sq': '+inf'},
    ('AdamW', 'param', 'nan'): {'param': 'nan'},
    ('AdamW', 'param', '+inf'): {'param': '+inf'},
    ('AdamW', 'param', '-inf'): {'param': '-inf'},
    ('AdamW', 'exp_avg', 'nan'): {'param': 'nan', 'exp_avg': 'nan'},
    ('AdamW', 'exp_avg', '+inf'): {'param': 'nan', 'exp_avg': 'nan'},
    ('AdamW', 'exp_avg', '-inf'): {'param': 'nan', 'exp_avg': 'nan'},
    ('AdamW', 'exp_avg_sq', 'nan'): {'param': 'nan', 'exp_avg_sq': 'nan'},
    ('AdamW', 'exp_avg_sq', '+inf'): {'exp_avg_sq': '+inf'},
    ('AdamW', 'exp_avg_sq', '-inf'): {'param': 'nan', 'exp_avg_sq': '-inf'},
    ('Adagrad', 'grad', 'nan'): {'param': 'nan', 'state_sum': 'nan'},
    ('Adagrad', 'grad', '+inf'): {'param': 'nan', 'state_sum': '+inf'},
    ('Adagrad', 'grad', '-inf'): {'param': 'nan', 'state_sum': '+inf'},
    ('Adagrad', 'param', 'nan'): {'param': 'nan'},
    ('Adagrad', 'param', '+inf'): {'param': '+inf'},
    ('Adagrad', 'param', '-inf'): {'param': '-inf'},
    ('Adagrad', 'state_sum', 'nan'): {'param': 'nan', 'state_sum': 'nan'},
    ('Adagrad', 'state_sum', '+inf'): {'state_sum': '+inf'},
    ('Adagrad', 'state_sum', '-inf'): {'param': 'nan', 'state_sum': '-inf'},
    ('Adadelta', 'grad', 'nan'): {'param': 'nan', 'square_avg': 'nan', 'acc_delta': 'nan'},
    ('Adadelta', 'grad', '+inf'): {'param': 'nan', 'square_avg': '+inf', 'acc_delta': 'nan'},
    ('Adadelta', 'grad', '-inf'): {'param': 'nan', 'square_avg': '+inf', 'acc_delta': 'nan'},
    ('Adadelta', 'param', 'nan'): {'param': 'nan'},
    ('Adadelta', 'param', '+inf'): {'param': '+inf'},
    ('Adadelta', 'param', '-inf'): {'param': '-inf'},
    ('Adadelta', 'square_avg', 'nan'): {'param': 'nan', 'square_avg': 'nan', 'acc_delta': 'nan'},
    ('Adadelta', 'square_avg', '+inf'): {'square_avg': '+inf'},
    ('Adadelta', 'square_avg', '-inf'): {'param': 'nan', 'square_avg': '-inf', 'acc_delta': 'nan'},
    ('Adadelta', 'acc_delta', 'nan'): {'param': 'nan', 'acc_delta': 'nan'},
    ('Adadelta', 'acc_delta', '+inf'): {'param': '-inf', 'acc_delta': '+inf'},
    ('Adadelta', 'acc_delta', '-inf'): {'param': 'nan', 'acc_delta': 'nan'},
    ('Adamax', 'grad', 'nan'): {'param': 'nan', 'exp_avg': 'nan', 'exp_inf': 'nan'},
    ('Adamax', 'grad', '+inf'): {'param': 'nan', 'exp_avg': '+inf', 'exp_inf': '+inf'},
    ('Adamax', 'grad', '-inf'): {'param': 'nan', 'exp_avg': '-inf', 'exp_inf': '+inf'},
    ('Adamax', 'param', 'nan'): {'param': 'nan'},
    ('Adamax', 'param', '+inf'): {'param': '+inf'},
    ('Adamax', 'param', '-inf'): {'param': '-inf'},
    ('Adamax', 'exp_avg', 'nan'): {'param': 'nan', 'exp_avg': 'nan'},
    ('Adamax', 'exp_avg', '+inf'): {'param': 'nan', 'exp_avg': 'nan'},
    ('Adamax', 'exp_avg', '-inf'): {'param': 'nan', 'exp_avg': 'nan'},
    ('Adamax', 'exp_inf', 'nan'): {'param': 'nan', 'exp_inf': 'nan'},
    ('Adamax', 'exp_inf', '+inf'): {'exp_inf': '+inf'},
    ('Adamax', 'exp_inf', '-inf'): {},
    ('NAdam', 'grad', 'nan'): {'param': 'nan', 'exp_avg': 'nan', 'exp_avg_sq': 'nan'},
    ('NAdam', 'grad', '+inf'): {'param': 'nan', 'exp_avg': '+inf', 'exp_avg_sq': '+inf'},
    ('NAdam', 'grad', '-inf'): {'param': 'nan', 'exp_avg': '-inf', 'exp_avg_sq': '+inf'},
    ('NAdam', 'param', 'nan'): {'param': 'nan'},
    ('NAdam', 'param', '+inf'): {'param': '+inf'},
    ('NAdam', 'param', '-inf'): {'param': '-inf'},
    ('NAdam', 'exp_avg', 'nan'): {'param': 'nan', 'exp_avg': 'nan'},
    ('NAdam', 'exp_avg', '+inf'): {'param': 'nan', 'exp_avg': 'nan'},
    ('NAdam', 'exp_avg', '-inf'): {'param': 'nan', 'exp_avg': 'nan'},
    ('NAdam', 'exp_avg_sq', 'nan'): {'param': 'nan', 'exp_avg_sq': 'nan'},
    ('NAdam', 'exp_avg_sq', '+inf'): {'exp_avg_sq': '+inf'},
    ('NAdam', 'exp_avg_sq', '-inf'): {'param': 'nan', 'exp_avg_sq': '-inf'},
    ('RAdam', 'grad', 'nan'): {'param': 'nan', 'exp_avg': 'nan', 'exp_avg_sq': 'nan'},
    ('RAdam', 'grad', '+inf'): {'param': '-inf', 'exp_avg': '+inf', 'exp_avg_sq': '+inf'},
    ('RAdam', 'grad', '-inf'): {'param': '+inf', 'exp_avg': '-inf', 'exp_avg_sq': '+inf'},
    ('RAdam', 'param', 'nan'): {'param': 'nan'},
    ('RAdam', 'param', '+inf'): {'param': '+inf'},
    ('RAdam', 'param', '-inf'): {'param': '-inf'},
    ('RAdam', 'exp_avg', 'nan'): {'param': 'nan', 'exp_avg': 'nan'},
    ('RAdam', 'exp_avg', '+inf'): {'param': 'nan', 'exp_avg': 'nan'},
    ('RAdam', 'exp_avg', '-inf'): {'param': 'nan', 'exp_avg': 'nan'},
    ('RAdam', 'exp_avg_sq', 'nan'): {'exp_avg_sq': 'nan'},
    ('RAdam', 'exp_avg_sq', '+inf'): {'exp_avg_sq': '+inf'},
    ('RAdam', 'exp_avg_sq', '-inf'): {'exp_avg_sq': '-inf'},
    ('Lion', 'grad', 'nan'): {'param': 'nan', 'exp_avg': 'nan'},
    ('Lion', 'grad', '+inf'): {'exp_avg': '+inf'},
    ('Lion', 'grad', '-inf'): {'exp_avg': '-inf'},
    ('Lion', 'param', 'nan'): {'param': 'nan'},
    ('Lion', 'param', '+inf'): {'param': 'nan'},
    ('Lion', 'param', '-inf'): {'param': 'nan'},
    ('Lion', 'exp_avg', 'nan'): {'param': 'nan', 'exp_avg': 'nan'},
    ('Lion', 'exp_avg', '+inf'): {'exp_avg': '+inf'},
    ('Lion', 'exp_avg', '-inf'): {'exp_avg': '-inf'},
}


# ---------------------------------------------------------------------------------------
# tests: default behaviour
# ---------------------------------------------------------------------------------------
def assert_same_classes_and_close(got, want, what, tol):
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    gc = [classify(x) for x in got.ravel()]
    wc = [classify(x) for x in want.ravel()]
    assert gc == wc, f"{what}: non-finite pattern {gc} != {wc}"
    fin = np.isfinite(want)
    scale = max(1.0, float(np.max(np.abs(want[fin]), initial=0.0)))
    err = float(np.max(np.abs(got[fin] - want[fin]), initial=0.0))
    assert err <= tol * scale, f"{what}: max|diff| {err:.3e} > {tol * scale:.3e}"


def assert_same_bits_nan_aware(got, want, what):
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype and got.shape == want.shape
    gn, wn = np.isnan(got), np.isnan(want)
    assert np.array_equal(gn, wn), f"{what}: NaN at {np.flatnonzero(gn)} vs {np.flatnonzero(wn)}"
    assert got[~gn].tobytes() == want[~wn].tobytes(), f"{what}: {got} != {want}"


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name,where,value", list(cases()))
def test_default_propagates_like_reference(name, where, value, dtype):
    opt, params, out = run_case(name, where, value, dtype)
    ref, ref_params, ref_out = run_case(name, where, value, dtype, reference=True)
    assert out is None and ref_out is None
    assert opt.steps == ref.steps == 2
    for i, (got, want) in enumerate(zip(buffers(opt, params), buffers(ref, ref_params))):
        assert sorted(got) == sorted(want)
        for k in got:
            what = f"{name}: {value} in {where}: {k} of param {i}"
            if name in ("Adam", "AdamW") and k == "param":
                tol = 1e-5 if dtype == np.float32 else 1e-14
                assert_same_classes_and_close(got[k], want[k], what, tol)
            else:
                assert_same_bits_nan_aware(got[k], want[k], what)


@pytest.mark.parametrize("name,where,value", list(cases()))
def test_default_touches_only_that_element(name, where, value):
    """Updates are element-wise: elements other than 1 of param 0 stay finite everywhere,
    and element 1 becomes EXPECTED."""
    opt, params, _ = run_case(name, where, value, np.float64)
    for i, bufs in enumerate(buffers(opt, params)):
        for k, buf in bufs.items():
            others = np.delete(buf.ravel(), 1) if i == 0 else buf.ravel()
            assert np.isfinite(others).all(), f"{name}: {value} in {where} spread in {k}"
    got = {k: classify(v[1]) for k, v in buffers(opt, params)[0].items()}
    want = {k: "fin" for k in got}
    want.update(EXPECTED[(name, where, value)])
    assert got == want


def torch_run(torch, name, where, value, dtype):
    """The same case with torch.optim (foreach=False): (param tensors, their states)."""
    tdtype = torch.float64 if dtype == np.float64 else torch.float32
    params, grads = initial(dtype)
    tparams = [torch.tensor(p, dtype=tdtype) for p in params]
    opt = getattr(torch.optim, name)(tparams, **OPTIMIZERS[name], foreach=False)
    for k, step_grads in enumerate(grads):
        if k == 1:
            if where == "grad":
                step_grads = [g.copy() for g in step_grads]
                step_grads[0][1] = VALUES[value]
            elif where == "param":
                with torch.no_grad():
                    tparams[0][1] = VALUES[value]
            else:
                opt.state[tparams[0]][TORCH_STATE.get(where, where)][1] = VALUES[value]
        for p, g in zip(tparams, step_grads):
            p.grad = torch.tensor(g, dtype=tdtype)
        opt.step()
    return tparams, [opt.state[p] for p in tparams]


@pytest.mark.parametrize("name,where,value",
                         [c for c in cases() if c[0] in TORCH_FAMILIES])
def test_default_matches_torch(name, where, value):
    torch = pytest.importorskip("torch", reason="torch not installed")
    dtype = np.float64
    tparams, tstate = torch_run(torch, name, where, value, dtype)
    opt, params, _ = run_case(name, where, value, dtype)
    tol = 1e-8 if name == "NAdam" else 1e-10
    for i, bufs in enumerate(buffers(opt, params)):
        for k, buf in bufs.items():
            want = tparams[i].detach() if k == "param" else tstate[i][TORCH_STATE.get(k, k)]
            assert_same_classes_and_close(buf, want.numpy(), f"{name}: {value} in {where}: "
                                          f"{k} of param {i} vs torch", tol)


# ---------------------------------------------------------------------------------------
# tests: skip_nonfinite=True
# ---------------------------------------------------------------------------------------
def snapshot(opt, params):
    return {"steps": opt.steps, "skipped": opt.skipped_steps, "next_lr": repr(opt.next_lr),
            "counts": {i: st["step"] for i, st in opt.state.items()},
            "scalars": {i: {k: repr(v) for k, v in st.items() if not isinstance(v, np.ndarray)}
                        for i, st in opt.state.items()},
            "bufs": [{k: (v.dtype.str, v.shape, v.tobytes(order="A")) for k, v in b.items()}
                     for b in buffers(opt, params)]}


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("value", VALUES)
@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("reference", [False, True], ids=["step", "step_reference"])
def test_skip_nonfinite_grad_changes_nothing(name, value, dtype, reference):
    opt, params, grads = build(name, dtype, skip_nonfinite=True)
    step = opt.step_reference if reference else opt.step
    assert step(grads[0]) is True
    before = snapshot(opt, params)
    bad = [g.copy() for g in grads[1]]
    bad[1][2] = VALUES[value]                 # in the second param's grad: nothing moves
    assert step(bad) is False
    after = snapshot(opt, params)
    assert after["skipped"] == before["skipped"] + 1
    before["skipped"] = after["skipped"]
    assert after == before
    # ... and the next finite step is the one a run without the bad grads takes
    assert step(grads[1]) is True
    clean, clean_params, _ = build(name, dtype, skip_nonfinite=True)
    clean_step = clean.step_reference if reference else clean.step
    clean_step(grads[0])
    clean_step(grads[1])
    for b, c in zip(buffers(opt, params), buffers(clean, clean_params)):
        for k in b:
            assert b[k].tobytes() == c[k].tobytes(), f"{name}: {k} after a skipped step"
    assert opt.steps == clean.steps == 2 and opt.skipped_steps == 1


@pytest.mark.parametrize("name,where,value",
                         [c for c in cases() if c[1] != "grad"])
def test_skip_nonfinite_does_not_scan_params_or_state(name, where, value):
    """Only grads are scanned: a NaN/Inf already in a param or a state buffer is stepped
    over as without the option (returns True; the same bits as the default)."""
    opt, params, out = run_case(name, where, value, np.float64, skip_nonfinite=True)
    plain, plain_params, plain_out = run_case(name, where, value, np.float64)
    assert out is True and plain_out is None
    assert opt.skipped_steps == 0 and opt.steps == 2
    for b, c in zip(buffers(opt, params), buffers(plain, plain_params)):
        for k in b:
            assert b[k].tobytes() == c[k].tobytes(), f"{name}: {k}"


@pytest.mark.parametrize("value", VALUES)
@pytest.mark.parametrize("n_threads", [1, 2])
def test_skip_nonfinite_scan_large_grads(value, n_threads):
    """A single bad element at the very end of a large (threaded) grad skips the step."""
    n = 100003
    params = [np.ones(n, np.float32), np.ones(7, np.float32)]
    opt = fastlr.Adam(params, lr=0.1, skip_nonfinite=True, n_threads=n_threads)
    grads = [np.full(n, 0.5, np.float32), np.full(7, 0.5, np.float32)]
    grads[0][-1] = VALUES[value]
    assert opt.step(grads) is False
    assert np.all(params[0] == 1) and np.all(params[1] == 1)
    assert not np.any(opt.state[0]["exp_avg"]) and opt.state[0]["step"] == 0
    grads[0][-1] = 0.5
    assert opt.step(grads) is True and opt.steps == 1


# ---------------------------------------------------------------------------------------
# clipping
# ---------------------------------------------------------------------------------------
def clip_inputs(value, dtype=np.float64):
    grads = [np.array([0.3, -4.0, 2.0], dtype), np.array([1.0, 0.5], dtype)]
    grads[0][1] = VALUES[value]
    return grads


@pytest.mark.parametrize("value", VALUES)
def test_clip_grad_norm_nonfinite(value):
    """torch: norm NaN -> factor NaN -> every grad NaN; norm Inf -> factor 0 -> every grad
    +-0, except Inf * 0 = NaN where the Inf was. fastlr: the same, returning the norm."""
    grads = clip_inputs(value)
    with np.errstate(all="ignore"):         # see test_clip_grad_norm_inf_does_not_warn
        norm = fastlr.clip_grad_norm(grads, 1.0)
    if value == "nan":
        assert np.isnan(norm)
        assert all(np.isnan(g).all() for g in grads)
    else:
        assert norm == np.inf
        assert np.isnan(grads[0][1])
        rest = np.concatenate([np.delete(grads[0], 1), grads[1]])
        assert np.all(rest == 0)


@pytest.mark.parametrize("value", VALUES)
def test_clip_grad_norm_nonfinite_matches_torch(value):
    torch = pytest.importorskip("torch", reason="torch not installed")
    grads = clip_inputs(value)
    tparams = [torch.zeros(len(g), dtype=torch.float64, requires_grad=True) for g in grads]
    for p, g in zip(tparams, grads):
        p.grad = torch.tensor(g)
    tnorm = torch.nn.utils.clip_grad_norm_(tparams, 1.0, foreach=False)
    with np.errstate(all="ignore"):         # see test_clip_grad_norm_inf_does_not_warn
        norm = fastlr.clip_grad_norm(grads, 1.0)
    assert classify(norm) == classify(tnorm.item())
    for g, p in zip(grads, tparams):
        assert_same_bits_nan_aware(g, p.grad.numpy(), f"clip with {value}")


@pytest.mark.parametrize("value", VALUES)
def test_clip_grad_norm_inf_does_not_warn(value):
    """Fails at present for +-Inf: clip_grad_norm scales in Python with
    ``np.multiply(g, 0.0, out=g)`` (fastlr/_core/engine.pyx), and Inf * 0 makes NumPy emit
    ``RuntimeWarning: invalid value encountered in multiply`` (a FloatingPointError, raised
    after the grads were written, under ``np.seterr(invalid="raise")``). torch's
    clip_grad_norm_ does not warn, nor do fastlr's kernels or the optimizers' fused
    ``max_grad_norm`` (compiled code, no NumPy error state)."""
    grads = clip_inputs(value)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(all="warn"):
            fastlr.clip_grad_norm(grads, 1.0)


@pytest.mark.parametrize("value", VALUES)
def test_clip_grad_norm_error_if_nonfinite_writes_nothing(value):
    grads = clip_inputs(value)
    before = [g.tobytes() for g in grads]
    with pytest.raises(ValueError):
        fastlr.clip_grad_norm(grads, 1.0, error_if_nonfinite=True)
    assert [g.tobytes() for g in grads] == before


@pytest.mark.parametrize("value", VALUES)
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_max_grad_norm_with_nonfinite_grad_like_reference(name, value):
    """The optimizers' fused ``max_grad_norm`` does what clip_grad_norm does: with a NaN
    grad every param and state element it reaches is NaN."""
    opt, params, out = run_case(name, "grad", value, np.float64, max_grad_norm=1.0)
    ref, ref_params, _ = run_case(name, "grad", value, np.float64, reference=True,
                                  max_grad_norm=1.0)
    for b, c in zip(buffers(opt, params), buffers(ref, ref_params)):
        for k in b:
            if name in ("Adam", "AdamW") and k == "param":
                assert_same_classes_and_close(b[k], c[k], f"{name}: {k}", 1e-14)
            else:
                assert_same_bits_nan_aware(b[k], c[k], f"{name}: {k}")
    if value == "nan":        # factor NaN: every gradient element NaN, every param NaN
        assert all(np.isnan(p).all() for p in params), name
    else:                     # factor 0: only the Inf's element gets a NaN gradient
        assert np.isnan(params[0][1])
        assert np.isfinite(np.delete(params[0], 1)).all() and np.isfinite(params[1]).all()


@pytest.mark.parametrize("value", VALUES)
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_skip_nonfinite_with_max_grad_norm_skips_before_scaling(name, value):
    opt, params, grads = build(name, np.float64, skip_nonfinite=True, max_grad_norm=1.0)
    opt.step(grads[0])
    before = snapshot(opt, params)
    bad = [g.copy() for g in grads[1]]
    bad[0][1] = VALUES[value]
    kept = [g.tobytes() for g in bad]
    assert opt.step(bad) is False
    after = snapshot(opt, params)
    before["skipped"] += 1
    assert after == before
    assert [g.tobytes() for g in bad] == kept        # the caller's grads are not scaled


def test_docs_table_is_expected():
    """docs/nonfinite.md's table is EXPECTED, row by row."""
    doc = pathlib.Path(__file__).resolve().parents[2] / "docs" / "nonfinite.md"
    if not doc.exists():
        pytest.skip("docs/ not present (installed tests)")
    text = doc.read_text(encoding="utf-8")
    sym = {"nan": "NaN", "+inf": "+Inf", "-inf": "\u2212Inf"}
    for name in OPTIMIZERS:
        for where in places(name):
            cells = []
            for value in VALUES:
                d = EXPECTED[(name, where, value)]
                order = ("param",) + STATE[name]
                cells.append(", ".join(f"`{k}` {sym[d[k]]}" for k in order if k in d)
                             or "nothing (all finite)")
            w = where if where in ("grad", "param") else f"`{where}`"
            row = f"| {name} | {w} | " + " | ".join(cells) + " |"
            assert row in text, f"docs/nonfinite.md lacks the row: {row}"

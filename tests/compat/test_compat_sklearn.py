"""fastlr.compat.sklearn and its kernels (fastlr._core.sklearn_kernels).

(a) the kernels against their NumPy twins (fastlr/reference/sklearn.py), bit for bit, over
    dtypes, shapes (0 and 1 elements, 2-D C and F, above the threading threshold) and thread
    counts; (b) the classes against scikit-learn's own optimizers and inside MLPClassifier
    (skipped without sklearn), bit for bit in float64 and float32 (NumPy >= 2; the float32
    parity depends on NEP 50 promotion, see the kernels' design notes); (c) validation:
    every bad input raises a TypeError/ValueError naming the argument, before any write.
"""

import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest

import fastlr
from fastlr.reference import sklearn as ref
from fastlr._core import sklearn_kernels as K
from fastlr.compat import sklearn as compat

DTYPES = [np.float32, np.float64]
SHAPES = [((0,), "C"), ((1,), "C"), ((7,), "C"), ((37, 29), "C"), ((37, 29), "F"),
          ((100003,), "C")]          # 100003 > PARALLEL_MIN_SIZE (32768): the threaded path
NUMPY2 = int(np.__version__.split(".")[0]) >= 2


def arrays(shape, order, dtype, seed, n_state):
    rng = np.random.default_rng(seed)

    def arr(scale):
        return np.asarray(rng.standard_normal(shape) * scale, dtype=dtype, order=order)

    param, grad = arr(1.0), arr(0.1)
    state = [np.zeros_like(param) for _ in range(n_state)]
    if param.size >= 4:
        grad.reshape(-1, order="A")[:3] = [0.0, -0.0, 1e3]
    return param, grad, state


def run_sgd(mod, shape, order, dtype, nesterov, n_threads, steps=4):
    param, _, (vel,) = arrays(shape, order, dtype, 1, 1)
    for k in range(steps):
        _, grad, _ = arrays(shape, order, dtype, 100 + k, 0)
        mod.sgd_sklearn(param, grad, vel, lr=0.05 / (k + 1), momentum=0.9, nesterov=nesterov,
                        n_threads=n_threads)
    return param, vel


def run_adam(mod, shape, order, dtype, n_threads, steps=4):
    param, _, (m, v) = arrays(shape, order, dtype, 2, 2)
    for k in range(steps):
        _, grad, _ = arrays(shape, order, dtype, 200 + k, 0)
        mod.adam_sklearn(param, grad, m, v, step=k + 1, lr=1e-2, beta1=0.9, beta2=0.999,
                         eps=1e-8, n_threads=n_threads)
    return param, m, v


# ---------------------------------------------------------------------------------------
# (a) kernels vs the NumPy twins
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,order", SHAPES)
@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("nesterov", [True, False])
def test_sgd_kernel_matches_reference(dtype, shape, order, n_threads, nesterov):
    got = run_sgd(K, shape, order, dtype, nesterov, n_threads)
    want = run_sgd(ref, shape, order, dtype, nesterov, n_threads)
    for g, w in zip(got, want):
        assert g.dtype == dtype and g.shape == shape
        np.testing.assert_array_equal(g, w)
    if got[0].size:
        assert np.any(got[0] != arrays(shape, order, dtype, 1, 0)[0])   # it did move


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,order", SHAPES)
@pytest.mark.parametrize("n_threads", [1, 2])
def test_adam_kernel_matches_reference(dtype, shape, order, n_threads):
    got = run_adam(K, shape, order, dtype, n_threads)
    want = run_adam(ref, shape, order, dtype, n_threads)
    for g, w in zip(got, want):
        assert g.dtype == dtype and g.shape == shape
        np.testing.assert_array_equal(g, w)


def test_kernels_same_bits_for_every_thread_count():
    for n_threads in (3, 4):
        for nesterov in (True, False):
            a = run_sgd(K, (300001,), "C", np.float32, nesterov, 1)
            b = run_sgd(K, (300001,), "C", np.float32, nesterov, n_threads)
            for x, y in zip(a, b):
                np.testing.assert_array_equal(x, y)
        a = run_adam(K, (300001,), "C", np.float64, 1)
        b = run_adam(K, (300001,), "C", np.float64, n_threads)
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)


def test_adam_float32_rounds_param_once_in_float64():
    # the float32 update is computed in float64 (sklearn's lr_t is a float64 scalar) and
    # param is rounded once: different from an all-float32 computation on some elements
    param, grad, (m, v) = arrays((4096,), "C", np.float32, 5, 2)
    p32 = param.copy()
    K.adam_sklearn(param, grad, m, v, step=1, lr=0.1, beta1=0.9, beta2=0.999, eps=1e-8)
    lr_t = np.float32(0.1 * np.sqrt(1 - 0.999) / (1 - 0.9))
    all32 = p32 + (-lr_t) * m / (np.sqrt(v) + np.float32(1e-8))
    assert np.any(param != all32)
    np.testing.assert_allclose(param, all32, rtol=1e-6, atol=1e-6)   # rounding only


def test_grad_may_be_read_only_and_is_not_written():
    param, grad, (m, v) = arrays((50,), "C", np.float64, 3, 2)
    grad.flags.writeable = False
    before = grad.copy()
    K.adam_sklearn(param, grad, m, v, step=1, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8)
    K.sgd_sklearn(param, grad, m, lr=1e-3, momentum=0.5, nesterov=False)
    np.testing.assert_array_equal(grad, before)


# ---------------------------------------------------------------------------------------
# (b) the classes against scikit-learn's
# ---------------------------------------------------------------------------------------
def _sk_optim():
    pytest.importorskip("sklearn", reason="scikit-learn is not installed: the parity tests "
                                          "compare with its optimizers")
    from sklearn.neural_network import _stochastic_optimizers as sk

    return sk


def mlp_params(dtype, seed=0):
    rng = np.random.default_rng(seed)
    shapes = [(10, 16), (16, 3), (16,), (3,), (1,)]
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    params.append(np.asfortranarray(rng.standard_normal((5, 4)).astype(dtype)))
    return params


def mlp_grads(params, step):
    rng = np.random.default_rng(1000 + step)
    grads = [np.zeros_like(p) for p in params]         # same dtype and layout as the param
    for g in grads:
        g[...] = rng.standard_normal(g.shape) * 0.1
    return grads


def assert_same(a, b, dtype, where, diffs):
    assert a.dtype == b.dtype == dtype, where
    diffs.append(float(np.max(np.abs(a.astype(np.float64) - b), initial=0.0)))
    if dtype == np.float64 or NUMPY2:
        np.testing.assert_array_equal(a, b, err_msg=where)
    else:   # NumPy 1.x: sklearn's float32 Adam update stays in float32
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=where)


def drive(fast, slow, fast_params, slow_params, dtype, capsys, steps=60):
    """Run both optimizers side by side: update every step, iteration_ends every 5 steps,
    trigger_stopping every 7; compare params, state, learning rates, return values and
    printed text after each call. Returns the max |difference| seen."""
    diffs = []
    state = "ms" if hasattr(slow, "ms") else "velocities"
    for step in range(1, steps + 1):
        grads = mlp_grads(fast_params, step)
        fast.update_params(fast_params, grads)
        slow.update_params(slow_params, [g.copy() for g in grads])
        for k, (a, b) in enumerate(zip(fast_params, slow_params)):
            assert_same(a, b, dtype, f"step {step} params[{k}]", diffs)
        for name in (("ms", "vs") if state == "ms" else ("velocities",)):
            for k, (a, b) in enumerate(zip(getattr(fast, name), getattr(slow, name))):
                assert_same(a, b, dtype, f"step {step} {name}[{k}]", diffs)
        assert fast.learning_rate == slow.learning_rate
        if step % 5 == 0:
            fast.iteration_ends(step * 32)
            slow.iteration_ends(step * 32)
            assert fast.learning_rate == slow.learning_rate
        if step % 7 == 0:
            verbose = step % 2 == 0
            r1 = fast.trigger_stopping(f"msg {step}.", verbose)
            out1 = capsys.readouterr().out
            r2 = slow.trigger_stopping(f"msg {step}.", verbose)
            out2 = capsys.readouterr().out
            assert r1 is r2 and out1 == out2
            assert fast.learning_rate == slow.learning_rate
    return max(diffs)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lr_schedule", ["constant", "invscaling", "adaptive"])
@pytest.mark.parametrize("nesterov", [True, False])
def test_sgd_optimizer_matches_sklearn(dtype, lr_schedule, nesterov, capsys):
    sk = _sk_optim()
    fast_params, slow_params = mlp_params(dtype), mlp_params(dtype)
    kw = dict(learning_rate_init=0.05, lr_schedule=lr_schedule, momentum=0.8,
              nesterov=nesterov, power_t=0.25)
    fast = compat.SGDOptimizer(fast_params, **kw)
    slow = sk.SGDOptimizer(slow_params, **kw)
    buffers = list(fast.velocities)
    diff = drive(fast, slow, fast_params, slow_params, dtype, capsys)
    assert diff == 0.0 or (dtype == np.float32 and not NUMPY2)
    # state lives in the buffers allocated at construction
    assert all(a is b for a, b in zip(fast.velocities, buffers))
    if lr_schedule == "adaptive":
        assert fast.learning_rate < 0.05           # trigger_stopping divided it


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hyper", [{}, dict(learning_rate_init=0.02, beta_1=0.5,
                                            beta_2=0.9, epsilon=1e-4)])
def test_adam_optimizer_matches_sklearn(dtype, hyper, capsys):
    sk = _sk_optim()
    fast_params, slow_params = mlp_params(dtype), mlp_params(dtype)
    fast = compat.AdamOptimizer(fast_params, **hyper)
    slow = sk.AdamOptimizer(slow_params, **hyper)
    ms, vs = list(fast.ms), list(fast.vs)
    diff = drive(fast, slow, fast_params, slow_params, dtype, capsys)
    assert diff == 0.0 or (dtype == np.float32 and not NUMPY2)
    assert fast.t == slow.t == 60
    assert all(a is b for a, b in zip(fast.ms + fast.vs, ms + vs))


def test_defaults_and_positional_order_match_sklearn():
    sk = _sk_optim()
    import inspect

    for name in ("SGDOptimizer", "AdamOptimizer"):
        ours = inspect.signature(getattr(compat, name)).parameters
        theirs = inspect.signature(getattr(sk, name)).parameters
        assert list(theirs) == [p for p in ours if p != "n_threads"]
        for p in theirs.values():
            assert ours[p.name].default == p.default, (name, p.name)
    ours, theirs = compat.SGDOptimizer([np.zeros(3)]), sk.SGDOptimizer([np.zeros(3)])
    for attr in ("learning_rate_init", "learning_rate", "momentum", "nesterov",
                 "lr_schedule", "power_t"):
        assert getattr(ours, attr) == getattr(theirs, attr)
    ours, theirs = compat.AdamOptimizer([np.zeros(3)]), sk.AdamOptimizer([np.zeros(3)])
    for attr in ("learning_rate_init", "learning_rate", "beta_1", "beta_2", "epsilon", "t"):
        assert getattr(ours, attr) == getattr(theirs, attr)


def test_adaptive_trigger_stopping_sequence_until_stop(capsys):
    sk = _sk_optim()
    fast = compat.SGDOptimizer([np.zeros(2)], 0.1, "adaptive")
    slow = sk.SGDOptimizer([np.zeros(2)], 0.1, "adaptive")
    results = []
    for _ in range(12):
        r = fast.trigger_stopping("No improvement.", True)
        out = capsys.readouterr().out
        assert (r, out) == (slow.trigger_stopping("No improvement.", True),
                            capsys.readouterr().out)
        assert fast.learning_rate == slow.learning_rate
        results.append(r)
    # 0.1 / 5**k <= 1e-6 first at k = 8: eight reductions, then stop
    assert results == [False] * 8 + [True] * 4
    assert "Learning rate too small. Stopping." in out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kw", [dict(solver="adam"),
                                dict(solver="sgd", learning_rate="invscaling"),
                                dict(solver="sgd", learning_rate="adaptive",
                                     nesterovs_momentum=False, n_iter_no_change=2)])
def test_patch_mlp_gives_sklearn_s_model(dtype, kw):
    pytest.importorskip("sklearn", reason="scikit-learn is not installed")
    import warnings

    from sklearn.neural_network import MLPClassifier
    from sklearn.neural_network import _multilayer_perceptron as mlp

    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 6)).astype(dtype)
    y = (X[:, 0] + X[:, 1] ** 2 > 1).astype(int)

    def fit():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return MLPClassifier((12,), max_iter=40, random_state=0, **kw).fit(X, y)

    want = fit()
    with compat.patch_mlp():
        got = fit()
        assert isinstance(got._optimizer, (compat.SGDOptimizer, compat.AdamOptimizer))
    assert mlp.AdamOptimizer is not compat.AdamOptimizer       # restored
    assert got.n_iter_ == want.n_iter_
    for a, b in zip(got.coefs_ + got.intercepts_, want.coefs_ + want.intercepts_):
        assert a.dtype == dtype
        if dtype == np.float64 or NUMPY2:
            np.testing.assert_array_equal(a, b)
        else:
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_module_imports_and_runs_without_sklearn():
    code = ("import sys; sys.modules['sklearn'] = None\n"
            "import numpy as np\n"
            "from fastlr.compat.sklearn import AdamOptimizer, SGDOptimizer\n"
            "p = [np.ones(3)]\n"
            "o = AdamOptimizer(p); o.update_params(p, [np.ones(3)])\n"
            "SGDOptimizer(p).update_params(p, [np.ones(3)])\n"
            "assert 'sklearn' not in [m.split('.')[0] for m in sys.modules if sys.modules[m]]\n"
            "print(o.t)\n")
    # run outside the checkout (`-c` puts the cwd first on sys.path), with the fastlr under
    # test (an in-place tree or site-packages) first on the path
    root = os.path.dirname(os.path.dirname(os.path.abspath(fastlr.__file__)))
    env = dict(os.environ, PYTHONPATH=root)
    with tempfile.TemporaryDirectory() as cwd:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             cwd=cwd, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1"


# ---------------------------------------------------------------------------------------
# (c) validation: named arguments, nothing written on error
# ---------------------------------------------------------------------------------------
def _sgd_case(**over):
    param, grad, (vel,) = arrays((6, 5), "C", np.float64, 7, 1)
    vel[...] = 0.25
    kw = dict(param=param, grad=grad, velocity=vel, lr=0.1, momentum=0.9, nesterov=True)
    kw.update(over)
    return kw


def _adam_case(**over):
    param, grad, (m, v) = arrays((6, 5), "C", np.float32, 8, 2)
    m[...], v[...] = 0.5, 0.25
    kw = dict(param=param, grad=grad, m=m, v=v, step=3, lr=1e-3, beta1=0.9, beta2=0.999,
              eps=1e-8)
    kw.update(over)
    return kw


def _ro(a):
    a = a.copy()
    a.flags.writeable = False
    return a


F64 = np.zeros((6, 5))
F32 = np.zeros((6, 5), np.float32)
BAD_SGD = [
    (dict(param=[[1.0]]), TypeError, "param"),
    (dict(param=F64.astype(np.int64)), TypeError, "param"),
    (dict(param=F64.astype(np.float16)), TypeError, "param"),
    (dict(grad=F32.copy()), TypeError, "grad"),
    (dict(velocity=F32.copy()), TypeError, "velocity"),
    (dict(grad=np.zeros((5, 6))), ValueError, "grad"),
    (dict(velocity=np.zeros(30)), ValueError, "velocity"),
    (dict(param=np.zeros((6, 10))[:, ::2]), ValueError, "param"),
    (dict(grad=np.zeros((6, 10))[:, ::2]), ValueError, "grad"),
    (dict(velocity=np.asfortranarray(F64)), ValueError, "velocity"),
    (dict(param=_ro(F64)), ValueError, "param"),
    (dict(velocity=_ro(F64)), ValueError, "velocity"),
    (dict(grad=F64.astype(">f8")), TypeError, "grad"),
    (dict(lr=-0.1), ValueError, "lr"),
    (dict(lr=float("nan")), ValueError, "lr"),
    (dict(lr="0.1"), TypeError, "lr"),
    (dict(lr=None), TypeError, "lr"),
    (dict(momentum=1.5), ValueError, "momentum"),
    (dict(momentum=-0.1), ValueError, "momentum"),
    (dict(momentum=float("inf")), ValueError, "momentum"),
    (dict(nesterov="yes"), TypeError, "nesterov"),
    (dict(n_threads=0), ValueError, "n_threads"),
    (dict(n_threads=2.0), TypeError, "n_threads"),
    (dict(n_threads=True), TypeError, "n_threads"),
]
BAD_ADAM = [
    (dict(m=np.zeros((6, 5))), TypeError, "m"),
    (dict(v=np.zeros((5, 6), np.float32)), ValueError, "v"),
    (dict(v=_ro(F32)), ValueError, "v"),
    (dict(m=[0.0]), TypeError, "m"),
    (dict(step=0), ValueError, "step"),
    (dict(step=1.5), TypeError, "step"),
    (dict(step=True), TypeError, "step"),
    (dict(step=2 ** 63), ValueError, "step"),
    (dict(lr=-1.0), ValueError, "lr"),
    (dict(beta1=1.0), ValueError, "beta1"),
    (dict(beta2=-0.5), ValueError, "beta2"),
    (dict(beta2=float("nan")), ValueError, "beta2"),
    (dict(eps=-1e-8), ValueError, "eps"),
    (dict(eps=[1e-8]), TypeError, "eps"),
    (dict(n_threads="2"), TypeError, "n_threads"),
]


def _call(fn, kw):
    pos = [kw.pop(k) for k in ("param", "grad", "velocity", "m", "v") if k in kw]
    fn(*pos, **kw)


def _snapshot(kw):
    return {k: a.copy() for k, a in kw.items() if isinstance(a, np.ndarray) and a.size}


@pytest.mark.parametrize("over,exc,name", BAD_SGD, ids=[f"sgd-{c[2]}-{i}"
                                                         for i, c in enumerate(BAD_SGD)])
def test_sgd_kernel_rejects(over, exc, name):
    kw = _sgd_case(**over)
    before = _snapshot(kw)
    keep = dict(kw)
    with pytest.raises(exc, match=rf"sgd_sklearn: {name}\b"):
        _call(K.sgd_sklearn, kw)
    for k, a in before.items():
        np.testing.assert_array_equal(keep[k], a)


@pytest.mark.parametrize("over,exc,name", BAD_ADAM, ids=[f"adam-{c[2]}-{i}"
                                                          for i, c in enumerate(BAD_ADAM)])
def test_adam_kernel_rejects(over, exc, name):
    kw = _adam_case(**over)
    before = _snapshot(kw)
    keep = dict(kw)
    with pytest.raises(exc, match=rf"adam_sklearn: {name}\b"):
        _call(K.adam_sklearn, kw)
    for k, a in before.items():
        np.testing.assert_array_equal(keep[k], a)


def test_kernels_reject_overlapping_buffers():
    buf = np.zeros(20)
    grad = np.ones(10)
    with pytest.raises(ValueError, match="param and velocity overlap"):
        K.sgd_sklearn(buf[:10], grad, buf[5:15], lr=0.1, momentum=0.9, nesterov=True)
    with pytest.raises(ValueError, match="param and grad overlap"):
        K.sgd_sklearn(buf[:10], buf[:10], np.zeros(10), lr=0.1, momentum=0.9, nesterov=True)
    with pytest.raises(ValueError, match="m and v overlap"):
        K.adam_sklearn(np.zeros(10), grad, buf[:10], buf[:10], step=1, lr=1e-3, beta1=0.9,
                       beta2=0.999, eps=1e-8)
    assert not buf.any()


@pytest.mark.parametrize("cls,kw,exc,name", [
    (compat.SGDOptimizer, dict(learning_rate_init=0.0), ValueError, "learning_rate_init"),
    (compat.SGDOptimizer, dict(learning_rate_init="1"), TypeError, "learning_rate_init"),
    (compat.SGDOptimizer, dict(lr_schedule="cosine"), ValueError, "lr_schedule"),
    (compat.SGDOptimizer, dict(momentum=1.01), ValueError, "momentum"),
    (compat.SGDOptimizer, dict(nesterov="yes"), TypeError, "nesterov"),
    (compat.SGDOptimizer, dict(nesterov=2), ValueError, "nesterov"),
    (compat.SGDOptimizer, dict(power_t=-1.0), ValueError, "power_t"),
    (compat.SGDOptimizer, dict(n_threads=0), ValueError, "n_threads"),
    (compat.AdamOptimizer, dict(learning_rate_init=float("inf")), ValueError,
     "learning_rate_init"),
    (compat.AdamOptimizer, dict(beta_1=1.0), ValueError, "beta_1"),
    (compat.AdamOptimizer, dict(beta_2=-0.1), ValueError, "beta_2"),
    (compat.AdamOptimizer, dict(epsilon=0.0), ValueError, "epsilon"),
    (compat.AdamOptimizer, dict(params=np.zeros(3)), TypeError, "params"),
    (compat.AdamOptimizer, dict(params=[np.zeros(3), [1.0]]), TypeError, r"params\[1\]"),
    (compat.AdamOptimizer, dict(params=[np.zeros(3, int)]), TypeError, r"params\[0\]"),
    (compat.SGDOptimizer, dict(params=[np.zeros((4, 4))[::2]]), ValueError, r"params\[0\]"),
])
def test_constructors_reject(cls, kw, exc, name):
    kw.setdefault("params", [np.zeros(3)])
    with pytest.raises(exc, match=rf"{cls.__name__}: {name}"):
        cls(**kw)


@pytest.mark.parametrize("cls", [compat.SGDOptimizer, compat.AdamOptimizer])
def test_bad_update_changes_nothing(cls):
    params = mlp_params(np.float64)
    opt = cls(params)
    good = mlp_grads(params, 1)
    opt.update_params(params, good)
    state = "velocities" if cls is compat.SGDOptimizer else "ms"

    def snap():
        return ([p.copy() for p in params], [s.copy() for s in getattr(opt, state)],
                getattr(opt, "t", None), opt.learning_rate)

    before = snap()
    bad_last = good[:-1] + [good[-1].astype(np.float32)]       # only the last array is bad
    for grads, exc, name in [(bad_last, TypeError, r"grads\[5\]"),
                             (good[:-1], ValueError, "grads"),
                             (tuple(good[:2]) + (good[3],) + tuple(good[3:]), ValueError,
                              r"grads\[2\]"),
                             (None, TypeError, "grads")]:
        with pytest.raises(exc, match=name):
            opt.update_params(params, grads)
        after = snap()
        for a, b in zip(before[0] + before[1], after[0] + after[1]):
            np.testing.assert_array_equal(a, b)
        assert before[2:] == after[2:]
    ro = [p.copy() for p in params]
    ro[0].flags.writeable = False
    with pytest.raises(ValueError, match=r"params\[0\] is read-only"):
        opt.update_params(ro, good)
    opt.learning_rate = float("nan")
    if cls is compat.SGDOptimizer:
        with pytest.raises(ValueError, match="learning_rate"):
            opt.update_params(params, good)
    with pytest.raises(ValueError, match="time_step"):
        opt.iteration_ends(-1)


# ---------------------------------------------------------------------------------------
# (d) mixed dtypes: float32 params with float64 grads (MLPRegressor on float32 X)
# ---------------------------------------------------------------------------------------
def run_mixed(mod, shape, order, n_threads):
    """float32 param, float64 grad and state: the update runs in float64, param rounds
    once."""
    param, _, _ = arrays(shape, order, np.float32, 4, 0)
    _, _, (vel, m, v) = arrays(shape, order, np.float64, 5, 3)
    for k in range(4):
        _, grad, _ = arrays(shape, order, np.float64, 300 + k, 0)
        mod.sgd_sklearn(param, grad, vel, lr=0.05, momentum=0.9, nesterov=k % 2 == 0,
                        n_threads=n_threads)
        mod.adam_sklearn(param, grad, m, v, step=k + 1, lr=1e-2, beta1=0.9, beta2=0.999,
                         eps=1e-8, n_threads=n_threads)
    return param, vel, m, v


@pytest.mark.parametrize("shape,order", SHAPES)
@pytest.mark.parametrize("n_threads", [1, 2])
def test_mixed_kernels_match_reference(shape, order, n_threads):
    got = run_mixed(K, shape, order, n_threads)
    want = run_mixed(ref, shape, order, n_threads)
    for g, w, dtype in zip(got, want, [np.float32, np.float64, np.float64, np.float64]):
        assert g.dtype == dtype
        np.testing.assert_array_equal(g, w)
    if got[0].size:
        assert np.any(got[0] != arrays(shape, order, np.float32, 4, 0)[0])


def test_single_array_kernels_refuse_float32_state_with_float64_grad():
    p = np.zeros(5, np.float32)
    g = np.ones(5)
    with pytest.raises(TypeError, match=r"sgd_sklearn: velocity has dtype float32, but with a "
                                        r"float64 grad for a float32 param the state is "
                                        r"float64"):
        K.sgd_sklearn(p, g, np.zeros(5, np.float32), lr=0.1, momentum=0.9, nesterov=True)
    with pytest.raises(TypeError, match=r"adam_sklearn: grad has dtype float32 but param has "
                                        r"dtype float64"):
        K.adam_sklearn(np.zeros(5), g.astype(np.float32), np.zeros(5), np.zeros(5), step=1,
                       lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8)
    with pytest.raises(TypeError, match=r"adam_sklearn: v has dtype float32 but m has dtype "
                                        r"float64"):
        K.adam_sklearn(p, g, np.zeros(5), np.zeros(5, np.float32), step=1, lr=1e-3,
                       beta1=0.9, beta2=0.999, eps=1e-8)
    assert not p.any()


def drive_mixed(fast, slow, fast_params, slow_params, steps=25):
    """Step both with float64 grads for float32 params; compare everything bit for bit."""
    names = ("ms", "vs") if hasattr(slow, "ms") else ("velocities",)
    for step in range(1, steps + 1):
        rng = np.random.default_rng(2000 + step)
        grads = [np.asarray(rng.standard_normal(p.shape) * 0.1, order="F" if
                            p.flags.f_contiguous and not p.flags.c_contiguous else "C")
                 for p in fast_params]
        fast.update_params(fast_params, grads)
        slow.update_params(slow_params, [g.copy() for g in grads])
        for k, (a, b) in enumerate(zip(fast_params, slow_params)):
            assert a.dtype == b.dtype == np.float32
            np.testing.assert_array_equal(a, b, err_msg=f"step {step} params[{k}]")
        for name in names:
            for k, (a, b) in enumerate(zip(getattr(fast, name), getattr(slow, name))):
                assert a.dtype == b.dtype == np.float64, (step, name, k)
                np.testing.assert_array_equal(a, b, err_msg=f"step {step} {name}[{k}]")
        assert fast.learning_rate == slow.learning_rate
        if step % 5 == 0:
            fast.iteration_ends(step * 32)
            slow.iteration_ends(step * 32)


@pytest.mark.parametrize("opt", ["sgd-nesterov", "sgd", "adam"])
def test_mixed_optimizer_matches_sklearn(opt):
    # from a nonzero float32 state: the first update's float32 products (momentum *
    # velocity, beta_1 * m) must be sklearn's too, not just the later float64 ones
    sk = _sk_optim()
    if not NUMPY2:
        pytest.skip("the float32 parity needs NumPy >= 2 (NEP 50)")
    fast_params, slow_params = mlp_params(np.float32), mlp_params(np.float32)
    if opt == "adam":
        kw = dict(learning_rate_init=0.01, beta_1=0.8, beta_2=0.99)
        fast, slow = compat.AdamOptimizer(fast_params, **kw), sk.AdamOptimizer(slow_params, **kw)
        names = ("ms", "vs")
    else:
        kw = dict(learning_rate_init=0.05, lr_schedule="invscaling", momentum=0.7,
                  nesterov=opt == "sgd-nesterov")
        fast, slow = compat.SGDOptimizer(fast_params, **kw), sk.SGDOptimizer(slow_params, **kw)
        names = ("velocities",)
    for i, name in enumerate(names):
        for a, b in zip(getattr(fast, name), getattr(slow, name)):
            a[...] = b[...] = np.abs(np.sin(np.arange(a.size) + i)).reshape(a.shape) / 3
    float32_buffers = [id(a) for name in names for a in getattr(fast, name)]
    drive_mixed(fast, slow, fast_params, slow_params)
    # promoted once, as sklearn does: new float64 buffers, then updated in place
    now = [a for name in names for a in getattr(fast, name)]
    assert not set(map(id, now)) & set(float32_buffers)
    drive_mixed(fast, slow, fast_params, slow_params, steps=3)
    assert [id(a) for name in names for a in getattr(fast, name)] == list(map(id, now))


def test_mixed_state_then_float32_grads_is_refused():
    params = [np.zeros(4, np.float32)]
    opt = compat.SGDOptimizer(params)
    opt.update_params(params, [np.ones(4)])
    assert opt.velocities[0].dtype == np.float64
    before = params[0].copy()
    with pytest.raises(TypeError, match=r"grads\[0\] has dtype float32 but velocities\[0\] is "
                                        r"float64"):
        opt.update_params(params, [np.ones(4, np.float32)])
    np.testing.assert_array_equal(params[0], before)
    with pytest.raises(TypeError, match=r"grads\[0\] has dtype float32 but params\[0\] has "
                                        r"dtype float64"):
        p64 = [np.zeros(3)]
        compat.AdamOptimizer(p64).update_params(p64, [np.ones(3, np.float32)])


def test_mixed_promotion_needs_a_list():
    params = [np.zeros(4, np.float32)]
    opt = compat.AdamOptimizer(params)
    opt.ms = tuple(opt.ms)
    with pytest.raises(TypeError, match=r"update_params: ms must be a list"):
        opt.update_params(params, [np.ones(4)])
    assert opt.t == 0 and not params[0].any()


@pytest.mark.parametrize("solver", ["adam", "sgd"])
@pytest.mark.parametrize("target", ["float64", "int"])
def test_patch_mlp_regressor_float32_is_sklearn_s_model(solver, target):
    pytest.importorskip("sklearn", reason="scikit-learn is not installed")
    if not NUMPY2:
        pytest.skip("the float32 parity needs NumPy >= 2 (NEP 50)")
    import warnings

    from sklearn.neural_network import MLPRegressor

    rng = np.random.default_rng(1)
    X = rng.random((60, 3)).astype(np.float32)
    y = X.sum(1).astype(np.float64) if target == "float64" else (3 * X.sum(1)).astype(int)

    def fit():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return MLPRegressor(hidden_layer_sizes=(8,), solver=solver, max_iter=25, random_state=0,
                                batch_size=16).fit(X, y)

    want = fit()
    with compat.patch_mlp():
        got = fit()
    assert isinstance(got._optimizer, (compat.SGDOptimizer, compat.AdamOptimizer))
    state = got._optimizer.ms if solver == "adam" else got._optimizer.velocities
    assert state[0].dtype == np.float64                 # the mixed path ran
    assert got.loss_curve_ == want.loss_curve_
    for a, b in zip(got.coefs_ + got.intercepts_, want.coefs_ + want.intercepts_):
        assert a.dtype == b.dtype == np.float32
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(got.predict(X), want.predict(X))


# ---------------------------------------------------------------------------------------
# (e) the list update's cache: what it remembers never hides a change
# ---------------------------------------------------------------------------------------
def _adam_pair(dtype=np.float64):
    params = mlp_params(dtype)
    return params, compat.AdamOptimizer(params, learning_rate_init=0.01)


def test_replaced_state_and_params_are_used():
    sk = _sk_optim()
    params, opt = _adam_pair()
    slow_params = mlp_params(np.float64)
    slow = sk.AdamOptimizer(slow_params, learning_rate_init=0.01)
    for step in range(1, 8):
        grads = mlp_grads(params, step)
        if step == 3:       # new state arrays (in the param's layout), by item and by list
            def like(p, a):
                return np.array(a, order="F" if not p.flags.c_contiguous else "C")
            opt.ms[1] = like(params[1], slow.ms[1])
            opt.vs = [like(p, v) for p, v in zip(params, slow.vs)]
        if step == 5:       # new param arrays (same values)
            params = [p.copy(order="K") for p in params]
        opt.update_params(params, grads)
        slow.update_params(slow_params, [g.copy() for g in grads])
        for a, b in zip(params + opt.ms + opt.vs, slow_params + slow.ms + slow.vs):
            np.testing.assert_array_equal(a, b)


def test_changes_to_remembered_arrays_are_seen():
    params, opt = _adam_pair()
    opt.update_params(params, mlp_grads(params, 1))
    grads = mlp_grads(params, 2)
    before = [p.copy() for p in params]
    params[2].flags.writeable = False
    with pytest.raises(ValueError, match=r"params\[2\] is read-only"):
        opt.update_params(params, grads)
    params[2].flags.writeable = True
    opt.vs[3].shape = (1, 3)                   # (3,) reshaped in place
    with pytest.raises(ValueError, match=r"vs\[3\] has shape \(1, 3\) but params\[3\] has "
                                         r"shape \(3,\)"):
        opt.update_params(params, grads)
    opt.vs[3].shape = (3,)
    opt.ms[0].dtype = np.int64                 # reinterpreted in place
    with pytest.raises(TypeError, match=r"ms\[0\] must have dtype float32 or float64"):
        opt.update_params(params, grads)
    opt.ms[0].dtype = np.float64
    params[1].shape = (3, 16)                  # (16, 3) reshaped: the grad no longer fits
    with pytest.raises(ValueError, match=r"params\[1\] has shape \(3, 16\)|"
                                         r"grads\[1\] has shape \(16, 3\)"):
        opt.update_params(params, grads)
    params[1].shape = (16, 3)
    for a, b in zip(params, before):
        np.testing.assert_array_equal(a, b)
    assert opt.t == 1
    opt.update_params(params, grads)           # all restored: it steps again
    assert opt.t == 2 and not np.array_equal(params[0], before[0])


def test_list_update_refuses_overlaps():
    params, opt = _adam_pair()
    grads = mlp_grads(params, 1)
    bad = list(grads)
    bad[3] = params[0].reshape(-1)[:3]          # a grad reading a param's memory
    with pytest.raises(ValueError, match=r"params\[0\] and grads\[3\] overlap"):
        opt.update_params(params, bad)
    with pytest.raises(ValueError, match=r"overlap"):
        opt.update_params(params[:3] + [params[2][:3]] + params[4:], grads)  # param in param
    vs4 = opt.vs[4]
    opt.vs[4] = opt.ms[4]
    with pytest.raises(ValueError, match=r"ms\[4\] and vs\[4\] overlap"):
        opt.update_params(params, grads)
    assert opt.t == 0 and not any(m.any() for m in opt.ms)
    opt.vs[4] = vs4
    shared = grads[:2] + [grads[0].reshape(-1)[:16]] + grads[3:]   # grads may share memory
    opt.update_params(params, shared)
    assert opt.t == 1


def test_pickled_optimizer_keeps_stepping():
    import pickle

    params, opt = _adam_pair(np.float32)
    opt.update_params(params, [g.astype(np.float64) for g in mlp_grads(params, 1)])
    clone = pickle.loads(pickle.dumps(opt))
    params2 = [p.copy(order="K") for p in params]
    grads = [g.astype(np.float64) for g in mlp_grads(params, 2)]
    opt.update_params(params, grads)
    clone.update_params(params2, grads)
    for a, b in zip(params + opt.ms, params2 + clone.ms):
        np.testing.assert_array_equal(a, b)


def test_every_cpu_variant_gives_the_same_bits():
    from fastlr import _kernels
    from fastlr._core import dispatch

    before = _kernels.cpu_target()
    results = {}
    try:
        for target in dispatch.available():
            _kernels._set_cores(target)
            out = []
            for dtype in (np.float32, np.float64):
                out += run_adam(K, (1000,), "C", dtype, 1) + run_sgd(K, (1000,), "C", dtype,
                                                                     True, 1)
            out += run_mixed(K, (37, 29), "F", 1)
            results[target] = b"".join(a.tobytes() for a in out)
    finally:
        _kernels._set_cores(before)
    assert len(set(results.values())) == 1, list(results)

"""``fastlr.kernels.adafactor``, Adafactor's validated functional kernel: the same function
as ``fastlr.optim.adafactor.adafactor``, against its NumPy twin (``fastlr.reference``) and
the class (``fastlr.Adafactor``) over several steps, and its argument errors, which name
``fastlr.kernels.adafactor`` and write nothing. (Parity with torch is in
tests/optim/test_adafactor.py.)"""

import numpy as np
import pytest

import fastlr
from fastlr import kernels, reference
from fastlr._core.adafactor import state_shapes

N_STEPS = 12
#: kernel vs twin after N_STEPS, relative to max(1, max|twin|): the sums are in double in
#: both, in different orders (docs/design.md, Numerics)
RTOL = {np.dtype(np.float64): 1e-12, np.dtype(np.float32): 1e-5}
SHAPES = [(), (37,), (7, 13), (3, 5, 4), (1, 9)]
OPTIONS = {
    "defaults": {},
    "all": dict(lr=0.05, beta2_decay=-0.5, eps1=1e-6, eps2=0.0, d=1.5, weight_decay=0.1,
                maximize=True),
}


def _state(shape, dtype, order="C"):
    return {k: np.zeros(s, dtype=dtype, order=order) for k, s in state_shapes(shape).items()}


def _grad(rng, shape, dtype, order="C"):
    return np.array(rng.standard_normal(shape) * rng.uniform(0.05, 5.0), dtype=dtype,
                    order=order)


def test_kernels_adafactor_is_the_validated_kernel():
    from fastlr.optim.adafactor import adafactor
    assert kernels.adafactor is adafactor
    assert "adafactor" in kernels.__all__ and "muon" in kernels.__all__
    assert "adafactor" not in kernels.KERNELS       # no table row, no make_state
    doc = kernels.adafactor.__doc__
    for part in ("Parameters", "row_var", "param units", "step ** beta2_decay"):
        assert part in doc


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("opts", list(OPTIONS))
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=lambda d: np.dtype(d).name)
def test_kernel_matches_the_twin_over_several_steps(order, opts, shape, dtype):
    kw = OPTIONS[opts]
    rng = np.random.default_rng([len(shape), sum(shape), len(kw)])
    p0 = rng.standard_normal(shape).astype(dtype)
    p_fast, p_ref = np.array(p0, order=order), np.array(p0, order=order)
    s_fast, s_ref = _state(shape, dtype, order), _state(shape, dtype, order)
    for t in range(1, N_STEPS + 1):
        g = _grad(rng, shape, dtype, order)
        kernels.adafactor(p_fast, g, **s_fast, step=t, **kw)
        reference.adafactor(p_ref, g, **s_ref, step=t, **kw)
    assert not np.array_equal(p_fast, p0)               # the steps moved the param
    for name, a, b in [("param", p_fast, p_ref)] + [(k, s_fast[k], s_ref[k]) for k in s_ref]:
        scale = max(1.0, float(np.abs(b).max(initial=0.0)))
        err = float(np.abs(a.astype(np.float64) - b).max(initial=0.0))
        assert err <= RTOL[np.dtype(dtype)] * scale, f"{name}: max error {err:.3e}"


@pytest.mark.parametrize("shape", [(37,), (6, 10), (2, 3, 4)], ids=str)
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=lambda d: np.dtype(d).name)
def test_kernel_matches_the_class_bit_for_bit(shape, dtype):
    """The class runs the same compiled code after its own checks: the same bits."""
    rng = np.random.default_rng(len(shape))
    p0 = rng.standard_normal(shape).astype(dtype)
    p_kernel, p_class = p0.copy(), p0.copy()
    state = _state(shape, dtype)
    opt = fastlr.Adafactor([p_class], lr=0.03, weight_decay=0.01)
    for t in range(1, N_STEPS + 1):
        g = _grad(rng, shape, dtype)
        kernels.adafactor(p_kernel, g, **state, step=t, lr=0.03, weight_decay=0.01)
        opt.step([g])
    np.testing.assert_array_equal(p_kernel, p_class)
    saved = opt.state_dict()["state"][0]
    for name, buf in state.items():
        np.testing.assert_array_equal(buf, saved[name])


def _args():
    return dict(param=np.ones((4, 3)), grad=np.full((4, 3), 0.5), row_var=np.zeros((4, 1)),
                col_var=np.zeros((1, 3)), variance=None, step=1)


def _readonly(a):
    a.flags.writeable = False
    return a


@pytest.mark.parametrize("change, exc, match", [
    (dict(grad=np.ones((4, 3), dtype=np.float32)), TypeError, "grad has dtype float32"),
    (dict(param=np.ones(3)), ValueError, "grad has shape"),
    (dict(col_var=None), ValueError, "col_var is required for a param of 2 dims"),
    (dict(col_var=np.zeros((3, 1))), ValueError, r"col_var must have shape \(1, 3\)"),
    (dict(param=_readonly(np.ones((4, 3)))), ValueError, "param is read-only"),
    (dict(row_var=_readonly(np.zeros((4, 1)))), ValueError, "row_var is read-only"),
    (dict(step=0), ValueError, "step must be >= 1"),
    (dict(lr=-0.1), ValueError, "lr must be >= 0"),
    (dict(d=0.5), ValueError, "d must be >= 1"),
    (dict(maximize="yes"), TypeError, "maximize"),
    (dict(grad=[[0.5] * 3] * 4), TypeError, "grad must be a numpy.ndarray"),
])
def test_argument_errors_name_the_kernel_and_write_nothing(change, exc, match):
    args = _args()
    args.update(change)
    before = {k: v.copy() for k, v in args.items() if isinstance(v, np.ndarray)}
    with pytest.raises(exc, match=rf"^fastlr\.kernels\.adafactor: .*{match}"):
        kernels.adafactor(**args)
    for k, v in before.items():
        np.testing.assert_array_equal(args[k], v)


def test_overlapping_buffers_are_refused():
    block = np.zeros(8)
    args = _args()
    args["row_var"] = block[:4].reshape(4, 1)
    args["col_var"] = block[2:5].reshape(1, 3)              # shares two values with row_var
    with pytest.raises(ValueError, match="^fastlr.kernels.adafactor: row_var and col_var "
                                         "overlap in memory"):
        kernels.adafactor(**args)
    assert not block.any()

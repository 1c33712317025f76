"""Bad input to fastlr.kernels: a TypeError or ValueError whose message names the argument,
raised before any buffer is touched (every array bit-identical afterwards)."""

import numpy as np
import pytest

from fastlr import kernels


def unaligned(n, dtype):
    raw = np.zeros(n * np.dtype(dtype).itemsize + 1, dtype=np.uint8)
    a = raw[1:].view(dtype)
    assert not a.flags.aligned
    return a


def base_args(name, dtype=np.float32, shape=(6,)):
    """A valid call: (positional arrays as a dict, keyword arguments)."""
    rng = np.random.default_rng(0)
    arrays = {"param": rng.standard_normal(shape).astype(dtype),
              "grad": rng.standard_normal(shape).astype(dtype)}
    kwargs = {"lr": 0.1}
    if name == "sgd":
        arrays["momentum_buffer"] = np.ones(shape, dtype)
        kwargs.update(step=2, momentum=0.9)
    elif name == "rmsprop":
        arrays["square_avg"] = np.ones(shape, dtype)
    else:
        arrays["exp_avg"] = np.ones(shape, dtype)
        arrays["exp_avg_sq"] = np.ones(shape, dtype)
        kwargs["step"] = 3
    return arrays, kwargs


def set_array(key, value):
    def mutate(arrays, kwargs):
        arrays[key] = value(arrays) if callable(value) else value
    return mutate


def set_kw(key, value):
    def mutate(arrays, kwargs):
        kwargs[key] = value
    return mutate


def readonly(key):
    def mutate(arrays, kwargs):
        arrays[key].flags.writeable = False
    return mutate


def strided(key):
    def mutate(arrays, kwargs):
        arrays[key] = np.zeros(2 * arrays[key].size, arrays[key].dtype)[::2]
    return mutate


def partial_overlap(first, second):
    """Two views of one buffer that share half their elements."""
    def mutate(arrays, kwargs):
        base = np.arange(9, dtype=arrays[first].dtype)
        arrays[first], arrays[second] = base[:6], base[3:]
    return mutate


# (kernel, mutation, exception, message regex)
CASES = [
    # types and dtypes
    ("adam", set_array("param", [1.0] * 6), TypeError, "param must be a numpy.ndarray"),
    ("adam", set_array("grad", [1.0] * 6), TypeError, "grad must be a numpy.ndarray"),
    ("adam", set_array("exp_avg", None), TypeError, "exp_avg must be a numpy.ndarray.*NoneType"),
    ("adam", set_array("param", np.ones(6, np.int64)), TypeError,
     "param must have dtype float32 or float64, got int64"),
    ("adam", set_array("param", np.ones(6, np.float16)), TypeError,
     "param must have dtype float32 or float64, got float16"),
    ("adam", set_array("grad", np.ones(6, np.float64)), TypeError,
     "grad has dtype float64 but param has dtype float32"),
    ("adam", set_array("exp_avg_sq", np.ones(6, np.float64)), TypeError,
     "exp_avg_sq has dtype float64 but param has dtype float32"),
    ("sgd", set_array("grad", np.ones(6, np.int32)), TypeError,
     "grad has dtype int32 but param has dtype float32"),
    ("rmsprop", set_array("grad", np.ones(6, ">f4")), TypeError,
     "grad has non-native byte order"),
    # shapes and layout
    ("adam", set_array("grad", np.ones(5, np.float32)), ValueError,
     r"grad has shape \(5,\) but param has shape \(6,\)"),
    ("adam", set_array("exp_avg", np.ones((2, 3), np.float32)), ValueError,
     r"exp_avg has shape \(2, 3\) but param has shape \(6,\)"),
    ("sgd", set_array("momentum_buffer", np.ones(7, np.float32)), ValueError,
     "momentum_buffer has shape"),
    ("adam", strided("param"), ValueError, "param must be contiguous"),
    ("adam", strided("grad"), ValueError, "grad is not contiguous"),
    ("rmsprop", strided("square_avg"), ValueError, "square_avg is not contiguous"),
    ("adam", set_array("param", lambda a: np.zeros((6, 6), np.float32)[:, 2]), ValueError,
     "param must be contiguous"),
    ("adam", set_array("param", unaligned(6, np.float32)), ValueError, "param is not aligned"),
    # writeability and overlap
    ("adam", readonly("param"), ValueError, r"param is read-only"),
    ("adam", readonly("exp_avg_sq"), ValueError, r"exp_avg_sq is read-only"),
    ("sgd", readonly("momentum_buffer"), ValueError, r"momentum_buffer is read-only"),
    ("adam", set_array("exp_avg", lambda a: a["param"]), ValueError,
     "param and exp_avg overlap in memory"),
    ("adam", set_array("grad", lambda a: a["exp_avg_sq"]), ValueError,
     "grad and exp_avg_sq overlap in memory"),
    ("rmsprop", partial_overlap("param", "square_avg"), ValueError,
     "param and square_avg overlap in memory"),
    # step
    ("adam", set_kw("step", 0), ValueError, r"step must be >= 1 .*got 0"),
    ("adam", set_kw("step", -3), ValueError, r"step must be >= 1 .*got -3"),
    ("adam", set_kw("step", 1.0), TypeError, r"step must be an int >= 1"),
    ("sgd", set_kw("step", True), TypeError, r"step must be an int >= 1"),
    ("adam", set_kw("step", 2 ** 63), ValueError, r"step must be < 2\*\*63"),
    # hyperparameters
    ("adam", set_kw("lr", -0.1), ValueError, r"lr must be >= 0, got -0.1"),
    ("adam", set_kw("lr", float("nan")), ValueError, r"lr must be a finite number, got nan"),
    ("adam", set_kw("lr", float("inf")), ValueError, r"lr must be a finite number, got inf"),
    ("adam", set_kw("lr", "0.1"), TypeError, r"lr must be a real number, got str"),
    ("adam", set_kw("lr", None), TypeError, r"lr must be a real number, got NoneType"),
    ("adam", set_kw("beta1", 1.0), ValueError, r"beta1 must be in \[0, 1\), got 1.0"),
    ("adam", set_kw("beta2", -0.1), ValueError, r"beta2 must be in \[0, 1\), got -0.1"),
    ("adamw", set_kw("eps", -1e-8), ValueError, r"eps must be >= 0, got -1e-08"),
    ("adamw", set_kw("weight_decay", -0.01), ValueError, r"weight_decay must be >= 0"),
    ("adam", set_kw("maximize", "yes"), TypeError, r"maximize must be a bool"),
    ("adam", set_kw("decoupled_weight_decay", None), TypeError,
     r"decoupled_weight_decay must be a bool"),
    ("adam", set_kw("n_threads", 0), ValueError, r"n_threads must be between 1 and 4096"),
    ("adam", set_kw("n_threads", 2.0), TypeError, r"n_threads must be an int >= 1 or None"),
    ("sgd", set_kw("momentum", -0.9), ValueError, r"momentum must be >= 0, got -0.9"),
    ("sgd", set_kw("dampening", float("nan")), ValueError, r"dampening must be a finite"),
    ("rmsprop", set_kw("alpha", -0.5), ValueError, r"alpha must be >= 0, got -0.5"),
    ("rmsprop", set_kw("eps", float("nan")), ValueError, r"eps must be a finite"),
    # option / state consistency
    ("sgd", set_array("momentum_buffer", None), ValueError,
     r"momentum=0.9 needs momentum_buffer, got None"),
    ("sgd", set_kw("momentum", 0.0), ValueError,
     r"momentum_buffer was given but momentum=0.0 does not use it"),
    ("sgd", lambda a, k: k.update(nesterov=True, dampening=0.1), ValueError,
     r"nesterov=True requires momentum > 0 and dampening == 0"),
    ("rmsprop", set_kw("momentum", 0.9), ValueError, r"momentum=0.9 needs momentum_buffer"),
    ("rmsprop", set_array("momentum_buffer", lambda a: np.zeros(6, np.float32)), ValueError,
     r"momentum_buffer was given but momentum=0.0 does not use it"),
]


def case_id(case):
    name, mutate, exc, regex = case
    return f"{name}-{exc.__name__}-{regex}"[:80]


@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("dtype", [np.float32])
def test_bad_input_raises_and_touches_nothing(case, dtype):
    name, mutate, exc, regex = case
    arrays, kwargs = base_args(name, dtype)
    mutate(arrays, kwargs)
    snapshot = {k: (np.array(v, copy=True).tobytes() if isinstance(v, np.ndarray) else None)
                for k, v in arrays.items()}
    fn = getattr(kernels, name)
    with pytest.raises(exc, match=regex) as info:
        fn(*arrays.values(), **kwargs)
    assert str(info.value).startswith(f"fastlr.kernels.{name}: ")
    for k, v in arrays.items():
        if isinstance(v, np.ndarray):
            assert np.array(v, copy=True).tobytes() == snapshot[k], f"{k} was modified"


def test_layout_mismatch_between_c_and_f():
    p = np.ones((3, 4), np.float64)
    g = np.asfortranarray(np.ones((3, 4), np.float64))
    with pytest.raises(ValueError, match="grad is F-contiguous but param is C-contiguous"):
        kernels.sgd(p, g, step=1, lr=0.1)
    pf = np.asfortranarray(p)
    m, v = np.zeros((3, 4)), np.zeros((3, 4))
    with pytest.raises(ValueError, match="exp_avg is C-contiguous but param is F-contiguous"):
        kernels.adam(pf, g, m, v, step=1, lr=0.1)
    np.testing.assert_array_equal(pf, 1.0)


def test_missing_keyword_only_arguments():
    p, g = np.ones(3), np.ones(3)
    with pytest.raises(TypeError, match="step"):
        kernels.sgd(p, g, lr=0.1)
    with pytest.raises(TypeError, match="lr"):
        kernels.adam(p, g, np.zeros(3), np.zeros(3), step=1)
    with pytest.raises(TypeError):
        kernels.adam(p, g, np.zeros(3), np.zeros(3), None, 1, 0.1)  # step, lr keyword-only

"""The array checks' messages say how to fix the common NumPy mistakes: a transposed or
sliced (non-contiguous) array -> np.ascontiguousarray; a torch tensor where an ndarray is
expected -> t.numpy() or fastlr.compat.torch. The hint texts live in fastlr._core.args
(ndarray_hint, layout_hint), one implementation for compiled and Python layers.

HINTED_ELSEWHERE lists messages formed outside fastlr._core.arrays (kernels, engine, optim,
clip, EMA), each checked for its hint.
"""

import numpy as np
import pytest

import fastlr
from fastlr import kernels
from fastlr._core import args


class Tensor:
    """Stands in for a torch.Tensor (the hint goes by the type's module), torch or not."""
    __module__ = "torch"

    def numpy(self):
        return np.ones(3, dtype=np.float32)


TORCH = ("t.numpy()", "fastlr.compat.torch")


def test_ndarray_hint():
    hint = args.ndarray_hint(Tensor())
    assert hint.startswith("; ") and all(t in hint for t in TORCH)
    for value in ([1.0], 1.0, None, "x", np.ones(2)):
        assert args.ndarray_hint(value) == ""


def test_ndarray_hint_of_a_real_tensor():
    torch = pytest.importorskip("torch")
    assert all(t in args.ndarray_hint(torch.ones(2)) for t in TORCH)


def test_layout_hint():
    assert args.layout_hint("grad") == ("; pass np.ascontiguousarray(grad) (a transposed or "
                                        "sliced array is not contiguous)")
    assert "np.asfortranarray(grad)" in args.layout_hint("grad", True)
    written = args.layout_hint("params[0]", False, True)
    assert "np.ascontiguousarray(params[0])" in written and "updated in place" in written


def _f32(*shape):
    return np.ones(shape, dtype=np.float32)


def test_check_like_hints_the_fix():
    # fastlr._core.arrays.check_like (fastlr.kernels.ema_update's pairs)
    ema = _f32(3, 4)
    with pytest.raises(ValueError) as info:
        kernels.ema_update(ema, _f32(4, 3).T, decay=0.9)
    assert str(info.value).endswith("; pass np.ascontiguousarray(param) (a transposed or "
                                     "sliced array is not contiguous)")
    with pytest.raises(ValueError, match=r"np\.asfortranarray\(param\)"):
        kernels.ema_update(np.asfortranarray(ema), _f32(3, 4), decay=0.9)


# (where the message is formed, call, exception, words the message must hold)
def _adam_kernel(p, g):
    return lambda: kernels.adam(p, g, **kernels.make_state("adam", _f32(3, 4)), step=1,
                                lr=0.1)


def _step(grad):
    opt = fastlr.Adam([_f32(3, 4)], lr=0.1)
    return lambda: opt.step([grad])


HINTED_ELSEWHERE = [
    ("_kernels.pyx: _check_arrays, not an ndarray", _adam_kernel(_f32(3, 4), Tensor()),
     TypeError, TORCH),
    ("_kernels.pyx: _check_arrays, layout", _adam_kernel(_f32(3, 4), _f32(4, 3).T),
     ValueError, ("np.ascontiguousarray(grad)",)),
    ("_kernels.pyx: _check_arrays, param not contiguous",
     _adam_kernel(_f32(3, 8)[:, ::2], _f32(3, 4)), ValueError,
     ("np.ascontiguousarray(param)",)),
    ("engine.pyx: step, grads not an ndarray", _step(Tensor()), TypeError, TORCH),
    ("engine.pyx: step, grads layout", _step(_f32(4, 3).T), ValueError,
     ("np.ascontiguousarray(grads[0])",)),
    ("optim/groups.py: _check_param, not an ndarray", lambda: fastlr.Adam([Tensor()]),
     TypeError, TORCH),
    ("optim/groups.py: _check_param, not contiguous", lambda: fastlr.Adam([_f32(3, 8)[:, ::2]]),
     ValueError, ("np.ascontiguousarray(params[0])",)),
    ("clip.pxi: grads not an ndarray", lambda: fastlr.clip_grad_norm([Tensor()], 1.0),
     TypeError, TORCH),
    ("ema.pyx: _check_one, not an ndarray", lambda: fastlr.EMA([Tensor()]), TypeError, TORCH),
]


@pytest.mark.parametrize("call,exc,words", [
    pytest.param(call, exc, words, id=where) for where, call, exc, words in HINTED_ELSEWHERE])
def test_messages_hint_the_fix(call, exc, words):
    with pytest.raises(exc) as info:
        call()
    for word in words:
        assert word in str(info.value), str(info.value)

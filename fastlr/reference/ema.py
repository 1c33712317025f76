"""Pure-NumPy twins of the weight-EMA kernels (fastlr._core.ema): the oracle the tests hold
them to. Clear NumPy, temporaries allowed; no code shared with the kernels.

``ema_update`` follows torch's lerp, the operation of ``torch._foreach_lerp_(ema, param,
1 - decay)`` (torch.optim.swa_utils.get_ema_multi_avg_fn, timm ModelEmaV3).
"""

import numpy as np


def _pairs(a, b):
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return [a], [b]
    a, b = list(a), list(b)
    if len(a) != len(b):
        raise ValueError(f"got {len(a)} and {len(b)} arrays; they pair up one to one")
    for x, y in zip(a, b):
        if x.dtype != y.dtype or x.shape != y.shape:
            raise ValueError(f"pairs must share dtype and shape, got {x.dtype}{x.shape} and "
                             f"{y.dtype}{y.shape}")
    return a, b


def ema_update(ema, param, *, decay, n_threads=None):
    """``ema = lerp(ema, param, 1 - decay)`` in place, as torch computes it: with
    ``w = 1 - decay`` (rounded to the arrays' dtype), ``ema + w * (param - ema)`` when
    ``w < 0.5``, else ``param - (param - ema) * (1 - w)``. Arrays or lists of arrays.
    ``n_threads`` is accepted for signature parity and ignored."""
    decay = float(decay)
    if not (0.0 <= decay <= 1.0):
        raise ValueError(f"decay must be in [0, 1], got {decay!r}")
    for e, p in zip(*_pairs(ema, param)):
        t = e.dtype.type
        w = t(1.0 - decay)
        with np.errstate(all="ignore"):     # inf - inf is NaN, as in the kernel
            if w < t(0.5):
                new = e + w * (p - e)
            else:
                new = p - (p - e) * (t(1.0) - w)
        e[...] = new


def swap_buffers(a, b, *, n_threads=None):
    """Exchange the contents of ``a`` and ``b`` (arrays or lists of arrays) in place."""
    for x, y in zip(*_pairs(a, b)):
        tmp = x.copy()
        x[...] = y
        y[...] = tmp

"""Pure-NumPy twins of the weight-EMA kernels (fastlr._core.ema): the oracle the tests hold
them to. Clear NumPy, temporaries allowed; no code shared with the kernels.

``ema_update`` follows torch's lerp, the operation of ``torch._foreach_lerp_(ema, param,
1 - decay)`` (torch.optim.swa_utils.get_ema_multi_avg_fn, timm ModelEmaV3).
"""

from __future__ import annotations

from typing import Any, List, Sequence, Tuple, Union

import numpy as np
from numpy.typing import NDArray

Arrays = Union[NDArray[Any], Sequence[NDArray[Any]]]


def _pairs(a: Arrays, b: Arrays) -> Tuple[List[NDArray[Any]], List[NDArray[Any]]]:
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
    """``ema = lerp(ema, param, 1 - decay)`` in place, as torch computes it.

    With ``w = 1 - decay`` (rounded to the arrays' dtype), ``ema + w * (param - ema)``
    when ``w < 0.5``, else ``param - (param - ema) * (1 - w)``.

    Parameters
    ----------
    ema : ndarray or sequence of ndarray
        The averages, updated in place.
    param : ndarray or sequence of ndarray
        The current values (only read); as many as ``ema``, each with its ``ema``'s
        dtype and shape.
    decay : float
        Weight of the old average, in [0, 1].
    n_threads : int, optional
        Accepted for signature parity with the kernel and ignored.

    Returns
    -------
    None
        ``ema`` is updated in place.

    Raises
    ------
    ValueError
        ``decay`` is not in [0, 1], the lists differ in length, or a pair differs in
        dtype or shape.

    Examples
    --------
    >>> e = np.zeros(3); p = np.ones(3)
    >>> fastlr.reference.ema_update(e, p, decay=0.75)
    >>> e
    array([0.25, 0.25, 0.25])
    """
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
    """Exchange the contents of ``a`` and ``b`` (arrays or lists of arrays) in place.

    Parameters
    ----------
    a, b : ndarray or sequence of ndarray
        Two arrays, or two equally long sequences of arrays; each pair shares dtype and
        shape. Both are written.
    n_threads : int, optional
        Accepted for signature parity with the kernel and ignored.

    Returns
    -------
    None
        ``a`` and ``b`` are updated in place.

    Raises
    ------
    ValueError
        The sequences differ in length, or a pair differs in dtype or shape.

    Examples
    --------
    >>> a = np.zeros(2); b = np.ones(2)
    >>> fastlr.reference.swap_buffers(a, b)
    >>> a, b
    (array([1., 1.]), array([0., 0.]))
    """
    for x, y in zip(*_pairs(a, b)):
        tmp = x.copy()
        x[...] = y
        y[...] = tmp

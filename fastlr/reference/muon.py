"""Pure-NumPy twin of fastlr's Muon kernel (``torch.optim.Muon`` 2.13, single-tensor path).

Written as plain NumPy, operation by operation as torch, sharing no code with
``fastlr._core.muon``. torch's Newton-Schulz orthogonalization runs in **bfloat16** (on
CPU too): every matrix it produces is rounded to bfloat16, nearest even. Here a bfloat16
matrix is a float32 array whose values are bfloat16 numbers, and each torch operation is
emulated as the float32 computation torch's CPU kernels perform followed by one rounding:

* ``X @ Y`` (bfloat16): the float32 product (float32 accumulation), rounded;
* ``addmm(C, A, B, beta=b, alpha=c)``: ``b*C + c*(A @ B)`` in float32, rounded once;
* ``X.div_(n)``: ``X / n`` in float32, rounded; ``X.norm()``: the 2-norm, rounded.

Only the order of the float32 sums inside a matrix product is BLAS's own (MKL's in torch,
NumPy's BLAS here), which changes a rounded bfloat16 element now and then on long rows.
"""

import math

import numpy as np

__all__ = ["muon"]


def _to_bf16(x):
    """``x`` rounded to bfloat16 (nearest, ties to even), as float32 values; float64 is
    first rounded to float32, as torch's ``Tensor.bfloat16()`` does."""
    x = np.asarray(x, dtype=np.float32)
    bits = x.view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16 << 16
    out = (bits & 0xFFFFFFFF).astype(np.uint32).view(np.float32)
    return np.where(np.isnan(x), x, out)


def _lerp(start, end, weight):
    """torch's lerp: two branches on the weight, in the arrays' dtype."""
    w = start.dtype.type(weight)
    if w < 0.5:
        return start + w * (end - start)
    return end - (end - start) * (start.dtype.type(1) - w)


def _newton_schulz(update, ns_coefficients, ns_steps, eps):
    """torch's ``_zeropower_via_newtonschulz``, in emulated bfloat16."""
    a, b, c = (np.float32(v) for v in ns_coefficients)
    x = _to_bf16(update)
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    norm = _to_bf16(np.sqrt(np.sum(x.astype(np.float64) ** 2)))
    norm = max(norm, _to_bf16(np.float32(eps)))
    x = _to_bf16(x / np.float32(norm))
    for _ in range(ns_steps):
        gram = _to_bf16(x @ x.T)
        gram_update = _to_bf16(b * gram + c * (gram @ gram))
        x = _to_bf16(a * x + gram_update @ x)
    return x.T if tall else x


def muon(param, grad, momentum_buffer, *, lr, weight_decay=0.1, momentum=0.95,
         nesterov=True, ns_coefficients=(3.4445, -4.775, 2.0315), eps=1e-7, ns_steps=5,
         adjust_lr_fn=None):
    """One Muon update of a 2-D ``param`` in place (torch.optim.Muon's single-tensor path).

    ``B <- lerp(B, g, 1 - momentum)``; ``u = lerp(g, B, momentum)`` (Nesterov) or ``B``;
    ``O = NS(u)`` (bfloat16 Newton-Schulz, ``ns_steps`` iterations of
    ``X <- a X + (b G + c G G) X``, ``G = X X^T``, on ``u / max(||u||_F, eps)``, transposed
    when rows > cols); ``param <- param * (1 - lr * weight_decay) - lr' * O`` with
    ``lr' = lr * sqrt(max(1, rows / cols))`` (``adjust_lr_fn`` None or "original") or
    ``lr * 0.2 * sqrt(max(rows, cols))`` ("match_rms_adamw").

    ``param``, ``grad`` and ``momentum_buffer`` are 2-D arrays of one dtype and shape; the
    param and the buffer are updated in place. Returns None.
    """
    if param.ndim != 2:
        raise ValueError(f"muon: param must be 2-D, got shape {param.shape}")
    if grad.shape != param.shape or momentum_buffer.shape != param.shape:
        raise ValueError("muon: grad and momentum_buffer must have param's shape")
    momentum_buffer[...] = _lerp(momentum_buffer, grad, 1 - momentum)
    update = _lerp(grad, momentum_buffer, momentum) if nesterov else momentum_buffer
    ortho = _newton_schulz(update, ns_coefficients, ns_steps, eps)
    rows, cols = param.shape
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        adjusted_lr = lr * math.sqrt(max(1, rows / cols))
    elif adjust_lr_fn == "match_rms_adamw":
        adjusted_lr = lr * (0.2 * math.sqrt(max(rows, cols)))
    else:
        adjusted_lr = lr
    dt = param.dtype.type
    param[...] = param * dt(1 - lr * weight_decay)
    param[...] = param + dt(-adjusted_lr) * ortho.astype(param.dtype)

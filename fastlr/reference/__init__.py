"""Pure-NumPy reference implementations of the fastlr optimizer kernels.

This module is the test oracle for :mod:`fastlr.kernels`, in the spirit of
bottleneck's ``bn.slow``: every compiled kernel has a twin here with the
**same name and the same signature**, written as plain, readable NumPy
(temporaries and all) rather than fast code.  It shares no code with the
compiled kernels and imports nothing but NumPy, so it works even when the
extension module has not been built, and a bug in the compiled code cannot
hide in a helper that the oracle also uses.

Semantics follow ``torch.optim`` 2.13's single-tensor path
(``foreach=False``), formula for formula:

* :func:`sgd`     -- ``torch.optim.SGD``
* :func:`rmsprop` -- ``torch.optim.RMSprop``
* :func:`adam`    -- ``torch.optim.Adam`` (``decoupled_weight_decay`` and
  ``amsgrad`` included)
* :func:`adamw`   -- ``torch.optim.AdamW`` (Adam with decoupled weight decay)
* :func:`adagrad`, :func:`adadelta`, :func:`adamax`, :func:`nadam`,
  :func:`radam` -- the torch.optim classes of the same names
* :func:`lion`    -- ``optax.lion`` (torch 2.13 has no Lion)
* :func:`ema_update`, :func:`swap_buffers` -- the weight EMA's kernels (torch's lerp)
* :func:`sgd_sklearn`, :func:`adam_sklearn` -- scikit-learn's MLP optimizers
  (lr inside the velocity; Adam's epsilon-hat form), from ``_reference_sklearn``
* :mod:`fastlr.reference.inplace` -- the same updates with in-place ``out=`` ufuncs
  (``numpy_inplace_sgd`` ...): the best a NumPy user can do, ``fastlr bench``'s baseline

Conventions shared by all functions:

* ``param`` and the state buffers are updated **in place** (results are
  written back with ``buf[...] = new``, so the caller's arrays change) and
  the functions return ``None``.  ``grad`` is never modified.
* Optional state is switched on by passing its buffer: ``grad_avg`` makes
  RMSprop centered, ``max_exp_avg_sq`` makes Adam/AdamW use AMSGrad.  State
  buffers start as zeros (``np.zeros_like(param)``) and belong to the caller.
* ``step`` is the 1-based number of the update being applied to these buffers
  (1 on the first call).  Torch keeps it in optimizer state; here the caller
  passes it.
* Arithmetic happens in the arrays' own dtype: hyperparameters are converted
  to Python floats, which NumPy >= 2 (NEP 50) does not let upcast a float32
  array, so float32 stays float32 throughout.
* ``n_threads`` is accepted for signature compatibility and ignored; the
  reference is serial.
* Validation is deliberately minimal (this is an oracle, not the public API):
  shapes must match, ``step`` must be >= 1 where it is used, and state that
  the chosen options need must be supplied, else :class:`ValueError`.
"""

import numpy as np

from fastlr.reference.ema import ema_update, swap_buffers
from fastlr.reference.lowprecision import adam_bf16_state
from fastlr.reference.int8state import adam_int8_state
from fastlr.reference.sklearn import adam_sklearn, sgd_sklearn
from fastlr.reference.sparse import coalesce, sparse_adagrad, sparse_adam, sparse_sgd  # noqa: F401
from fastlr.reference import schedulefree  # noqa: F401  (the schedule-free loops' twins)
from fastlr.reference.layerwise import lamb, lars
from fastlr.reference.lrfree import prodigy_step
from fastlr.reference.dadapt import dadapt_adagrad_step, dadapt_adam_step, dadapt_sgd_step  # noqa: F401
from fastlr.reference.muon import muon  # noqa: F401  (Muon's twin; its own module)
from fastlr.reference.adafactor import adafactor
from fastlr.reference.mixed import adam_mixed  # noqa: F401  (16-bit params; fastlr.kernels.adam_mixed)
from fastlr.reference.mixed import adam_mixed_int8_state  # noqa: F401  (... with 8-bit state)

__all__ = ["sgd", "rmsprop", "adam", "adamw", "adagrad", "adadelta", "adamax", "nadam", "radam",
           "lion", "rprop", "asgd", "sgd_sklearn", "adam_sklearn", "ema_update", "swap_buffers",
           "lamb", "lars", "adam_bf16_state", "adam_int8_state", "prodigy_step", "adafactor"]


# ---------------------------------------------------------------------------
# small helpers (validation and torch's lerp); no numerics shared with kernels
# ---------------------------------------------------------------------------

def _check_shapes(param, **arrays):
    for name, arr in arrays.items():
        if arr is not None and np.shape(arr) != np.shape(param):
            raise ValueError(
                f"{name} has shape {np.shape(arr)}, expected {np.shape(param)} "
                "(the shape of param)"
            )


def _check_step(step):
    if step is None or step < 1:
        raise ValueError(f"step must be >= 1 (1-based update number), got {step!r}")
    return int(step)        # a Python int: 0.999 ** np.int64(7) rounds differently


def _lerp(start, end, weight):
    """``torch.lerp(start, end, weight)`` for a scalar ``weight``.

    Mathematically ``start + weight * (end - start)``.  Torch evaluates it in
    one of two ways for better rounding (ATen/native/Lerp.h)::

        |weight| <  0.5:  start + weight * (end - start)
        |weight| >= 0.5:  end - (end - start) * (1 - weight)

    The weight, its complement and the branch test are in the arrays' dtype, as in torch
    (for float32, ``1 - w`` is rounded to float32 before ``1 - (1 - w)`` is formed).
    """
    dtype = np.result_type(start)
    weight = dtype.type(weight)
    if abs(weight) < 0.5:
        return start + weight * (end - start)
    return end - (end - start) * (dtype.type(1.0) - weight)


# ---------------------------------------------------------------------------
# SGD
# ---------------------------------------------------------------------------

def sgd(param, grad, momentum_buffer=None, *, step, lr, momentum=0.0,
        dampening=0.0, nesterov=False, weight_decay=0.0, maximize=False,
        n_threads=None):
    """One SGD step (``torch.optim.SGD``), in place.

    With ``p`` = param, ``g`` = grad, ``b`` = momentum_buffer, ``t`` = step::

        g = -g                       if maximize
        g = g + weight_decay * p     if weight_decay != 0
        if momentum != 0:
            b = g                                    if t == 1  (a copy; no
                                                     (1 - dampening) factor)
            b = momentum * b + (1 - dampening) * g   if t > 1
            g = g + momentum * b     if nesterov
            g = b                    otherwise
        p = p - lr * g

    Parameters
    ----------
    param : ndarray
        Parameters, updated in place.
    grad : ndarray
        Gradient, same shape as ``param``; not modified.
    momentum_buffer : ndarray, optional
        Required (and updated in place) when ``momentum != 0``; its contents
        are ignored and overwritten on ``step == 1``.
    step : int
        1-based update number, >= 1.
    lr, momentum, dampening, weight_decay : float
        Hyperparameters as in torch.
    nesterov, maximize : bool
        Options as in torch.  (Torch's constructor also requires
        ``momentum > 0`` and ``dampening == 0`` for Nesterov; the reference
        just applies the formula.)
    n_threads : int, optional
        Accepted for signature compatibility with the kernel and ignored.

    Returns
    -------
    None
        ``param`` and the state buffers are updated in place.

    Raises
    ------
    ValueError
        An array's shape differs from ``param``'s, ``step < 1``, or ``momentum != 0`` without
        ``momentum_buffer``.

    Examples
    --------
    >>> p = np.ones(3); g = np.full(3, 0.5)
    >>> fastlr.reference.sgd(p, g, step=1, lr=0.1)
    >>> p
    array([0.95, 0.95, 0.95])
    """
    step = _check_step(step)
    lr, momentum, dampening, weight_decay = (
        float(lr), float(momentum), float(dampening), float(weight_decay))
    grad = np.asarray(grad)
    _check_shapes(param, grad=grad, momentum_buffer=momentum_buffer)

    g = -grad if maximize else grad
    if weight_decay != 0:
        g = g + weight_decay * param

    if momentum != 0:
        if momentum_buffer is None:
            raise ValueError("momentum != 0 requires momentum_buffer")
        if step == 1:
            buf = g.copy()
        else:
            buf = momentum * momentum_buffer + (1.0 - dampening) * g
        momentum_buffer[...] = buf
        if nesterov:
            g = g + momentum * buf
        else:
            g = buf

    param[...] = param - lr * g


# ---------------------------------------------------------------------------
# RMSprop
# ---------------------------------------------------------------------------

def rmsprop(param, grad, square_avg, momentum_buffer=None, grad_avg=None, *,
            lr, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
            maximize=False, n_threads=None):
    """One RMSprop step (``torch.optim.RMSprop``), in place.

    Centered when ``grad_avg`` is given.  With ``p`` = param, ``g`` = grad,
    ``v`` = square_avg, ``a`` = grad_avg, ``b`` = momentum_buffer::

        g = -g                       if maximize
        g = g + weight_decay * p     if weight_decay != 0
        v = alpha * v + (1 - alpha) * g * g
        if centered:
            a = lerp(a, g, 1 - alpha)          # a + (1 - alpha) * (g - a)
            avg = sqrt(v - a * a) + eps
        else:
            avg = sqrt(v) + eps                # eps outside the sqrt
        if momentum > 0:
            b = momentum * b + g / avg
            p = p - lr * b
        else:
            p = p - lr * g / avg

    There is no bias correction, so no ``step`` argument.

    Parameters
    ----------
    param : ndarray
        Parameters, updated in place.
    grad : ndarray
        Gradient, same shape as ``param``; not modified.
    square_avg : ndarray
        Running average of squared gradients (starts at zeros), in place.
    momentum_buffer : ndarray, optional
        Required (and updated in place) when ``momentum > 0``; starts at
        zeros (unlike SGD there is no first-step special case).
    grad_avg : ndarray, optional
        Running average of gradients (starts at zeros); passing it selects
        the centered variant.  Updated in place.
    lr, alpha, eps, weight_decay, momentum : float
        Hyperparameters as in torch.
    maximize : bool
        Maximize the objective (step along ``+grad``).
    n_threads : int, optional
        Accepted for signature compatibility with the kernel and ignored.

    Returns
    -------
    None
        ``param`` and the state buffers are updated in place.

    Raises
    ------
    ValueError
        An array's shape differs from ``param``'s, or ``momentum > 0`` without
        ``momentum_buffer``.

    Examples
    --------
    >>> p = np.ones(2); g = np.ones(2); v = np.zeros(2)
    >>> fastlr.reference.rmsprop(p, g, v, lr=0.01, alpha=0.75, eps=0.0)
    >>> v, p
    (array([0.25, 0.25]), array([0.98, 0.98]))
    """
    lr, alpha, eps, weight_decay, momentum = (
        float(lr), float(alpha), float(eps), float(weight_decay), float(momentum))
    grad = np.asarray(grad)
    _check_shapes(param, grad=grad, square_avg=square_avg,
                  momentum_buffer=momentum_buffer, grad_avg=grad_avg)
    if momentum > 0 and momentum_buffer is None:
        raise ValueError("momentum > 0 requires momentum_buffer")

    g = -grad if maximize else grad
    if weight_decay != 0:
        g = g + weight_decay * param

    sq = alpha * square_avg + (1.0 - alpha) * g * g
    square_avg[...] = sq

    if grad_avg is not None:
        ga = _lerp(grad_avg, g, 1.0 - alpha)
        grad_avg[...] = ga
        avg = np.sqrt(sq - ga * ga) + eps
    else:
        avg = np.sqrt(sq) + eps

    if momentum > 0 and momentum_buffer is not None:     # (checked above)
        buf = momentum * momentum_buffer + g / avg
        momentum_buffer[...] = buf
        param[...] = param - lr * buf
    else:
        param[...] = param - lr * (g / avg)


# ---------------------------------------------------------------------------
# Adam / AdamW
# ---------------------------------------------------------------------------

def adam(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq=None, *, step, lr,
         beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
         decoupled_weight_decay=False, maximize=False, n_threads=None):
    """One Adam step (``torch.optim.Adam``), in place.

    AMSGrad when ``max_exp_avg_sq`` is given.  With ``p`` = param,
    ``g`` = grad, ``m`` = exp_avg, ``v`` = exp_avg_sq,
    ``vmax`` = max_exp_avg_sq, ``t`` = step::

        g = -g                            if maximize
        if weight_decay != 0:
            p = p * (1 - lr * weight_decay)   if decoupled_weight_decay (AdamW)
            g = g + weight_decay * p          otherwise (L2 penalty)
        m = lerp(m, g, 1 - beta1)         # m + (1 - beta1) * (g - m)
        v = beta2 * v + (1 - beta2) * g * g
        bc1 = 1 - beta1 ** t              # Python float (float64) scalars
        bc2 = 1 - beta2 ** t
        if amsgrad:
            vmax = maximum(vmax, v)       # NaN-propagating
            vhat = vmax
        else:
            vhat = v
        denom = sqrt(vhat) / sqrt(bc2) + eps
        p = p - (lr / bc1) * m / denom

    Parameters
    ----------
    param : ndarray
        Parameters, updated in place.
    grad : ndarray
        Gradient, same shape as ``param``; not modified.
    exp_avg, exp_avg_sq : ndarray
        First and second moment estimates (start at zeros), in place.
    max_exp_avg_sq : ndarray, optional
        Running maximum of ``exp_avg_sq`` (starts at zeros); passing it
        selects AMSGrad.  Updated in place.
    step : int
        1-based update number, >= 1 (used for bias correction).
    lr, beta1, beta2, eps, weight_decay : float
        Hyperparameters as in torch (torch's ``betas=(beta1, beta2)``).
    decoupled_weight_decay : bool
        Decay ``param`` directly (AdamW) instead of adding an L2 term to the gradient.
    maximize : bool
        Maximize the objective (step along ``+grad``).
    n_threads : int, optional
        Accepted for signature compatibility with the kernel and ignored.

    Returns
    -------
    None
        ``param`` and the state buffers are updated in place.

    Raises
    ------
    ValueError
        An array's shape differs from ``param``'s, ``step < 1``.

    Examples
    --------
    >>> p = np.ones(2); g = np.full(2, 0.5); m = np.zeros(2); v = np.zeros(2)
    >>> fastlr.reference.adam(p, g, m, v, step=1, lr=0.1)
    >>> m, p.round(6)
    (array([0.05, 0.05]), array([0.9, 0.9]))
    """
    step = _check_step(step)
    lr, beta1, beta2, eps, weight_decay = (
        float(lr), float(beta1), float(beta2), float(eps), float(weight_decay))
    grad = np.asarray(grad)
    _check_shapes(param, grad=grad, exp_avg=exp_avg, exp_avg_sq=exp_avg_sq,
                  max_exp_avg_sq=max_exp_avg_sq)

    g = -grad if maximize else grad
    p = param
    if weight_decay != 0:
        if decoupled_weight_decay:
            p = p * (1.0 - lr * weight_decay)
        else:
            g = g + weight_decay * p

    m = _lerp(exp_avg, g, 1.0 - beta1)
    v = beta2 * exp_avg_sq + (1.0 - beta2) * g * g
    exp_avg[...] = m
    exp_avg_sq[...] = v

    bias_correction1 = 1.0 - beta1 ** step
    bias_correction2 = 1.0 - beta2 ** step
    step_size = lr / bias_correction1
    bias_correction2_sqrt = bias_correction2 ** 0.5

    if max_exp_avg_sq is not None:
        vmax = np.maximum(max_exp_avg_sq, v)
        max_exp_avg_sq[...] = vmax
        vhat = vmax
    else:
        vhat = v

    denom = np.sqrt(vhat) / bias_correction2_sqrt + eps
    param[...] = p - step_size * (m / denom)


def adamw(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq=None, *, step, lr,
          beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=1e-2, maximize=False,
          n_threads=None):
    """One AdamW step (``torch.optim.AdamW``), in place.

    Exactly :func:`adam` with ``decoupled_weight_decay=True`` (note the
    different default ``weight_decay=1e-2``)::

        p = p * (1 - lr * weight_decay)
        ... then the Adam update with the undecayed gradient

    AMSGrad when ``max_exp_avg_sq`` is given.

    Parameters
    ----------
    param : ndarray
        Parameters, updated in place.
    grad : ndarray
        Gradient, same shape as ``param``; not modified.
    exp_avg, exp_avg_sq : ndarray
        First and second moment estimates (start at zeros), in place.
    max_exp_avg_sq : ndarray, optional
        Running maximum of ``exp_avg_sq`` (starts at zeros); passing it
        selects AMSGrad.  Updated in place.
    step : int
        1-based update number, >= 1 (used for bias correction).
    lr, beta1, beta2, eps : float
        Hyperparameters as in torch (torch's ``betas=(beta1, beta2)``).
    weight_decay : float
        Decoupled weight decay: ``param`` is scaled by ``1 - lr * weight_decay``.
    maximize : bool
        Maximize the objective (step along ``+grad``).
    n_threads : int, optional
        Accepted for signature compatibility with the kernel and ignored.

    Returns
    -------
    None
        ``param`` and the state buffers are updated in place.

    Raises
    ------
    ValueError
        An array's shape differs from ``param``'s, ``step < 1``.

    Examples
    --------
    >>> p = np.ones(2); g = np.full(2, 0.5); m = np.zeros(2); v = np.zeros(2)
    >>> fastlr.reference.adamw(p, g, m, v, step=1, lr=0.1, weight_decay=0.5)
    >>> p.round(6)
    array([0.85, 0.85])
    """
    adam(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step=step, lr=lr,
         beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
         decoupled_weight_decay=True, maximize=maximize, n_threads=n_threads)


# ---------------------------------------------------------------------------
# Adagrad, Adadelta, Adamax, NAdam, RAdam (torch.optim), Lion (optax)
# ---------------------------------------------------------------------------

def _decay_or_l2(param, g, lr, weight_decay, decoupled):
    """torch's two weight decays: returns (p, g) after ``p * (1 - lr*wd)`` or
    ``g + wd * p``."""
    if weight_decay != 0:
        if decoupled:
            return param * (1.0 - lr * weight_decay), g
        return param, g + weight_decay * param
    return param, g


def adagrad(param, grad, state_sum, *, step, lr, lr_decay=0.0, weight_decay=0.0,
            eps=1e-10, maximize=False, n_threads=None):
    """One Adagrad step (``torch.optim.Adagrad``), in place.

    With ``p`` = param, ``g`` = grad, ``t`` = step::

        g = -g if maximize;  g = g + weight_decay * p
        clr = lr / (1 + (t - 1) * lr_decay)
        state_sum = state_sum + g * g
        p = p + (-clr * g) / (sqrt(state_sum) + eps)

    Parameters
    ----------
    param : ndarray
        Parameters, updated in place.
    grad : ndarray
        Gradient, same shape as ``param``; not modified.
    state_sum : ndarray
        Sum of squared gradients (torch's ``sum``; starts at
        ``initial_accumulator_value``, usually zeros), in place.
    step : int
        1-based update number, >= 1 (used for the learning-rate decay).
    lr, lr_decay, weight_decay, eps : float
        Hyperparameters as in torch.
    maximize : bool
        Maximize the objective (step along ``+grad``).
    n_threads : int, optional
        Accepted for signature compatibility with the kernel and ignored.

    Returns
    -------
    None
        ``param`` and the state buffers are updated in place.

    Raises
    ------
    ValueError
        An array's shape differs from ``param``'s, ``step < 1``.

    Examples
    --------
    >>> p = np.ones(2); g = np.full(2, 2.0); s = np.zeros(2)
    >>> fastlr.reference.adagrad(p, g, s, step=1, lr=0.1, eps=0.0)
    >>> s, p
    (array([4., 4.]), array([0.9, 0.9]))
    """
    step = _check_step(step)
    _check_shapes(param, grad=grad, state_sum=state_sum)
    lr, lr_decay, weight_decay, eps = float(lr), float(lr_decay), float(weight_decay), float(eps)
    g = -np.asarray(grad) if maximize else np.asarray(grad)
    _, g = _decay_or_l2(param, g, lr, weight_decay, False)
    clr = lr / (1.0 + (step - 1) * lr_decay)
    s = state_sum + g * g
    state_sum[...] = s
    param[...] = param + (-clr * g) / (np.sqrt(s) + eps)


def adadelta(param, grad, square_avg, acc_delta, *, lr=1.0, rho=0.9, eps=1e-6,
             weight_decay=0.0, maximize=False, n_threads=None):
    """One Adadelta step (``torch.optim.Adadelta``), in place.

    With ``p`` = param, ``g`` = grad::

        g = -g if maximize;  g = g + weight_decay * p
        square_avg = rho * square_avg + (1 - rho) * g * g
        delta = sqrt(acc_delta + eps) / sqrt(square_avg + eps) * g
        acc_delta = rho * acc_delta + (1 - rho) * delta * delta
        p = p - lr * delta

    There is no bias correction, so no ``step`` argument.

    Parameters
    ----------
    param : ndarray
        Parameters, updated in place.
    grad : ndarray
        Gradient, same shape as ``param``; not modified.
    square_avg : ndarray
        Running average of squared gradients (starts at zeros), in place.
    acc_delta : ndarray
        Running average of squared updates (starts at zeros), in place.
    lr, rho, eps, weight_decay : float
        Hyperparameters as in torch.
    maximize : bool
        Maximize the objective (step along ``+grad``).
    n_threads : int, optional
        Accepted for signature compatibility with the kernel and ignored.

    Returns
    -------
    None
        ``param`` and the state buffers are updated in place.

    Raises
    ------
    ValueError
        An array's shape differs from ``param``'s.

    Examples
    --------
    >>> p = np.ones(2); g = np.ones(2); sq = np.zeros(2); acc = np.zeros(2)
    >>> fastlr.reference.adadelta(p, g, sq, acc, rho=0.75, eps=0.25)
    >>> sq, p
    (array([0.25, 0.25]), array([0.29289322, 0.29289322]))
    """
    _check_shapes(param, grad=grad, square_avg=square_avg, acc_delta=acc_delta)
    lr, rho, eps, weight_decay = float(lr), float(rho), float(eps), float(weight_decay)
    g = -np.asarray(grad) if maximize else np.asarray(grad)
    _, g = _decay_or_l2(param, g, lr, weight_decay, False)
    sq = square_avg * rho + (1.0 - rho) * g * g
    square_avg[...] = sq
    delta = np.sqrt(acc_delta + eps) / np.sqrt(sq + eps) * g
    acc_delta[...] = acc_delta * rho + (1.0 - rho) * delta * delta
    param[...] = param + (-lr) * delta


def adamax(param, grad, exp_avg, exp_inf, *, step, lr, beta1=0.9, beta2=0.999, eps=1e-8,
           weight_decay=0.0, maximize=False, n_threads=None):
    """One Adamax step (``torch.optim.Adamax``), in place.

    With ``p`` = param, ``g`` = grad, ``m`` = exp_avg, ``u`` = exp_inf,
    ``t`` = step::

        g = -g if maximize;  g = g + weight_decay * p
        m = lerp(m, g, 1 - beta1)
        u = maximum(beta2 * u, |g| + eps)          # NaN-propagating
        p = p + (-(lr / (1 - beta1 ** t)) * m) / u

    Parameters
    ----------
    param : ndarray
        Parameters, updated in place.
    grad : ndarray
        Gradient, same shape as ``param``; not modified.
    exp_avg : ndarray
        First moment estimate (starts at zeros), in place.
    exp_inf : ndarray
        Exponentially weighted infinity norm (starts at zeros), in place.
    step : int
        1-based update number, >= 1 (used for bias correction).
    lr, beta1, beta2, eps, weight_decay : float
        Hyperparameters as in torch (torch's ``betas=(beta1, beta2)``).
    maximize : bool
        Maximize the objective (step along ``+grad``).
    n_threads : int, optional
        Accepted for signature compatibility with the kernel and ignored.

    Returns
    -------
    None
        ``param`` and the state buffers are updated in place.

    Raises
    ------
    ValueError
        An array's shape differs from ``param``'s, ``step < 1``.

    Examples
    --------
    >>> p = np.ones(2); g = np.full(2, 0.5); m = np.zeros(2); u = np.zeros(2)
    >>> fastlr.reference.adamax(p, g, m, u, step=1, lr=0.1, eps=0.0)
    >>> u, p.round(6)
    (array([0.5, 0.5]), array([0.9, 0.9]))
    """
    step = _check_step(step)
    _check_shapes(param, grad=grad, exp_avg=exp_avg, exp_inf=exp_inf)
    lr, beta1, beta2, eps, weight_decay = (float(lr), float(beta1), float(beta2), float(eps),
                                           float(weight_decay))
    g = -np.asarray(grad) if maximize else np.asarray(grad)
    _, g = _decay_or_l2(param, g, lr, weight_decay, False)
    m = _lerp(exp_avg, g, 1.0 - beta1)
    exp_avg[...] = m
    u = np.maximum(exp_inf * beta2, np.abs(g) + eps)
    exp_inf[...] = u
    clr = lr / (1.0 - beta1 ** step)
    param[...] = param + (-clr * m) / u


def nadam(param, grad, exp_avg, exp_avg_sq, *, step, mu_product, lr, beta1=0.9, beta2=0.999,
          eps=1e-8, weight_decay=0.0, momentum_decay=4e-3, decoupled_weight_decay=False,
          maximize=False, n_threads=None):
    """One NAdam step (``torch.optim.NAdam``), in place; returns the new ``mu_product``.

    With ``p`` = param, ``g`` = grad, ``m`` = exp_avg, ``v`` = exp_avg_sq,
    ``t`` = step::

        mu(t) = beta1 * (1 - 0.5 * 0.96 ** (t * momentum_decay))
        P = mu_product * mu(t);  P' = P * mu(t + 1)
        m = lerp(m, g, 1 - beta1);  v = beta2 * v + (1 - beta2) * g * g
        denom = sqrt(v / (1 - beta2 ** t)) + eps
        p = p + (-lr * (1 - mu(t)) / (1 - P) * g) / denom
        p = p + (-lr * mu(t + 1) / (1 - P') * m) / denom

    Parameters
    ----------
    param : ndarray
        Parameters, updated in place.
    grad : ndarray
        Gradient, same shape as ``param``; not modified.
    exp_avg, exp_avg_sq : ndarray
        First and second moment estimates (start at zeros), in place.
    step : int
        1-based update number, >= 1.
    mu_product : float
        Product of the momentum coefficients ``mu(1) ... mu(t - 1)`` so far (1.0 before
        the first update; torch's ``state["mu_product"]``).
    lr, beta1, beta2, eps, weight_decay, momentum_decay : float
        Hyperparameters as in torch (torch's ``betas=(beta1, beta2)``).
    decoupled_weight_decay : bool
        Decay ``param`` directly instead of adding an L2 term to the gradient.
    maximize : bool
        Maximize the objective (step along ``+grad``).
    n_threads : int, optional
        Accepted for signature compatibility with the kernel and ignored.

    Returns
    -------
    float
        The new ``mu_product``, ``mu_product * mu(t)``, to pass at the next update.

    Raises
    ------
    ValueError
        An array's shape differs from ``param``'s, or ``step < 1``.

    Examples
    --------
    >>> p = np.ones(2); g = np.full(2, 0.5); m = np.zeros(2); v = np.zeros(2)
    >>> mu = fastlr.reference.nadam(p, g, m, v, step=1, mu_product=1.0, lr=0.1)
    >>> round(mu, 6)
    0.450073
    """
    step = _check_step(step)
    _check_shapes(param, grad=grad, exp_avg=exp_avg, exp_avg_sq=exp_avg_sq)
    lr, beta1, beta2, eps, weight_decay, momentum_decay = (
        float(lr), float(beta1), float(beta2), float(eps), float(weight_decay),
        float(momentum_decay))
    g = -np.asarray(grad) if maximize else np.asarray(grad)
    p, g = _decay_or_l2(param, g, lr, weight_decay, decoupled_weight_decay)
    mu = beta1 * (1.0 - 0.5 * 0.96 ** (step * momentum_decay))
    mu_next = beta1 * (1.0 - 0.5 * 0.96 ** ((step + 1) * momentum_decay))
    product = float(mu_product) * mu
    product_next = product * mu_next
    m = _lerp(exp_avg, g, 1.0 - beta1)
    exp_avg[...] = m
    v = exp_avg_sq * beta2 + (1.0 - beta2) * g * g
    exp_avg_sq[...] = v
    denom = np.sqrt(v / (1.0 - beta2 ** step)) + eps
    p = p + ((-lr * (1.0 - mu) / (1.0 - product)) * g) / denom
    param[...] = p + ((-lr * mu_next / (1.0 - product_next)) * m) / denom
    return product


def radam(param, grad, exp_avg, exp_avg_sq, *, step, lr, beta1=0.9, beta2=0.999, eps=1e-8,
          weight_decay=0.0, decoupled_weight_decay=False, maximize=False, n_threads=None):
    """One RAdam step (``torch.optim.RAdam``), in place.

    With ``p`` = param, ``g`` = grad, ``m`` = exp_avg, ``v`` = exp_avg_sq,
    ``t`` = step, ``bc1 = 1 - beta1 ** t``, ``bc2 = 1 - beta2 ** t`` and torch's
    rectification term ``rect``::

        m = lerp(m, g, 1 - beta1);  v = beta2 * v + (1 - beta2) * g * g
        rho_inf = 2 / (1 - beta2) - 1
        rho_t = rho_inf - 2 t beta2 ** t / (1 - beta2 ** t)
        rho_t > 5:  p = p - m / bc1 * lr * (sqrt(bc2) / (sqrt(v) + eps)) * rect
        otherwise:  p = p - m / bc1 * lr

    Parameters
    ----------
    param : ndarray
        Parameters, updated in place.
    grad : ndarray
        Gradient, same shape as ``param``; not modified.
    exp_avg, exp_avg_sq : ndarray
        First and second moment estimates (start at zeros), in place.
    step : int
        1-based update number, >= 1 (used for bias correction and rectification).
    lr, beta1, beta2, eps, weight_decay : float
        Hyperparameters as in torch (torch's ``betas=(beta1, beta2)``).
    decoupled_weight_decay : bool
        Decay ``param`` directly instead of adding an L2 term to the gradient.
    maximize : bool
        Maximize the objective (step along ``+grad``).
    n_threads : int, optional
        Accepted for signature compatibility with the kernel and ignored.

    Returns
    -------
    None
        ``param`` and the state buffers are updated in place.

    Raises
    ------
    ValueError
        An array's shape differs from ``param``'s, ``step < 1``.

    Examples
    --------
    >>> p = np.ones(2); g = np.full(2, 0.5); m = np.zeros(2); v = np.zeros(2)
    >>> fastlr.reference.radam(p, g, m, v, step=1, lr=0.1)
    >>> p.round(6)
    array([0.95, 0.95])
    """
    step = _check_step(step)
    _check_shapes(param, grad=grad, exp_avg=exp_avg, exp_avg_sq=exp_avg_sq)
    lr, beta1, beta2, eps, weight_decay = (float(lr), float(beta1), float(beta2), float(eps),
                                           float(weight_decay))
    g = -np.asarray(grad) if maximize else np.asarray(grad)
    p, g = _decay_or_l2(param, g, lr, weight_decay, decoupled_weight_decay)
    m = _lerp(exp_avg, g, 1.0 - beta1)
    exp_avg[...] = m
    v = exp_avg_sq * beta2 + (1.0 - beta2) * g * g
    exp_avg_sq[...] = v
    bc1 = 1.0 - beta1 ** step
    bc2 = 1.0 - beta2 ** step
    rho_inf = 2.0 / (1.0 - beta2) - 1.0
    rho_t = rho_inf - 2.0 * step * beta2 ** step / bc2
    if rho_t > 5.0:
        rect = ((rho_t - 4.0) * (rho_t - 2.0) * rho_inf
                / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t)) ** 0.5
        param[...] = p - m / bc1 * lr * (bc2 ** 0.5 / (np.sqrt(v) + eps)) * rect
    else:
        param[...] = p - m / bc1 * lr


def lion(param, grad, exp_avg, *, lr, beta1=0.9, beta2=0.99, weight_decay=1e-3,
         maximize=False, n_threads=None):
    """One Lion step (``optax.lion``), in place.

    With ``p`` = param, ``g`` = grad, ``m`` = exp_avg::

        u = sign((1 - beta1) * g + beta1 * m)
        m = (1 - beta2) * g + beta2 * m
        p = p + (-lr) * (u + weight_decay * p)

    Parameters
    ----------
    param : ndarray
        Parameters, updated in place.
    grad : ndarray
        Gradient, same shape as ``param``; not modified.
    exp_avg : ndarray
        Momentum (starts at zeros), in place.
    lr, beta1, beta2, weight_decay : float
        Hyperparameters as in ``optax.lion`` (``b1``, ``b2``); the weight decay is
        decoupled (scaled by ``lr``).
    maximize : bool
        Maximize the objective (step along ``+grad``).
    n_threads : int, optional
        Accepted for signature compatibility with the kernel and ignored.

    Returns
    -------
    None
        ``param`` and ``exp_avg`` are updated in place.

    Raises
    ------
    ValueError
        An array's shape differs from ``param``'s.

    Examples
    --------
    >>> p = np.ones(2); g = np.array([0.5, -0.5]); m = np.zeros(2)
    >>> fastlr.reference.lion(p, g, m, lr=0.1, weight_decay=0.0)
    >>> p
    array([0.9, 1.1])
    """
    _check_shapes(param, grad=grad, exp_avg=exp_avg)
    lr, beta1, beta2, weight_decay = float(lr), float(beta1), float(beta2), float(weight_decay)
    g = -np.asarray(grad) if maximize else np.asarray(grad)
    x = (1.0 - beta1) * g + beta1 * exp_avg
    u = np.where(x > 0, 1.0, np.where(x < 0, -1.0, x)).astype(x.dtype)   # keeps -0 and NaN
    exp_avg[...] = (1.0 - beta2) * g + beta2 * exp_avg
    param[...] = param + (-lr) * (u + weight_decay * param)


def rprop(param, grad, prev, step_size, *, etaminus=0.5, etaplus=1.2, step_size_min=1e-6,
          step_size_max=50.0, maximize=False, n_threads=None):
    """One Rprop step (``torch.optim.Rprop``, its single-tensor path), in place.

    With ``g = -grad if maximize else grad``::

        f = etaplus where g * prev > 0, etaminus where < 0, 1 elsewhere (0 or NaN)
        step_size = min(max(step_size * f, step_size_min), step_size_max)
        g = 0 where f == etaminus
        param = param - sign(g) * step_size      (sign: 1, -1, else 0)
        prev = g

    Parameters
    ----------
    param : ndarray
        Parameters, updated in place.
    grad : ndarray
        Gradient, same shape as ``param``; not modified.
    prev : ndarray
        The previous step's (zeroed) gradient (starts at zeros), in place.
    step_size : ndarray
        Per-element step sizes (start at ``lr``), in place.
    etaminus, etaplus : float
        The step-size factors (torch's ``etas``), in (0, 1) and > 1.
    step_size_min, step_size_max : float
        The step-size bounds (torch's ``step_sizes``).
    maximize : bool
        Maximize the objective (step along ``+grad``).
    n_threads : int, optional
        Accepted for signature compatibility with the kernel and ignored.

    Returns
    -------
    None
        ``param``, ``prev`` and ``step_size`` are updated in place.

    Raises
    ------
    ValueError
        An array's shape differs from ``param``'s.

    Examples
    --------
    >>> p = np.ones(2); prev = np.zeros(2); ss = np.full(2, 0.1)
    >>> fastlr.reference.rprop(p, np.array([0.5, -0.5]), prev, ss)
    >>> p
    array([0.9, 1.1])
    """
    _check_shapes(param, grad=grad, prev=prev, step_size=step_size)
    dt = param.dtype.type            # torch rounds the factors and bounds to the dtype
    em, ep = dt(etaminus), dt(etaplus)
    g = -np.asarray(grad) if maximize else np.asarray(grad)
    s = g * prev
    f = np.where(s > 0, ep, np.where(s < 0, em, dt(1))).astype(param.dtype)
    step_size[...] = np.minimum(np.maximum(step_size * f, dt(step_size_min)),
                                dt(step_size_max))
    g = np.where(f == em, dt(0), g).astype(param.dtype)
    u = np.where(g > 0, dt(1), np.where(g < 0, dt(-1), dt(0))).astype(param.dtype)
    param[...] = param - u * step_size
    prev[...] = g


def asgd(param, grad, ax, *, step, eta, lr, lambd=1e-4, alpha=0.75, t0=1e6, weight_decay=0.0,
         maximize=False, n_threads=None):
    """One ASGD step (``torch.optim.ASGD``, its single-tensor path), in place.

    With ``g = -grad if maximize else grad``, ``t = step``, ``eta = lr`` at ``t == 1``
    and ``mu = 1`` at ``t == 1``, else ``1 / max(1, t - 1 - t0)``::

        g = g + weight_decay * param             (if weight_decay != 0)
        param = param * (1 - lambd * eta) + (-eta) * g
        ax = ax + (param - ax) * mu if mu != 1 else param
        returns lr / (1 + lambd * lr * t) ** alpha

    Parameters
    ----------
    param : ndarray
        Parameters, updated in place.
    grad : ndarray
        Gradient, same shape as ``param``; not modified.
    ax : ndarray
        The average of the params (starts at zeros), in place.
    step : int
        The 1-based update number.
    eta : float
        This update's step size, the previous call's return value (ignored at step 1).
    lr, lambd, alpha, t0, weight_decay : float
        As ``torch.optim.ASGD``.
    maximize : bool
        Maximize the objective (step along ``+grad``).
    n_threads : int, optional
        Accepted for signature compatibility with the kernel and ignored.

    Returns
    -------
    float
        The next update's ``eta``.

    Raises
    ------
    ValueError
        An array's shape differs from ``param``'s.

    Examples
    --------
    >>> p = np.ones(2); ax = np.zeros(2)
    >>> eta = fastlr.reference.asgd(p, np.array([1.0, -1.0]), ax, step=1, eta=0.0, lr=0.1,
    ...                             lambd=0.0)
    >>> p, ax, eta
    (array([0.9, 1.1]), array([0.9, 1.1]), 0.1)
    """
    _check_shapes(param, grad=grad, ax=ax)
    dt = param.dtype.type
    step, lr, lambd, alpha, t0 = int(step), float(lr), float(lambd), float(alpha), float(t0)
    eta = lr if step == 1 else float(eta)
    mu = 1.0 if step == 1 else 1.0 / max(1.0, float(step - 1) - t0)
    g = -np.asarray(grad) if maximize else np.asarray(grad)
    if weight_decay != 0:
        g = g + dt(weight_decay) * param
    p = param * dt(1.0 - lambd * eta)
    p = p + dt(-eta) * g
    param[...] = p
    if mu != 1.0:
        ax[...] = ax + (p - ax) * dt(mu)
    else:
        ax[...] = p
    return lr / (1.0 + lambd * lr * float(step)) ** alpha

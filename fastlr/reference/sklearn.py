"""Pure-NumPy twins of :mod:`fastlr._core.sklearn_kernels` (scikit-learn's MLP optimizers).

The test oracle for ``sgd_sklearn`` and ``adam_sklearn``: same names, same signatures,
written as plain NumPy (temporaries and all) after
``sklearn.neural_network._stochastic_optimizers``. It imports nothing but NumPy and shares
no code with the compiled kernels.

Conventions (as :mod:`fastlr.reference`): ``param`` and the state buffers are updated in
place (``buf[...] = new``) and the functions return ``None``; ``grad`` is only read;
``n_threads`` is accepted and ignored; validation is minimal (shapes, ``step >= 1``).

Precision: hyperparameters are Python floats, which NumPy never lets upcast an array, so
everything runs in the arrays' dtype, except Adam's ``lr_t``, which sklearn computes with
``np.sqrt`` and so is a float64 NumPy scalar. Under NumPy >= 2 (NEP 50) that scalar makes
sklearn's ``-lr_t * m / (sqrt(v) + eps)`` a float64 array, and ``param += update`` adds in
float64 and rounds to float32 once. The twin spells those casts out, so it gives those
numbers under any NumPy version. A float32 ``param`` with a float64 ``grad`` and float64
state (sklearn's MLPRegressor on float32 data) follows NumPy's promotion the same way: the
update is float64 and ``param[...] =`` rounds it once.
"""

import numpy as np

__all__ = ["sgd_sklearn", "adam_sklearn"]


def _check(param, **arrays):
    for name, a in arrays.items():
        if a.shape != param.shape:
            raise ValueError(f"{name} has shape {a.shape} but param has shape {param.shape}")


def sgd_sklearn(param, grad, velocity, *, lr, momentum, nesterov, n_threads=None):
    """SGD with the learning rate inside the velocity (sklearn's ``SGDOptimizer``).

    The update, in place::

        velocity = momentum * velocity - lr * grad
        param   += momentum * velocity - lr * grad      (nesterov)
        param   += velocity                             (otherwise)

    Parameters
    ----------
    param : ndarray
        Parameters, updated in place.
    grad : ndarray
        Gradient, same shape as ``param``; only read.
    velocity : ndarray
        sklearn's velocity (starts at zeros), updated in place.
    lr : float
        Learning rate (sklearn's ``learning_rate_init``).
    momentum : float
        Momentum, in [0, 1].
    nesterov : bool
        Nesterov's momentum (sklearn's ``nesterovs_momentum``).
    n_threads : int, optional
        Accepted for signature compatibility with the kernel and ignored.

    Returns
    -------
    None
        ``param`` and ``velocity`` are updated in place.

    Raises
    ------
    ValueError
        ``grad`` or ``velocity`` has a shape other than ``param``'s.

    Examples
    --------
    >>> p = np.ones(3); g = np.full(3, 0.5); vel = np.zeros(3)
    >>> fastlr.reference.sgd_sklearn(p, g, vel, lr=0.1, momentum=0.9, nesterov=False)
    >>> vel, p
    (array([-0.05, -0.05, -0.05]), array([0.95, 0.95, 0.95]))
    """
    _check(param, grad=grad, velocity=velocity)
    lr = float(lr)
    momentum = float(momentum)
    new_velocity = momentum * velocity - lr * grad
    velocity[...] = new_velocity
    if nesterov:
        update = momentum * new_velocity - lr * grad
    else:
        update = new_velocity
    param[...] = param + update


def adam_sklearn(param, grad, m, v, *, step, lr, beta1, beta2, eps, n_threads=None):
    """Adam in the "epsilon-hat" form (sklearn's ``AdamOptimizer``).

    The update, in place, with ``t = step``::

        m     = beta1 * m + (1 - beta1) * grad
        v     = beta2 * v + (1 - beta2) * grad**2
        lr_t  = lr * sqrt(1 - beta2**t) / (1 - beta1**t)        (float64)
        param += -lr_t * m / (sqrt(v) + eps)                    (in float64, then rounded)

    Parameters
    ----------
    param : ndarray
        Parameters, updated in place.
    grad : ndarray
        Gradient, same shape as ``param``; only read.
    m, v : ndarray
        First and second moment estimates (start at zeros), updated in place.
    step : int
        The 1-based update number (sklearn's ``t`` after its increment), >= 1.
    lr : float
        Base learning rate (sklearn's ``learning_rate_init``).
    beta1, beta2 : float
        Decay rates of the moment estimates.
    eps : float
        Added to ``sqrt(v)`` in the denominator.
    n_threads : int, optional
        Accepted for signature compatibility with the kernel and ignored.

    Returns
    -------
    None
        ``param``, ``m`` and ``v`` are updated in place.

    Raises
    ------
    ValueError
        An array's shape differs from ``param``'s, or ``step < 1``.

    Examples
    --------
    >>> p = np.ones(2); g = np.full(2, 0.5); m1 = np.zeros(2); v1 = np.zeros(2)
    >>> fastlr.reference.adam_sklearn(p, g, m1, v1, step=1, lr=0.1, beta1=0.9,
    ...                               beta2=0.999, eps=1e-8)
    >>> p.round(6)
    array([0.9, 0.9])
    """
    _check(param, grad=grad, m=m, v=v)
    if step < 1:
        raise ValueError(f"step must be >= 1 (1-based update number), got {step!r}")
    t = int(step)
    lr, beta1, beta2, eps = float(lr), float(beta1), float(beta2), float(eps)
    new_m = beta1 * m + (1 - beta1) * grad
    new_v = beta2 * v + (1 - beta2) * (grad**2)
    m[...] = new_m
    v[...] = new_v
    lr_t = np.float64(lr * np.sqrt(1 - beta2**t) / (1 - beta1**t))
    denom = np.sqrt(new_v) + eps                           # in the arrays' dtype
    update = (-lr_t) * new_m.astype(np.float64) / denom.astype(np.float64)
    param[...] = (param.astype(np.float64) + update).astype(param.dtype)

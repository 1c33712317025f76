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
    """SGD with the learning rate inside the velocity (sklearn's ``SGDOptimizer``)::

        velocity = momentum * velocity - lr * grad
        param   += momentum * velocity - lr * grad      (nesterov)
        param   += velocity                             (otherwise)
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
    """Adam in the "epsilon-hat" form (sklearn's ``AdamOptimizer``), ``t = step``::

        m     = beta1 * m + (1 - beta1) * grad
        v     = beta2 * v + (1 - beta2) * grad**2
        lr_t  = lr * sqrt(1 - beta2**t) / (1 - beta1**t)        (float64)
        param += -lr_t * m / (sqrt(v) + eps)                    (in float64, then rounded)
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

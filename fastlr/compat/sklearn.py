"""scikit-learn-style optimizers: ``SGDOptimizer`` and ``AdamOptimizer``.

Drop-in versions of ``sklearn.neural_network._stochastic_optimizers.SGDOptimizer`` and
``AdamOptimizer`` (the optimizers inside ``MLPClassifier`` / ``MLPRegressor``): the same
constructor arguments in the same order, the same attributes (``learning_rate_init``,
``learning_rate``, ``momentum``, ``nesterov``, ``lr_schedule``, ``power_t``, ``velocities``;
``beta_1``, ``beta_2``, ``epsilon``, ``t``, ``ms``, ``vs``), the same methods
(``update_params(params, grads)``, ``iteration_ends(time_step)``,
``trigger_stopping(msg, verbose)``) and the same numbers, bit for bit, in float64 and (with
NumPy >= 2) in float32. scikit-learn is not needed: nothing here imports it.

The differences from sklearn's classes:

* the update runs in one compiled call per step over all arrays
  (:mod:`fastlr._core.sklearn_kernels`), in place, with no temporaries; sklearn allocates a few
  arrays per parameter per step and rebinds ``velocities`` / ``ms`` / ``vs`` to them. Here
  these lists hold buffers allocated once (``np.zeros_like``) and updated in place; you may
  replace a list or an array in it (e.g. to copy state from sklearn's optimizer) before the
  next step;
* mixed dtypes as sklearn's MLPRegressor produces them on float32 data (float32 weights,
  float64 targets hence float64 grads): the state becomes float64 at the first such update
  (the float32 buffers in the lists are replaced by float64 ones, as sklearn's arithmetic
  does) and each float32 param is updated in float64 and rounded once, bit for bit as
  sklearn. Other mixes (float64 params with float32 grads) are refused;
* every array is checked (float32/float64, dtype, shape and layout equal to its state,
  contiguous, writeable, no overlap) before any is written: a bad step raises ``TypeError``
  / ``ValueError`` naming the argument and leaves every buffer and ``t`` unchanged. The
  params and state arrays are validated when first seen and remembered; later steps check
  in compiled code that the same arrays come back unchanged, and check each grad;
* constructor arguments are validated as ``MLPClassifier`` validates them;
* a keyword-only ``n_threads`` (``None``: :func:`fastlr.get_num_threads`).

The update rules (sklearn's, which differ from torch's)::

    SGD:   velocity = momentum * velocity - learning_rate * grad
           param   += momentum * velocity - learning_rate * grad   (nesterov, the default)
           param   += velocity                                     (otherwise)
    Adam:  t += 1
           m = beta_1 * m + (1 - beta_1) * grad ;  v = beta_2 * v + (1 - beta_2) * grad**2
           learning_rate = learning_rate_init * sqrt(1 - beta_2**t) / (1 - beta_1**t)
           param += -learning_rate * m / (sqrt(v) + epsilon)

``SGDOptimizer.lr_schedule``: ``'constant'``; ``'invscaling'`` (``iteration_ends(t)`` sets
``learning_rate = learning_rate_init / (t + 1) ** power_t``, where sklearn's MLP passes the
number of samples seen so far); ``'adaptive'`` (``trigger_stopping`` divides the learning
rate by 5 and returns False, until it is <= 1e-6, then returns True).

A NumPy training loop (params and grads: lists of float arrays, updated in place)::

    from fastlr.compat.sklearn import AdamOptimizer
    opt = AdamOptimizer(params, learning_rate_init=1e-3)
    for epoch in range(n_epochs):
        for batch in batches:
            grads = compute_grads(params, batch)
            opt.update_params(params, grads)
        opt.iteration_ends(samples_seen)

Inside ``MLPClassifier`` / ``MLPRegressor``: sklearn builds its optimizer in the private
method ``_fit_stochastic`` from the names ``SGDOptimizer`` / ``AdamOptimizer`` of the private
module ``sklearn.neural_network._multilayer_perceptron``; it has no public hook. The only way
in is monkeypatching those names, which :func:`patch_mlp` does for the duration of a
``with`` block (it relies on sklearn internals and may stop working with a future release)::

    with fastlr.compat.sklearn.patch_mlp():
        clf = MLPClassifier(solver="adam").fit(X, y)
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterable, Iterator, List, Optional, Sequence, Union

import numpy as np
from numpy.typing import NDArray

from fastlr._core.args import (CLOSED_UNIT, NONNEG, POSITIVE, UNIT, checked_real, choice_arg,
                               flag_arg, threads_arg)
from fastlr._core.sklearn_kernels import ListStep

__all__ = ["SGDOptimizer", "AdamOptimizer", "patch_mlp"]

_SCHEDULES = ("constant", "invscaling", "adaptive")


def _params(cls, params):
    if isinstance(params, np.ndarray) or not hasattr(params, "__iter__"):
        raise TypeError(f"{cls}: params must be a list of float32/float64 arrays (sklearn "
                        f"passes coefs_ + intercepts_), got {type(params).__name__}")
    params = list(params)
    for k, p in enumerate(params):
        if not isinstance(p, np.ndarray):
            raise TypeError(f"{cls}: params[{k}] must be a numpy.ndarray, got "
                            f"{type(p).__name__}")
        if p.dtype not in (np.float32, np.float64):
            raise TypeError(f"{cls}: params[{k}] must have dtype float32 or float64, got "
                            f"{p.dtype}")
        if not (p.flags.c_contiguous or p.flags.f_contiguous):
            raise ValueError(f"{cls}: params[{k}] must be contiguous (C or F order), got "
                             f"strides {p.strides} for shape {p.shape}; it is updated in place")
    return params


def _threads(cls, n_threads):
    return None if n_threads is None else threads_arg(cls, n_threads)


def _name(obj):
    """The public name of an optimizer class, for messages."""
    return f"fastlr.compat.sklearn.{type(obj).__name__}"


class _BaseOptimizer:
    """Shared by both optimizers: sklearn's ``BaseOptimizer`` interface."""

    _state_names: tuple = ()
    learning_rate_init: float
    learning_rate: Union[float, np.float64]
    n_threads: Optional[int]

    def __init__(self, learning_rate_init: float, n_threads: Optional[int]) -> None:
        cls = _name(self)
        self.learning_rate_init = checked_real(cls, "learning_rate_init", learning_rate_init,
                                               POSITIVE)
        self.learning_rate = float(learning_rate_init)
        self.n_threads = _threads(cls, n_threads)
        self._update = self._list_step()

    @classmethod
    def _list_step(cls):
        """The compiled update of the lists (it caches the validated arrays)."""
        return ListStep(f"fastlr.compat.sklearn.{cls.__name__}.update_params",
                        cls._state_names)

    def __setstate__(self, state):
        self.__dict__.update(state)
        if "_update" not in state:
            self._update = self._list_step()

    def iteration_ends(self, time_step: float) -> None:
        """Called by the training loop at the end of each epoch.

        Parameters
        ----------
        time_step : int
            The number of samples trained on so far (sklearn's ``t_``). Only
            ``'invscaling'`` uses it.
        """
        checked_real(f"{_name(self)}.iteration_ends", "time_step", time_step, NONNEG)

    def trigger_stopping(self, msg: str, verbose: bool) -> bool:
        """Called when the loss stopped improving.

        Parameters
        ----------
        msg : str
            What the training loop reports; printed with ``" Stopping."`` appended.
        verbose : bool
            Print ``msg``.

        Returns
        -------
        bool
            True: training should stop.
        """
        if verbose:
            print(msg + " Stopping.")
        return True


class SGDOptimizer(_BaseOptimizer):
    """Stochastic gradient descent with momentum, as sklearn's MLP does it.

    The arguments and defaults of
    ``sklearn.neural_network._stochastic_optimizers.SGDOptimizer``; ``velocities`` holds
    one zero buffer per param, updated in place. See the module docstring for the rules.

    Parameters
    ----------
    params : list of numpy.ndarray
        float32/float64 arrays (sklearn passes ``coefs_ + intercepts_``).
    learning_rate_init : float, default 0.1
        The initial learning rate, > 0.
    lr_schedule : {'constant', 'invscaling', 'adaptive'}, default 'constant'
        How the learning rate changes (see :meth:`iteration_ends` and
        :meth:`trigger_stopping`).
    momentum : float, default 0.9
        The momentum, in [0, 1].
    nesterov : bool, default True
        Nesterov's momentum.
    power_t : float, default 0.5
        The exponent of ``'invscaling'``, >= 0.
    n_threads : int, optional
        OpenMP threads; None uses :func:`fastlr.get_num_threads`.
    """

    lr_schedule: str
    momentum: float
    nesterov: bool
    power_t: float
    velocities: List[NDArray[Any]]

    def __init__(self, params: Iterable[NDArray[Any]], learning_rate_init: float = 0.1,
                 lr_schedule: str = "constant", momentum: float = 0.9, nesterov: bool = True,
                 power_t: float = 0.5, *, n_threads: Optional[int] = None) -> None:
        cls = _name(self)
        super().__init__(learning_rate_init, n_threads)
        choice_arg(cls, "lr_schedule", lr_schedule, _SCHEDULES)
        self.lr_schedule = lr_schedule
        self.momentum = checked_real(cls, "momentum", momentum, CLOSED_UNIT)
        self.nesterov = flag_arg(cls, "nesterov", nesterov)
        self.power_t = checked_real(cls, "power_t", power_t, NONNEG)
        self.velocities = [np.zeros_like(p) for p in _params(cls, params)]

    _state_names = ("velocities",)

    def update_params(self, params: Sequence[NDArray[Any]],
                      grads: Sequence[NDArray[Any]]) -> None:
        """Update ``params`` in place with ``grads``.

        Parameters
        ----------
        params : list of numpy.ndarray
            The params, aligned with ``velocities``; updated in place.
        grads : list of numpy.ndarray
            Their gradients (only read).
        """
        self._update.sgd(params, grads, self.velocities, self.learning_rate, self.momentum,
                         self.nesterov, self.n_threads)

    def iteration_ends(self, time_step: float) -> None:
        """'invscaling': ``learning_rate = learning_rate_init / (time_step + 1) ** power_t``.

        Parameters
        ----------
        time_step : int
            The number of samples trained on so far (sklearn's ``t_``).
        """
        super().iteration_ends(time_step)
        if self.lr_schedule == "invscaling":
            self.learning_rate = (
                float(self.learning_rate_init) / (time_step + 1) ** self.power_t
            )

    def trigger_stopping(self, msg: str, verbose: bool) -> bool:
        """'adaptive': divide ``learning_rate`` by 5 and go on until it is <= 1e-6, then stop.

        Other schedules stop at once. Prints as sklearn does.

        Parameters
        ----------
        msg : str
            What the training loop reports.
        verbose : bool
            Print ``msg`` and what happens.

        Returns
        -------
        bool
            True when training should stop.
        """
        if self.lr_schedule != "adaptive":
            if verbose:
                print(msg + " Stopping.")
            return True
        if self.learning_rate <= 1e-6:
            if verbose:
                print(msg + " Learning rate too small. Stopping.")
            return True
        self.learning_rate /= 5.0
        if verbose:
            print(msg + " Setting learning rate to %f" % self.learning_rate)
        return False

    def __repr__(self) -> str:
        return (f"SGDOptimizer(<{len(self.velocities)} params>, learning_rate_init="
                f"{self.learning_rate_init!r}, lr_schedule={self.lr_schedule!r}, momentum="
                f"{self.momentum!r}, nesterov={self.nesterov!r}, power_t={self.power_t!r})")


class AdamOptimizer(_BaseOptimizer):
    """Adam in the "epsilon-hat" form, as sklearn's MLP does it.

    The arguments and defaults of
    ``sklearn.neural_network._stochastic_optimizers.AdamOptimizer``. ``t`` counts the
    updates; ``ms`` / ``vs`` hold one zero buffer per param, updated in place;
    ``learning_rate`` is the bias-corrected step size of the last update (a float64), as in
    sklearn. See the module docstring for the rules.

    Parameters
    ----------
    params : list of numpy.ndarray
        float32/float64 arrays (sklearn passes ``coefs_ + intercepts_``).
    learning_rate_init : float, default 0.001
        The learning rate, > 0.
    beta_1 : float, default 0.9
        The decay of the first moment, in [0, 1).
    beta_2 : float, default 0.999
        The decay of the second moment, in [0, 1).
    epsilon : float, default 1e-8
        Added to the denominator, > 0.
    n_threads : int, optional
        OpenMP threads; None uses :func:`fastlr.get_num_threads`.
    """

    _state_names = ("ms", "vs")
    beta_1: float
    beta_2: float
    epsilon: float
    t: int
    ms: List[NDArray[Any]]
    vs: List[NDArray[Any]]

    def __init__(self, params: Iterable[NDArray[Any]], learning_rate_init: float = 0.001,
                 beta_1: float = 0.9, beta_2: float = 0.999, epsilon: float = 1e-8, *,
                 n_threads: Optional[int] = None) -> None:
        cls = _name(self)
        super().__init__(learning_rate_init, n_threads)
        self.beta_1 = checked_real(cls, "beta_1", beta_1, UNIT)
        self.beta_2 = checked_real(cls, "beta_2", beta_2, UNIT)
        self.epsilon = checked_real(cls, "epsilon", epsilon, POSITIVE)
        self.t = 0
        params = _params(cls, params)
        self.ms = [np.zeros_like(p) for p in params]
        self.vs = [np.zeros_like(p) for p in params]

    def update_params(self, params: Sequence[NDArray[Any]],
                      grads: Sequence[NDArray[Any]]) -> None:
        """Update ``params`` in place with ``grads``.

        ``t`` and ``learning_rate`` advance only when the update happened.

        Parameters
        ----------
        params : list of numpy.ndarray
            The params, aligned with ``ms`` / ``vs``; updated in place.
        grads : list of numpy.ndarray
            Their gradients (only read).
        """
        t = self.t + 1
        lr_t = self._update.adam(params, grads, self.ms, self.vs, t, self.learning_rate_init,
                                 self.beta_1, self.beta_2, self.epsilon, self.n_threads)
        self.t = t
        # sklearn's `learning_rate_init * np.sqrt(1 - beta_2**t) / (1 - beta_1**t)`, computed
        # in C with the same operations in the same order: the same float64
        self.learning_rate = np.float64(lr_t)

    def __repr__(self) -> str:
        return (f"AdamOptimizer(<{len(self.ms)} params>, learning_rate_init="
                f"{self.learning_rate_init!r}, beta_1={self.beta_1!r}, beta_2="
                f"{self.beta_2!r}, epsilon={self.epsilon!r}; t={self.t})")


@contextlib.contextmanager
def patch_mlp() -> Iterator[None]:
    """Make sklearn's ``MLPClassifier`` / ``MLPRegressor`` use these optimizers inside the
    ``with`` block (``solver='sgd'`` and ``'adam'``).

    This is monkeypatching: it swaps the names ``SGDOptimizer`` / ``AdamOptimizer`` in the
    private module ``sklearn.neural_network._multilayer_perceptron``, which sklearn's
    ``_fit_stochastic`` looks up when it builds its optimizer (at ``fit``, and at the first
    ``partial_fit``). It relies on sklearn internals and may break with a future release;
    it raises ``RuntimeError`` if the names are gone. Not thread-safe (it patches a module
    for the whole process while active).

    Returns
    -------
    contextlib.AbstractContextManager
        Use it in a ``with`` statement; the original names are restored on exit.
    """
    try:
        from sklearn.neural_network import _multilayer_perceptron as mlp
    except ImportError as error:
        raise ImportError("fastlr.compat.sklearn.patch_mlp needs scikit-learn") from error
    names = ("SGDOptimizer", "AdamOptimizer")
    missing = [n for n in names if not hasattr(mlp, n)]
    if missing:
        raise RuntimeError(f"sklearn.neural_network._multilayer_perceptron has no {missing}: "
                           f"this scikit-learn version cannot be patched")
    saved = {n: getattr(mlp, n) for n in names}
    mlp.SGDOptimizer, mlp.AdamOptimizer = SGDOptimizer, AdamOptimizer
    try:
        yield
    finally:
        for n, obj in saved.items():
            setattr(mlp, n, obj)

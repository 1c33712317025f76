"""ReduceLROnPlateau: cut the learning rate when a metric stops improving (torch's rules).

It is a controller driven by a metric, not a schedule of the step: each group's lr is
``schedule(t) * scale`` (or ``lr * scale`` for a constant), and the controller lowers
``scale``. So it composes with any schedule (a warmup, a cosine...), and its state (the
scales, the best metric, the counters) is part of the optimizer's checkpoint.

>>> import numpy as np, fastlr
>>> w = np.zeros(2)
>>> opt = fastlr.SGD([w], lr=1.0)
>>> plateau = fastlr.ReduceLROnPlateau(opt, factor=0.5, patience=1)
>>> lrs = []
>>> for loss in [1.0, 0.9, 0.9, 0.9, 0.9, 0.8, 0.8, 0.8]:
...     cut = plateau.step(loss)        # True when this call lowered the lr
...     lrs.append(opt.next_lr[0])
>>> lrs
[1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.25]
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Mapping, Sequence, Union

from fastlr._core.args import INT_MAX, NONNEG, UNIT, checked_real, choice_arg, int_arg
from fastlr.optim.base import Optimizer
from fastlr.optim.plateau_state import _CONFIG, _COUNTERS, _check_plateau_state

__all__ = ["ReduceLROnPlateau"]

_MODES: tuple[str, ...] = ("min", "max")
_THRESHOLD_MODES: tuple[str, ...] = ("rel", "abs")


class ReduceLROnPlateau:
    """Multiply each group's lr by ``factor`` when ``metric`` has not improved for more than
    ``patience`` calls of :meth:`step` (torch.optim.lr_scheduler.ReduceLROnPlateau).

    Rules (torch's): the metric improves when it is below ``best * (1 - threshold)``
    (``mode="min"``, ``threshold_mode="rel"``), below ``best - threshold`` ("abs"), or
    above ``best * (1 + threshold)`` / ``best + threshold`` for ``mode="max"``. Calls that do
    not improve count as bad; during the ``cooldown`` calls after a cut they are ignored.
    When more than ``patience`` are bad, each group's lr becomes
    ``max(lr * factor, min_lr)``, applied only when that lowers it by more than ``eps``.

    With a schedule the cut scales what the schedule gives from then on: ``lr(t) =
    schedule(t) * scale``. ``min_lr`` (a number, or one per group) bounds the lr at the
    moment of a cut, as in torch; a schedule may still go lower afterwards.

    A cut changes the group's factor (:attr:`scales`), not its ``"lr"`` entry, which keeps
    the value or schedule it was given (``optimizer.next_lr``: the lr in use). Writing
    ``optimizer.param_groups[i]["lr"]`` sets the lr of the next step as written, as in
    torch: that group's factor goes back to 1.0, and later cuts scale the written lr (a
    written schedule likewise). The factors are part of the optimizer's checkpoint.

    Parameters
    ----------
    optimizer : fastlr.Optimizer
        The optimizer whose groups' lr it scales (at most one controller per optimizer).
    mode : {'min', 'max'}, default 'min'
        Whether a lower or a higher metric is an improvement.
    factor : float, default 0.1
        The factor of each cut, in [0, 1).
    patience : int, default 10
        Calls without improvement tolerated before a cut, >= 0.
    threshold : float, default 1e-4
        How much better than the best a metric must be to count as an improvement, >= 0.
    threshold_mode : {'rel', 'abs'}, default 'rel'
        ``threshold`` relative to the best metric, or absolute.
    cooldown : int, default 0
        Calls after a cut during which bad calls are not counted, >= 0.
    min_lr : float or list of float, default 0.0
        The lowest lr a cut may set, for every group or one per group.
    eps : float, default 1e-8
        A cut that lowers the lr by no more than this is not applied.

    See Also
    --------
    fastlr.schedules : schedules of the step, which this composes with.
    """

    optimizer: Optimizer
    mode: str
    factor: float
    patience: int
    threshold: float
    threshold_mode: str
    cooldown: int
    eps: float
    min_lrs: list[float]
    best: float
    num_bad_epochs: int
    cooldown_counter: int
    last_epoch: int

    def __init__(self, optimizer: Optimizer, mode: str = "min", factor: float = 0.1,
                 patience: int = 10, threshold: float = 1e-4, threshold_mode: str = "rel",
                 cooldown: int = 0, min_lr: Union[float, Sequence[float]] = 0.0,
                 eps: float = 1e-8) -> None:
        name = "fastlr.ReduceLROnPlateau"
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{name}: optimizer must be a fastlr optimizer, got "
                            f"{type(optimizer).__name__}")
        if optimizer._plateau is not None:
            raise ValueError(f"{name}: this optimizer already has a ReduceLROnPlateau")
        n_groups = len(optimizer.param_groups)
        if isinstance(min_lr, (list, tuple)):
            if len(min_lr) != n_groups:
                raise ValueError(f"{name}: expected {n_groups} min_lr values (one per param "
                                 f"group), got {len(min_lr)}")
            min_lrs = [checked_real(name, f"min_lr[{i}]", v, NONNEG)
                       for i, v in enumerate(min_lr)]
            self._default_min_lr = None
        else:
            self._default_min_lr = checked_real(name, "min_lr", min_lr, NONNEG)
            min_lrs = [self._default_min_lr] * n_groups
        config = dict(mode=_MODES[choice_arg(name, "mode", mode, _MODES)],
                      factor=checked_real(name, "factor", factor, UNIT),
                      patience=int_arg(name, "patience", patience, 0, INT_MAX),
                      threshold=checked_real(name, "threshold", threshold, NONNEG),
                      threshold_mode=_THRESHOLD_MODES[choice_arg(name, "threshold_mode",
                                                                 threshold_mode,
                                                                 _THRESHOLD_MODES)],
                      cooldown=int_arg(name, "cooldown", cooldown, 0, INT_MAX),
                      min_lrs=min_lrs, eps=checked_real(name, "eps", eps, NONNEG))
        self.optimizer = optimizer
        self.__dict__.update(config)
        self.min_lrs = [float(v) for v in min_lrs]
        self.best = math.inf if mode == "min" else -math.inf
        self.num_bad_epochs = 0
        self.cooldown_counter = 0
        self.last_epoch = 0
        pending = optimizer._pending_plateau
        if pending is not None:
            self._check_compatible(name, pending)
            self._load(pending)
            optimizer._pending_plateau = None
        optimizer._plateau = self

    # ---- torch's rules ------------------------------------------------------------------
    @property
    def in_cooldown(self) -> bool:
        return self.cooldown_counter > 0

    def is_better(self, a: float, best: float) -> bool:
        """Whether metric ``a`` improves on ``best`` under this mode and threshold.

        Parameters
        ----------
        a : float
            A metric.
        best : float
            The best metric so far.

        Returns
        -------
        bool
        """
        if self.mode == "min" and self.threshold_mode == "rel":
            return a < best * (1.0 - self.threshold)
        if self.mode == "min":
            return a < best - self.threshold
        if self.threshold_mode == "rel":
            return a > best * (self.threshold + 1.0)
        return a > best + self.threshold

    def step(self, metric: float) -> bool:
        """Report the metric of an epoch (or evaluation); cut the lr after a plateau.

        Parameters
        ----------
        metric : float
            The metric of this evaluation (a real number, a NumPy scalar or a 0-d array).

        Returns
        -------
        bool
            True when this call cut the lr of some group.
        """
        if isinstance(metric, (bool,)) or not isinstance(metric, numbers.Real):
            try:
                metric = float(metric)      # a 0-d array, a numpy scalar
            except (TypeError, ValueError):
                raise TypeError(f"fastlr.ReduceLROnPlateau.step: metric must be a real "
                                f"number, got {type(metric).__name__}") from None
        try:
            current = float(metric)
        except OverflowError:           # an int beyond the double range
            raise ValueError("fastlr.ReduceLROnPlateau.step: metric must be a number in "
                             "the double range, got an int too large for a float") from None
        self.last_epoch += 1
        if self.is_better(current, self.best):
            self.best = current
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.in_cooldown:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0         # ignore bad epochs in cooldown
        cut = False
        if self.num_bad_epochs > self.patience:
            cut = self._reduce_lr()
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
        return cut

    def _reduce_lr(self):
        opt = self.optimizer
        n_groups = len(opt.param_groups)
        if len(self.min_lrs) != n_groups:
            if self._default_min_lr is None:
                raise ValueError(f"fastlr.ReduceLROnPlateau: the optimizer has {n_groups} "
                                 f"param groups but min_lr has {len(self.min_lrs)} values; "
                                 f"set min_lrs to one per group")
            self.min_lrs = [float(self._default_min_lr)] * n_groups
        lrs = opt.next_lr
        cut = False
        for i, old_lr in enumerate(lrs):
            new_lr = max(old_lr * self.factor, self.min_lrs[i])
            if old_lr - new_lr > self.eps:
                scale = opt._lr_scale[i]
                if old_lr * self.factor >= self.min_lrs[i]:
                    opt._lr_scale[i] = scale * self.factor
                else:
                    opt._lr_scale[i] = scale * (new_lr / old_lr)   # old_lr > new_lr >= 0
                cut = True
        return cut

    def get_last_lr(self) -> list[float]:
        """The lr each group gets at the next optimizer step.

        Returns
        -------
        list of float
            One lr per param group.
        """
        return self.optimizer.next_lr

    @property
    def scales(self) -> list[float]:
        """The factor on each group's lr (1.0 until the first cut)."""
        return [float(v) for v in self.optimizer._lr_scale]

    # ---- state --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Configuration and counters as plain numbers.

        The scales are in the optimizer's state dict, which also holds this.

        Returns
        -------
        dict
            Plain numbers and lists, for :meth:`load_state_dict`.
        """
        sd = {key: getattr(self, key) for key in _CONFIG + _COUNTERS}
        sd["min_lrs"] = list(self.min_lrs)
        return sd

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; validated first, nothing changes on error.

        Parameters
        ----------
        state_dict : dict
            What :meth:`state_dict` returned.
        """
        name = "fastlr.ReduceLROnPlateau.load_state_dict"
        sd = _check_plateau_state(name, state_dict)
        self._check_compatible(name, sd)
        self._load(sd)

    def _check_compatible(self, name, sd):
        n_groups = len(self.optimizer.param_groups)
        if len(sd["min_lrs"]) != n_groups:
            raise ValueError(f"{name}: the plateau state has {len(sd['min_lrs'])} min_lrs "
                             f"but the optimizer has {n_groups} param groups")

    def _load(self, sd):
        for key in _CONFIG + _COUNTERS:
            setattr(self, key, sd[key])
        self.min_lrs = [float(v) for v in sd["min_lrs"]]

"""An engine front: an optimizer whose step is not the engine's one call (SparseAdam's rows,
int8 state's per-param kernel) keeps the engine for the layout, the schedules and the
checks, and puts this in its place, so that :meth:`fastlr.Optimizer.step` calls it as it
calls the engine (with the optimizer's lock, names lookup and error relabelling around
it). Not an ``Engine``: ``supports_windows`` is False for it."""

import weakref
from typing import Any


class EngineFront:
    """Delegates the layout and the schedules to ``engine``; subclasses define ``step(grads,
    t, n_threads, max_grad_norm, skip_nonfinite) -> bool`` and ``last_grad_norm``."""

    __slots__ = ("_owner", "_engine")

    def __init__(self, owner: Any, engine: Any) -> None:
        self._owner = weakref.ref(owner)
        self._engine = engine

    def configure(self, *args: Any) -> None:
        self._engine.configure(*args)

    def set_groups(self, groups: Any) -> None:
        self._engine.set_groups(groups)

    def group_values(self, t: int) -> Any:
        return self._engine.group_values(t)

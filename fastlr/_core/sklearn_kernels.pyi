# Type stubs for the compiled module fastlr._core.sklearn_kernels (scikit-learn-convention kernels).
from typing import MutableSequence, Optional, Sequence, Tuple, Union

import numpy as np
from typing_extensions import disjoint_base
from numpy.typing import NDArray

_Float = Union[NDArray[np.float32], NDArray[np.float64]]

def sgd_sklearn(
    param: _Float,                      # IN/OUT
    grad: _Float,                       # IN (may be read-only)
    velocity: _Float,                   # IN/OUT
    *,
    lr: float,
    momentum: float,
    nesterov: bool,
    n_threads: Optional[int] = None,
) -> None: ...
def adam_sklearn(
    param: _Float,                      # IN/OUT
    grad: _Float,                       # IN (may be read-only)
    m: _Float,                          # IN/OUT
    v: _Float,                          # IN/OUT
    *,
    step: int,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    n_threads: Optional[int] = None,
) -> None: ...
def _set_cores(capsule: object) -> None: ...

@disjoint_base
class ListStep:
    """The validated update of aligned lists of arrays (private; fastlr.compat.sklearn)."""
    @property
    def fn(self) -> str: ...
    def __new__(cls, fn: str, state_names: Tuple[str, ...]) -> "ListStep": ...
    def sgd(
        self, params: Sequence[_Float], grads: Sequence[_Float],
        velocities: MutableSequence[_Float], lr: float, momentum: float, nesterov: bool,
        n_threads: Optional[int],
    ) -> None: ...
    def adam(
        self, params: Sequence[_Float], grads: Sequence[_Float], ms: MutableSequence[_Float],
        vs: MutableSequence[_Float], step: int, lr: float, beta1: float, beta2: float,
        eps: float, n_threads: Optional[int],
    ) -> float: ...

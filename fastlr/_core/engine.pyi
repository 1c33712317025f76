# Type stubs for the compiled module fastlr._core.engine (the optimizers' step engine; private).
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
from numpy.typing import NDArray

KINDS: Dict[str, int]

class Engine:
    total_size: int
    last_grad_norm: float
    def __init__(self, kind: str, name: str) -> None: ...
    def configure(self, params: List[np.ndarray], spans: List[Any], groups: List[Dict[str, Any]],
                  counts: NDArray[np.int64], started: NDArray[np.uint8],
                  used: NDArray[np.float64], mu_product: NDArray[np.float64],
                  lr_scale: NDArray[np.float64]) -> None: ...
    def set_groups(self, groups: List[Dict[str, Any]]) -> None: ...
    def group_values(self, t: int) -> List[Dict[str, float]]: ...
    def step(self, grads: Union[np.ndarray, Sequence[np.ndarray]], t: int,
             n_threads: int, max_grad_norm: float = 0.0,
             skip_nonfinite: bool = False) -> bool: ...

def clip_grad_norm(grads: Union[np.ndarray, Sequence[np.ndarray]], max_norm: float, *,
                   error_if_nonfinite: bool = False, n_threads: Optional[int] = None) -> float: ...
def grad_stats(grads: Union[np.ndarray, Sequence[np.ndarray]], *,
               n_threads: Optional[int] = None) -> "tuple[float, bool]": ...

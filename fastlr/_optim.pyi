# Type stubs for the compiled module fastlr._optim (the optimizers' step engine; private).
from typing import Any, Dict, List, Sequence, Union

import numpy as np
from numpy.typing import NDArray

KINDS: Dict[str, int]

class Engine:
    total_size: int
    def __init__(self, kind: str, name: str) -> None: ...
    def configure(self, params: List[np.ndarray], spans: List[Any], groups: List[Dict[str, Any]],
                  counts: NDArray[np.int64]) -> None: ...
    def group_values(self, t: int) -> List[Dict[str, float]]: ...
    def step(self, grads: Union[np.ndarray, Sequence[np.ndarray]], t: int,
             n_threads: int) -> None: ...

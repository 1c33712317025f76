# Type stubs for the compiled module fastlr._core.layerwise (the layer-wise optimizers'
# kernels: LAMB and LARS, used by fastlr.optim.layerwise).
import enum
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
from typing_extensions import disjoint_base

class Kind(enum.IntEnum):
    KIND_LAMB = 0
    KIND_LARS = 1

COLUMNS: Tuple[Dict[str, int], Dict[str, int]]
N_COLS: int

@disjoint_base
class Layerwise:
    # the arguments go to __cinit__ (tp_new): a __new__, not an __init__
    def __new__(cls, fn: str, kind: int, params: Sequence[np.ndarray],
                state: Sequence[Sequence[np.ndarray]], groups: Sequence[int],
                single: bool = False) -> "Layerwise": ...
    @property
    def params(self) -> Tuple[np.ndarray, ...]: ...
    @property
    def state(self) -> Tuple[Tuple[np.ndarray, ...], ...]: ...
    @property
    def ratios(self) -> np.ndarray: ...
    def step(self, grads: Any, hyper: np.ndarray, counts: np.ndarray, n_threads: int,
             fn: Optional[str] = None) -> None: ...

def lamb(param: np.ndarray, grad: np.ndarray, exp_avg: np.ndarray, exp_avg_sq: np.ndarray,
         *, lr: float, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-6,
         eps_root: float = 0.0, weight_decay: float = 0.0, step: int,
         n_threads: Optional[int] = None) -> float: ...
def lars(param: np.ndarray, grad: np.ndarray, momentum_buffer: np.ndarray, *, lr: float,
         momentum: float = 0.9, weight_decay: float = 0.0, trust_coefficient: float = 0.001,
         eps: float = 0.0, nesterov: bool = False, trust_ratio: bool = True,
         n_threads: Optional[int] = None) -> float: ...

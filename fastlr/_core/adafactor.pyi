# Type stubs for the compiled module fastlr._core.adafactor (Adafactor's kernels;
# fastlr.optim.adafactor re-exports adafactor).
from typing import Dict, Optional, Tuple

import numpy as np

__all__ = ["adafactor", "state_shapes"]

def state_shapes(shape: Tuple[int, ...]) -> Dict[str, Tuple[int, ...]]: ...
def check_state(fn: str, pname: str, param: np.ndarray, name: str, a: object,
                shape: tuple) -> np.ndarray: ...
def check_hypers(fn: str, where: str, lr: object, beta2_decay: object, eps1: object,
                 eps2: object, d: object, weight_decay: object, maximize: object,
                 eps_names: tuple = ...) -> Tuple[float, float, Optional[float], float, float,
                                                  float, bool]: ...
def _apply(param: np.ndarray, grad: np.ndarray, row_var: Optional[np.ndarray],
           col_var: Optional[np.ndarray], variance: Optional[np.ndarray], step: int,
           lr: float, beta2_decay: float, eps1: float, eps2: float, d: float,
           weight_decay: float, maximize: bool) -> None: ...
def adafactor(param: np.ndarray, grad: np.ndarray, row_var: Optional[np.ndarray] = None,
              col_var: Optional[np.ndarray] = None, variance: Optional[np.ndarray] = None, *,
              step: int, lr: float = 0.01, beta2_decay: float = -0.8,
              eps1: Optional[float] = None, eps2: float = 0.001, d: float = 1.0,
              weight_decay: float = 0.0, maximize: bool = False) -> None: ...

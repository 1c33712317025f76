# Type stubs for the compiled module fastlr._core.schedulefree (the fused loops of the
# schedule-free optimizers; lists of float32/float64 arrays, C- or F-contiguous).
from typing import List

import numpy as np

def sgd_step(ys: List[np.ndarray], grads: List[np.ndarray], zs: List[np.ndarray], *,
             ckp1: float, lr: float, y_coef: float, weight_decay: float) -> None: ...
def adam_step(ys: List[np.ndarray], grads: List[np.ndarray], zs: List[np.ndarray],
              vs: List[np.ndarray], *, ckp1: float, lr: float, y_coef: float,
              weight_decay: float, beta2: float, bias_correction2: float, eps: float,
              adaptive: bool) -> None: ...
def switch(ys: List[np.ndarray], zs: List[np.ndarray], weight: float) -> None: ...
def first_bad_grad(ys: List[np.ndarray], grads: List[object], starts: np.ndarray,
                   ends: np.ndarray) -> int: ...

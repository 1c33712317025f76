# Type stubs for the compiled module fastlr._core.mixed (Adam / AdamW on 16-bit params;
# fastlr.kernels re-exports adam_mixed and adam_mixed_int8_state).
from typing import Optional

import numpy as np

__all__ = ["adam_mixed", "adam_mixed_int8_state"]

def adam_mixed(param: np.ndarray, grad: np.ndarray, exp_avg: np.ndarray,
               exp_avg_sq: np.ndarray, master: Optional[np.ndarray] = None, *, step: int,
               lr: float, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
               weight_decay: float = 0.0, decoupled_weight_decay: bool = False,
               maximize: bool = False, n_threads: Optional[int] = None) -> None: ...
def adam_mixed_int8_state(param: np.ndarray, grad: np.ndarray, exp_avg: np.ndarray,
                          exp_avg_scale: np.ndarray, exp_avg_sq: np.ndarray,
                          exp_avg_sq_scale: np.ndarray, master: Optional[np.ndarray] = None,
                          *, step: int, lr: float, beta1: float = 0.9, beta2: float = 0.999,
                          eps: float = 1e-8, weight_decay: float = 0.0,
                          decoupled_weight_decay: bool = False, maximize: bool = False,
                          amsgrad: bool = False, n_threads: Optional[int] = None) -> None: ...
def f16_unpack(bits: np.ndarray, out: np.ndarray) -> None: ...
def f16_pack(x: np.ndarray, out: np.ndarray) -> None: ...
def round_stochastic_into(param: np.ndarray, value: np.ndarray, grad: np.ndarray,
                          step: int, bfloat16: bool) -> None: ...

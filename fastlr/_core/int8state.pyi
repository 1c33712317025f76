# Type stubs for the compiled module fastlr._core.int8state (Adam / AdamW with 8-bit
# block-wise quantized state; fastlr.kernels re-exports adam_int8_state).
from typing import Optional

import numpy as np

__all__ = ["adam_int8_state", "BLOCK", "n_blocks"]

BLOCK: int

def n_blocks(size: int) -> int: ...
def adam_int8_state(param: np.ndarray, grad: np.ndarray, exp_avg: np.ndarray,
                    exp_avg_scale: np.ndarray, exp_avg_sq: np.ndarray,
                    exp_avg_sq_scale: np.ndarray, *, step: int, lr: float,
                    beta1: float = ..., beta2: float = ..., eps: float = ...,
                    weight_decay: float = ..., decoupled_weight_decay: bool = ...,
                    maximize: bool = ..., amsgrad: bool = ...,
                    n_threads: Optional[int] = ...) -> None: ...

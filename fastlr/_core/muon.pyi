# Type stubs for the compiled module fastlr._core.muon (Muon's passes and validated kernel;
# fastlr.kernels re-exports muon).
from typing import Optional, Sequence, Tuple

import numpy as np

__all__ = ["muon", "ADJUST_LR_FNS"]

ADJUST_LR_FNS: Tuple[str, str]

def muon(param: np.ndarray, grad: np.ndarray, momentum_buffer: np.ndarray, *, lr: float,
         weight_decay: float = ..., momentum: float = ..., nesterov: bool = ...,
         ns_coefficients: Sequence[float] = ..., eps: float = ..., ns_steps: int = ...,
         adjust_lr_fn: Optional[str] = ...) -> None: ...
def adjusted_lr(lr: float, adjust_lr_fn: Optional[str], rows: int, cols: int) -> float: ...
def check_hypers(fn: str, where: str, lr: object, weight_decay: object, momentum: object,
                 nesterov: object, ns_coefficients: object, eps: object, ns_steps: object,
                 adjust_lr_fn: object) -> Tuple[float, float, float, bool,
                                                Tuple[float, float, float], float, int,
                                                Optional[str]]: ...
def check_coefficients(fn: str, name: str, value: object) -> Tuple[float, float, float]: ...
def run(p: np.ndarray, g: np.ndarray, b: np.ndarray, lr: float, weight_decay: float,
        momentum: float, nesterov: bool, coefs: tuple, eps: float, ns_steps: int,
        adjust_lr_fn: Optional[str]) -> None: ...

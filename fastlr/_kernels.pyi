# Type stubs for the compiled module fastlr._kernels (see _kernels.pyx for the C API).
from typing import Optional, Union

import numpy as np
from numpy.typing import NDArray

_Float = Union[NDArray[np.float32], NDArray[np.float64]]

HAVE_OPENMP: bool

def get_num_threads() -> int: ...
def set_num_threads(n_threads: Optional[int]) -> None: ...
def sgd(
    param: _Float,                      # IN/OUT
    grad: _Float,                       # IN (may be read-only)
    momentum_buffer: Optional[_Float] = None,   # IN/OUT, required iff momentum != 0
    *,
    step: int,
    lr: float,
    momentum: float = 0.0,
    dampening: float = 0.0,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    maximize: bool = False,
    n_threads: Optional[int] = None,
) -> None: ...
def rmsprop(
    param: _Float,                      # IN/OUT
    grad: _Float,                       # IN
    square_avg: _Float,                 # IN/OUT
    momentum_buffer: Optional[_Float] = None,   # IN/OUT, required iff momentum > 0
    grad_avg: Optional[_Float] = None,  # IN/OUT, selects the centered variant
    *,
    lr: float,
    alpha: float = 0.99,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
    maximize: bool = False,
    n_threads: Optional[int] = None,
) -> None: ...
def adam(
    param: _Float,                      # IN/OUT
    grad: _Float,                       # IN
    exp_avg: _Float,                    # IN/OUT
    exp_avg_sq: _Float,                 # IN/OUT
    max_exp_avg_sq: Optional[_Float] = None,    # IN/OUT, selects AMSGrad
    *,
    step: int,
    lr: float,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    decoupled_weight_decay: bool = False,
    maximize: bool = False,
    n_threads: Optional[int] = None,
) -> None: ...
def adamw(
    param: _Float,
    grad: _Float,
    exp_avg: _Float,
    exp_avg_sq: _Float,
    max_exp_avg_sq: Optional[_Float] = None,
    *,
    step: int,
    lr: float,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 1e-2,
    maximize: bool = False,
    n_threads: Optional[int] = None,
) -> None: ...
def adagrad(param: _Float, grad: _Float, state_sum: _Float, *, step: int, lr: float,
            lr_decay: float = 0.0, weight_decay: float = 0.0, eps: float = 1e-10,
            maximize: bool = False, n_threads: Optional[int] = None) -> None: ...
def adadelta(param: _Float, grad: _Float, square_avg: _Float, acc_delta: _Float, *,
             lr: float = 1.0, rho: float = 0.9, eps: float = 1e-6, weight_decay: float = 0.0,
             maximize: bool = False, n_threads: Optional[int] = None) -> None: ...
def adamax(param: _Float, grad: _Float, exp_avg: _Float, exp_inf: _Float, *, step: int,
           lr: float, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
           weight_decay: float = 0.0, maximize: bool = False,
           n_threads: Optional[int] = None) -> None: ...
def nadam(param: _Float, grad: _Float, exp_avg: _Float, exp_avg_sq: _Float, *, step: int,
          mu_product: float, lr: float, beta1: float = 0.9, beta2: float = 0.999,
          eps: float = 1e-8, weight_decay: float = 0.0, momentum_decay: float = 4e-3,
          decoupled_weight_decay: bool = False, maximize: bool = False,
          n_threads: Optional[int] = None) -> float: ...
def radam(param: _Float, grad: _Float, exp_avg: _Float, exp_avg_sq: _Float, *, step: int,
          lr: float, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
          weight_decay: float = 0.0, decoupled_weight_decay: bool = False,
          maximize: bool = False, n_threads: Optional[int] = None) -> None: ...
def lion(param: _Float, grad: _Float, exp_avg: _Float, *, lr: float, beta1: float = 0.9,
         beta2: float = 0.99, weight_decay: float = 1e-3, maximize: bool = False,
         n_threads: Optional[int] = None) -> None: ...

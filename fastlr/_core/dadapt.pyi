# Type stubs for the compiled module fastlr._core.dadapt (the D-Adaptation optimizers'
# two-pass steps; fastlr.DAdaptAdam, fastlr.DAdaptSGD and fastlr.DAdaptAdaGrad call them).
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

def dadapt_adam_step(params: List[np.ndarray], grads: List[np.ndarray],
                     exp_avg: List[np.ndarray], exp_avg_sq: List[np.ndarray],
                     s: List[np.ndarray], *, group_sizes: Sequence[int], lr: Sequence[float],
                     weight_decay: Sequence[float], eps: Sequence[float],
                     layer_scale: Sequence[float], betas: Sequence[float] = ..., d: float,
                     numerator_weighted: float, growth_rate: float = ...,
                     decouple: bool = ..., use_bias_correction: bool = ..., k: int,
                     n_threads: Optional[int] = ...) -> Dict[str, Any]: ...
def dadapt_sgd_step(params: List[np.ndarray], grads: List[np.ndarray], s: List[np.ndarray],
                    x0: List[np.ndarray], *, group_sizes: Sequence[int], lr: Sequence[float],
                    momentum: float = ..., weight_decay: float = ..., d: float,
                    numerator_weighted: float, g0_norm: float, growth_rate: float = ...,
                    k: int, n_threads: Optional[int] = ...) -> Dict[str, Any]: ...
def dadapt_adagrad_step(params: List[np.ndarray], grads: List[np.ndarray],
                        alphak: List[np.ndarray], sk: List[np.ndarray], x0: List[np.ndarray],
                        *, group_sizes: Sequence[int], weight_decay: Sequence[float],
                        eps: Sequence[float], lr: float = ..., momentum: float = ..., d: float,
                        gsq_weighted: float, sksq_weighted: float, skl1: float,
                        growth_rate: float = ..., k: int,
                        n_threads: Optional[int] = ...) -> Dict[str, Any]: ...

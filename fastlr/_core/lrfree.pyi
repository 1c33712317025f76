# Type stubs for the compiled module fastlr._core.lrfree (Prodigy's two-pass step;
# fastlr.Prodigy calls it).
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

def prodigy_step(params: List[np.ndarray], grads: List[np.ndarray],
                 exp_avg: Optional[List[np.ndarray]], exp_avg_sq: List[np.ndarray],
                 s: List[np.ndarray], p0: List[np.ndarray], *, group_sizes: Sequence[int],
                 lr: Sequence[float], weight_decay: Sequence[float], eps: Sequence[float],
                 d0: Sequence[float], safeguard_warmup: Sequence[bool],
                 slice_p: Sequence[int], betas: Sequence[float] = ...,
                 beta3: Optional[float] = ..., d: float, d_max: float, d_numerator: float,
                 d_coef: float = ..., growth_rate: float = ..., decouple: bool = ...,
                 use_bias_correction: bool = ..., k: int,
                 n_threads: Optional[int] = ...) -> Dict[str, Any]: ...

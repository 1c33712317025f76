# Type stubs for the compiled module fastlr._core.ema (the weight EMA's kernels; fastlr.kernels
# re-exports ema_update and swap_buffers).
from typing import List, Optional, Sequence, Union

import numpy as np

_Arrays = Union[np.ndarray, Sequence[np.ndarray]]

def ema_update(ema: _Arrays, param: _Arrays, *, decay: float,
               n_threads: Optional[int] = None) -> None: ...
def swap_buffers(a: _Arrays, b: _Arrays, *, n_threads: Optional[int] = None) -> None: ...
def check_arrays(fn: str, name: str, arrays: _Arrays, written: bool = True) -> List[np.ndarray]: ...

class _Pairs:
    total: int
    a_arrays: tuple
    b_arrays: tuple
    def __init__(self, fn: str, a_name: str, b_name: str, a: _Arrays, b: _Arrays,
                 b_written: bool) -> None: ...

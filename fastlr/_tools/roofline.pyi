# Type stubs for the compiled module fastlr._tools.roofline (memory-bandwidth probes with the
# optimizers' access patterns; `fastlr bench` and the asv suite).
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from numpy.typing import DTypeLike

HAVE_OPENMP: bool
#: pattern name -> (streams read, streams written)
PATTERNS: Dict[str, Tuple[int, int]]
#: optimizer name -> the pattern with its access streams
PATTERN_OF: Dict[str, str]
STAGGER: int
FILL_VALUES: Tuple[float, ...]

def bytes_per_element(pattern: str, dtype: DTypeLike = "float32") -> int: ...
def stream_arrays(n: int, dtype: DTypeLike = "float32", count: int = 1,
                  layout: str = "staggered") -> List[np.ndarray]: ...
def make_buffers(pattern: str, n: int, dtype: DTypeLike = "float32",
                 layout: str = "staggered") -> Tuple[np.ndarray, ...]: ...
def cpu_variant() -> str: ...
def run(pattern: str, buffers: Sequence[np.ndarray], n_threads: Optional[int] = 1,
        passes: int = 1, variant: Optional[str] = None) -> None: ...
def time_passes(pattern: str, buffers: Sequence[np.ndarray], n_threads: Optional[int] = 1,
                passes: int = 1) -> float: ...
def calibrate(pattern: str, buffers: Sequence[np.ndarray], n_threads: Optional[int] = 1,
              min_time: float = 0.01) -> int: ...
def bandwidth(pattern: str = "adam", n: int = 16777216, dtype: DTypeLike = "float32",
              n_threads: Optional[int] = 1, repeats: int = 5, min_time: float = 0.01,
              layout: str = "staggered") -> float: ...

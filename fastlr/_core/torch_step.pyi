# Type stubs for the compiled module fastlr._core.torch_step (fastlr.compat.torch's step:
# every tensor of a torch optimizer in one call; private).
from typing import Any, Dict, List, Optional, Tuple

FAMILY_INDEX: Dict[str, int]
FIELDS: Dict[str, Tuple[str, ...]]

def setup(tensor: Any, parameter: Any, f32: Any, f64: Any, layout_strided: Any) -> None: ...
def fast_steps() -> int: ...
def fast_step(state_map: Any,
              groups: List[Tuple[list, Tuple[float, ...], Tuple[Optional[str], ...], int]],
              family: int, step_key: Optional[str], scalar_key: Optional[str],
              n_threads: int) -> Optional[list]: ...

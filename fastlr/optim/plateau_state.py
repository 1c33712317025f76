"""The ReduceLROnPlateau state an optimizer checkpoint carries: its fields and their check.

It lives with the optimizer (which saves and loads it) so that fastlr.plateau depends on
fastlr.optim and never the other way round.
"""

import math
import numbers

from fastlr._core.args import INT_MAX, NONNEG, UNIT, checked_real, choice_arg, int_arg

_CONFIG = ("mode", "factor", "patience", "threshold", "threshold_mode", "cooldown", "min_lrs",
           "eps")
_COUNTERS = ("best", "num_bad_epochs", "cooldown_counter", "last_epoch")


def _check_config(name, c):
    """The ReduceLROnPlateau settings (fastlr._core.args' rules)."""
    choice_arg(name, "mode", c["mode"], ("min", "max"))
    choice_arg(name, "threshold_mode", c["threshold_mode"], ("rel", "abs"))
    checked_real(name, "factor", c["factor"], UNIT)
    for key in ("threshold", "eps"):
        checked_real(name, key, c[key], NONNEG)
    for key in ("patience", "cooldown"):
        int_arg(name, key, c[key], 0, INT_MAX)
    for i, v in enumerate(c["min_lrs"]):
        checked_real(name, f"min_lrs[{i}]", v, NONNEG)


def _check_plateau_state(name, sd):
    """Validate a plateau state dict (from a checkpoint); returns a clean copy."""
    if not isinstance(sd, dict):
        raise TypeError(f"{name}: the plateau state must be a dict, got {type(sd).__name__}")
    missing = [k for k in _CONFIG + _COUNTERS if k not in sd]
    if missing:
        raise ValueError(f"{name}: the plateau state has no {', '.join(missing)}")
    out = {k: sd[k] for k in _CONFIG + _COUNTERS}
    if not isinstance(out["min_lrs"], (list, tuple)):
        raise ValueError(f"{name}: the plateau state's min_lrs must be a list")
    out["min_lrs"] = list(out["min_lrs"])
    _check_config(name, out)
    best = out["best"]
    if isinstance(best, bool) or not isinstance(best, numbers.Real) or math.isnan(best):
        raise ValueError(f"{name}: the plateau state's best must be a number, got {best!r}")
    out["best"] = float(best)
    for key in ("num_bad_epochs", "cooldown_counter", "last_epoch"):
        v = out[key]
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 0:
            raise ValueError(f"{name}: the plateau state's {key} must be an int >= 0, got "
                             f"{v!r}")
        out[key] = int(v)
    return out

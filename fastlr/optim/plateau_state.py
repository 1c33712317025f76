"""The ReduceLROnPlateau state an optimizer checkpoint carries: its fields and their check.

It lives with the optimizer (which saves and loads it) so that fastlr.plateau depends on
fastlr.optim and never the other way round.
"""

import math
import numbers

_CONFIG = ("mode", "factor", "patience", "threshold", "threshold_mode", "cooldown", "min_lrs",
           "eps")
_COUNTERS = ("best", "num_bad_epochs", "cooldown_counter", "last_epoch")


def _finite(v):
    try:
        return math.isfinite(v)
    except OverflowError:               # an int beyond the double range
        return False


def _check_config(name, c):
    if c["mode"] not in ("min", "max"):
        raise ValueError(f"{name}: mode must be 'min' or 'max', got {c['mode']!r}")
    if c["threshold_mode"] not in ("rel", "abs"):
        raise ValueError(f"{name}: threshold_mode must be 'rel' or 'abs', got "
                         f"{c['threshold_mode']!r}")
    for key, low, high, text in (("factor", 0.0, 1.0, "in [0, 1)"),
                                 ("threshold", 0.0, None, "a finite number >= 0"),
                                 ("eps", 0.0, None, "a finite number >= 0")):
        v = c[key]
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise TypeError(f"{name}: {key} must be a real number, got {type(v).__name__}")
        if not (_finite(v) and v >= low and (high is None or v < high)):
            raise ValueError(f"{name}: {key} must be {text}, got {v!r}")
    for key in ("patience", "cooldown"):
        v = c[key]
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 0:
            raise ValueError(f"{name}: {key} must be an int >= 0, got {v!r}")
    for v in c["min_lrs"]:
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or \
                not (_finite(v) and v >= 0):
            raise ValueError(f"{name}: min_lr must be finite numbers >= 0, got {v!r}")


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

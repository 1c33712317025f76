"""Weight EMA: an exponential moving average of the parameters, updated in place by one
compiled call per step, with ``swap()`` / ``average_parameters()`` for evaluation.

The update is torch's: ``averaged = lerp(averaged, param, 1 - decay)``, the operation of
``torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay))``
and of timm's ``ModelEmaV3`` (``torch._foreach_lerp_``), i.e.
``averaged = decay * averaged + (1 - decay) * param``.
"""

import contextlib
import json
import warnings

import numpy as np

from fastlr._core import ema as _ema
from fastlr._core.args import (CLOSED_UNIT, INT_MAX, POSITIVE, checked_real, choice_arg,
                               flag_arg, int_arg, threads_arg)
from fastlr.optim.groups import _is_pair, _some, by_name, names_diff, split_named

__all__ = ["EMA", "WARMUPS"]

_FORMAT = "fastlr.EMA/1"
#: The decay warmups :class:`EMA` knows (``None``: no warmup, the constant ``decay``).
WARMUPS = (None, "tf", "timm")
_CONFIG_KEYS = ("decay", "warmup", "warmup_gamma", "warmup_power", "min_decay")


def _config(name, decay, warmup, warmup_gamma, warmup_power, min_decay):
    """Validate the hyperparameters and return them as a dict of plain Python values."""
    d = checked_real(name, "decay", decay, CLOSED_UNIT)
    choice_arg(name, "warmup", warmup, WARMUPS)
    gamma = checked_real(name, "warmup_gamma", warmup_gamma, POSITIVE)
    power = checked_real(name, "warmup_power", warmup_power, POSITIVE)
    m = checked_real(name, "min_decay", min_decay, CLOSED_UNIT)
    if m > d:
        raise ValueError(f"{name}: min_decay must be <= decay, got min_decay={min_decay!r} "
                         f"and decay={decay!r}")
    return {"decay": d, "warmup": warmup, "warmup_gamma": gamma, "warmup_power": power,
            "min_decay": m}


def _named_input(params):
    """Whether ``params`` is given with names: a dict, or a list of (name, array) pairs."""
    return isinstance(params, dict) or (isinstance(params, (list, tuple)) and
                                        any(_is_pair(p) for p in params))


def _count(name, what, value):
    return int_arg(name, what, value, 0, INT_MAX)


class EMA:
    """An exponential moving average of ``params``, kept in buffers allocated once.

    ``params``: one float32/float64 array or a list of them, contiguous (C or F order),
    writeable and separate — the arrays an optimizer updates in place; or named, as a dict
    of name -> array or a list of ``(name, array)`` pairs (torch's ``named_parameters()``):
    then :attr:`names` lists them, :meth:`copy_to` also takes a dict with those names, and
    checkpoints record the names and check them when loaded. The averages start
    as copies of the params at construction; call :meth:`update` after each optimizer
    step. Update ``k + 1`` (``k`` = updates done before it, an int64 count) computes::

        averaged = lerp(averaged, param, 1 - decay_at(k))    # torch's lerp

    one compiled call over all arrays (``n_threads=None``: :func:`fastlr.get_num_threads`).

    Decay warmup (:meth:`decay_at`), ``warmup=``:

    - ``None``: the constant ``decay`` — ``torch.optim.swa_utils.AveragedModel`` with
      ``multi_avg_fn=get_ema_multi_avg_fn(decay)`` after its first update, and timm's
      ``ModelEmaV3.update(model)`` without a step.
    - ``"tf"``: ``min(decay, (1 + k) / (10 + k))`` — TensorFlow's
      ``tf.train.ExponentialMovingAverage(decay, num_updates=k)`` (the first update uses
      0.1), then raised to at least ``min_decay``.
    - ``"timm"``: timm ``ModelEmaV3(use_warmup=True, update_after_step=0)`` with
      ``update(model, step=k + 1)`` (the step count after the optimizer step, as timm's
      train.py passes it): ``0`` at ``k = 0`` (the first update copies the params), then
      ``1 - (1 + k / warmup_gamma) ** -warmup_power`` clipped to ``[min_decay, decay]``
      (@crowsonkb's warmup: ``warmup_power=2/3``, timm's default, suits runs of a million
      steps and more; ``3/4`` shorter runs).

    Lining up with torch: ``AveragedModel(model)`` deep-copies the model, and its first
    ``update_parameters(model)`` copies the params again (``n_averaged == 0``); every later
    call applies the lerp. ``fastlr.EMA`` copies once, at construction. So an EMA built
    where the first ``update_parameters`` call would be (after the first optimizer step)
    and updated after every later step gives AveragedModel's averages, to the last ulp (torch's
    vectorized lerp may fuse the multiply-add).

    Evaluation: ``with ema.average_parameters(): evaluate()`` swaps the averages into the
    params and back (also on an exception); :meth:`swap` does one exchange, :meth:`copy_to`
    writes the averages into the params (or other arrays) for good.
    """

    def __init__(self, params, decay=0.9999, *, warmup=None, warmup_gamma=1.0,
                 warmup_power=2.0 / 3.0, min_decay=0.0, n_threads=None):
        name = "fastlr.EMA"
        self._config = _config(name, decay, warmup, warmup_gamma, warmup_power, min_decay)
        self._n_threads = None if n_threads is None else threads_arg(name, n_threads)
        self._names = None
        if _named_input(params):
            params, self._names = split_named(name, params, "params")
        plist = _ema.check_arrays(name, "params", params)
        if not plist:
            raise ValueError(f"{name}: params is an empty list; give at least one array")
        self._single = isinstance(params, np.ndarray)
        averaged = [np.array(p, copy=True, order="K") for p in plist]
        # Validates the set as a whole: no param overlaps another (or appears twice).
        if self._single:
            self._pairs = _ema._Pairs(name, "averaged", "params", averaged[0], params, True)
        else:
            self._pairs = _ema._Pairs(name, "averaged", "params", averaged, plist, True)
        self._params = plist
        self._averaged = averaged
        self._updates = 0
        self._swapped = False

    # ---- configuration -------------------------------------------------------------------
    @property
    def decay(self):
        return self._config["decay"]

    @property
    def warmup(self):
        return self._config["warmup"]

    @property
    def warmup_gamma(self):
        return self._config["warmup_gamma"]

    @property
    def warmup_power(self):
        return self._config["warmup_power"]

    @property
    def min_decay(self):
        return self._config["min_decay"]

    @property
    def n_threads(self):
        """Threads for the update (None: :func:`fastlr.get_num_threads` at each call)."""
        return self._n_threads

    @n_threads.setter
    def n_threads(self, value):
        self._n_threads = None if value is None else threads_arg("fastlr.EMA", value)

    @property
    def updates(self):
        """Updates applied so far (the ``k`` of the next update's ``decay_at(k)``)."""
        return self._updates

    @property
    def params(self):
        """The tracked parameter arrays (a list)."""
        return list(self._params)

    @property
    def names(self):
        """The params' names (a list), or None when they were given without names."""
        return None if self._names is None else list(self._names)

    @property
    def averaged(self):
        """The EMA buffers (a list, one per param, allocated once; the live arrays). While
        swapped (:attr:`swapped`) they hold the training weights and the params the
        averages."""
        return list(self._averaged)

    @property
    def swapped(self):
        """True between an odd number of :meth:`swap` calls (the params hold the averages)."""
        return self._swapped

    def decay_at(self, step):
        """The decay of update ``step + 1``, i.e. after ``step`` updates (an int >= 0)."""
        k = _count("fastlr.EMA.decay_at", "step", step)
        return self._decay_at(k)

    def _decay_at(self, k):
        c = self._config
        decay, warmup = c["decay"], c["warmup"]
        if warmup is None:
            return decay
        if warmup == "tf":
            return max(min(decay, (1 + k) / (10 + k)), c["min_decay"])
        # timm ModelEmaV3.get_decay(step=k + 1), update_after_step=0
        if k <= 0:
            return 0.0
        d = 1 - (1 + k / c["warmup_gamma"]) ** -c["warmup_power"]
        return max(min(d, decay), c["min_decay"])

    # ---- the update ----------------------------------------------------------------------
    def _threads(self):
        if self._n_threads is not None:
            return self._n_threads
        return threads_arg("fastlr.EMA", None)

    def update(self):
        """Fold the current params into the averages (call after each optimizer step)."""
        if self._swapped:
            raise RuntimeError("fastlr.EMA.update: the params hold the averages (inside "
                               "average_parameters() or after swap()); swap back first")
        if self._updates >= 2 ** 63 - 1:
            raise OverflowError("fastlr.EMA.update: the update count would pass 2**63 - 1")
        self._pairs.lerp(self._decay_at(self._updates), self._threads())
        self._updates += 1

    # ---- evaluation ----------------------------------------------------------------------
    def swap(self):
        """Exchange the params and the averages in place (one pass; twice restores both
        bit for bit)."""
        self._pairs.swap(self._threads())
        self._swapped = not self._swapped

    @contextlib.contextmanager
    def average_parameters(self):
        """``with ema.average_parameters(): evaluate()``: the params hold the averages inside
        the block and their own values again after it, also when it raises."""
        if self._swapped:
            raise RuntimeError("fastlr.EMA.average_parameters: the params already hold the "
                               "averages (nested use, or after swap())")
        self.swap()
        try:
            yield self
        finally:
            self.swap()

    def copy_to(self, params=None):
        """Write the averages into ``params`` (default: the tracked params, for good).

        ``params``: arrays like the tracked ones (same count, dtypes, shapes, layouts;
        writeable; separate from the averages). Everything is checked before anything is
        written.
        """
        name = "fastlr.EMA.copy_to"
        if self._swapped:
            raise RuntimeError(f"{name}: the params hold the averages (inside "
                               f"average_parameters() or after swap()); swap back first")
        if params is None:
            self._pairs.copy(True)
            return
        if isinstance(params, dict):
            params = by_name(name, self._names, params, "params",
                             "it needs exactly the tracked params' names")
        if isinstance(params, np.ndarray) != self._single:
            if isinstance(params, np.ndarray) or len(self._averaged) != 1:
                raise TypeError(f"{name}: params must be "
                                f"{'one array' if self._single else 'a list of arrays'} "
                                f"like the tracked params, got {type(params).__name__}")
        targets = [params] if isinstance(params, np.ndarray) else params
        pairs = _ema._Pairs(name, "params", "averaged", targets, self._averaged, False)
        pairs.copy(False)

    # ---- checkpoints ---------------------------------------------------------------------
    def state_dict(self):
        """``{"format", "updates", "decay", "warmup", "warmup_gamma", "warmup_power",
        "min_decay", "averaged": [copies]}`` (the averages, also while swapped), and
        ``"names"`` when the params are named."""
        source = self._params if self._swapped else self._averaged
        sd = {"format": _FORMAT, "updates": self._updates}
        sd.update(self._config)
        sd["averaged"] = [np.array(a, copy=True, order="K") for a in source]
        if self._names is not None:
            sd["names"] = list(self._names)
        return sd

    def load_state_dict(self, state_dict, strict=True):
        """Restore a state dict. Everything is validated first; on any error nothing
        changes. When both this EMA and the state dict name their params, the names must be
        the same in the same order, else ``ValueError`` naming the missing and unexpected
        ones (``strict=False``: a warning, loaded by position); a state dict without names
        loads into a named EMA, and a named one into an EMA without names, by position."""
        self._load_state_dict(state_dict, flag_arg("fastlr.EMA.load_state_dict", "strict",
                                                   strict), "fastlr.EMA.load_state_dict")

    def _load_state_dict(self, state_dict, strict, name):
        sd = state_dict
        if not isinstance(sd, dict):
            raise TypeError(f"{name}: expected a dict, got {type(sd).__name__}")
        if sd.get("format", _FORMAT) != _FORMAT:
            raise ValueError(f"{name}: unknown format {sd.get('format')!r}, expected "
                             f"{_FORMAT!r}")
        missing = [k for k in ("updates", "averaged", *_CONFIG_KEYS) if k not in sd]
        if missing:
            raise ValueError(f"{name}: the state dict has no {missing[0]!r} entry")
        extra = sorted(set(sd) - {"format", "updates", "averaged", "names", *_CONFIG_KEYS})
        if extra:
            raise ValueError(f"{name}: the state dict has unknown entries {extra}")
        if self._swapped:
            raise RuntimeError(f"{name}: the params hold the averages (inside "
                               f"average_parameters() or after swap()); swap back first")
        updates = _count(name, "updates", sd["updates"])
        config = _config(name, *(sd[k] for k in _CONFIG_KEYS))
        saved = sd["averaged"]
        if not isinstance(saved, (list, tuple)):
            raise TypeError(f"{name}: 'averaged' must be a list of arrays, got "
                            f"{type(saved).__name__}")
        if len(saved) != len(self._averaged):
            raise ValueError(f"{name}: the state dict has {len(saved)} averaged arrays, this "
                             f"EMA tracks {len(self._averaged)}")
        for i, (arr, mine) in enumerate(zip(saved, self._averaged)):
            if not isinstance(arr, np.ndarray):
                raise TypeError(f"{name}: averaged[{i}] must be a numpy.ndarray, got "
                                f"{type(arr).__name__}")
            if arr.dtype != mine.dtype or arr.shape != mine.shape:
                raise ValueError(f"{name}: averaged[{i}] must be {mine.dtype} of shape "
                                 f"{mine.shape}, got {arr.dtype} of shape {arr.shape}")
        saved_names = sd.get("names")
        if saved_names is not None:
            if not isinstance(saved_names, (list, tuple)) or \
                    len(saved_names) != len(self._averaged) or \
                    not all(isinstance(n, str) for n in saved_names):
                raise ValueError(f"{name}: 'names' must be a list of {len(self._averaged)} "
                                 f"strings, got {saved_names!r:.200}")
            if self._names is not None and list(saved_names) != self._names:
                diff = names_diff(self._names, list(saved_names))
                if strict:
                    raise ValueError(f"{name}: the checkpoint names its params otherwise "
                                     f"than this EMA: {diff}. Build the EMA over the "
                                     f"checkpoint's names, in its order, or load with "
                                     f"strict=False (a warning). Nothing was loaded")
                warnings.warn(f"{name}: the checkpoint names its params otherwise than this "
                              f"EMA: {diff}; strict=False: loaded by position", UserWarning,
                              stacklevel=3)
        # everything checked: apply
        for arr, mine in zip(saved, self._averaged):
            np.copyto(mine, arr, casting="no")
        self._config = config
        self._updates = updates

    def save(self, path):
        """Write the state dict to ``path`` as ``.npz`` (no pickle), atomically: a temporary
        file in the same directory, then a rename."""
        sd = self.state_dict()
        arrays = {"format": np.array(_FORMAT),
                  "updates": np.array(sd["updates"], dtype=np.int64),
                  "config": np.array(json.dumps({k: sd[k] for k in _CONFIG_KEYS}))}
        for i, a in enumerate(sd["averaged"]):
            arrays[f"averaged/{i}"] = a
        if "names" in sd:
            arrays["names"] = np.array(json.dumps(sd["names"]))
        from fastlr.optim.checkpoint import write_npz_atomic

        write_npz_atomic(arrays, path)

    def load(self, path, strict=True):
        """Restore what :meth:`save` wrote (names checked as by :meth:`load_state_dict`). A
        truncated, corrupted or mismatched file raises ``ValueError`` and changes
        nothing."""
        from fastlr.optim.checkpoint import read_npz_members

        name = "fastlr.EMA.load"
        strict = flag_arg(name, "strict", strict)
        files = read_npz_members(path, name, "fastlr EMA checkpoint")
        try:
            if str(files["format"]) != _FORMAT:
                raise ValueError(f"unknown format {str(files['format'])!r}")
            config = json.loads(str(files["config"]))
            if not isinstance(config, dict):
                raise ValueError("config is not a JSON object")
            n = sum(1 for k in files if k.startswith("averaged/"))
            sd = {"format": _FORMAT, "updates": int(files["updates"]),
                  "averaged": [files[f"averaged/{i}"] for i in range(n)], **config}
            if "names" in files:
                sd["names"] = json.loads(str(files["names"]))
        except (KeyError, ValueError, TypeError) as error:
            raise ValueError(f"{name}: {path!s} is not a valid fastlr EMA checkpoint "
                             f"({error})") from error
        self._load_state_dict(sd, strict, name)

    def __repr__(self):
        c = self._config
        extra = ""
        if c["warmup"] is not None:
            extra = (f", warmup={c['warmup']!r}, min_decay={c['min_decay']!r}")
            if c["warmup"] == "timm":
                extra += (f", warmup_gamma={c['warmup_gamma']!r}, "
                          f"warmup_power={c['warmup_power']!r}")
        arrays = f"<{len(self._params)} arrays>"
        if self._names is not None:
            arrays = f"<{len(self._params)} arrays: {_some(self._names)}>"
        return (f"EMA({arrays}, decay={c['decay']!r}{extra}; "
                f"updates={self._updates})")

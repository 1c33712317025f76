"""Weight EMA: an exponential moving average of the parameters, updated in place by one
compiled call per step, with ``swap()`` / ``average_parameters()`` for evaluation.

The update is torch's: ``averaged = lerp(averaged, param, 1 - decay)``, the operation of
``torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay))``
and of timm's ``ModelEmaV3`` (``torch._foreach_lerp_``), i.e.
``averaged = decay * averaged + (1 - decay) * param``.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Optional, Sequence, Union, cast

import numpy as np
from numpy.typing import NDArray

from fastlr._core.dispatch import module as _variant
from fastlr._core.args import (CLOSED_UNIT, INT_MAX, POSITIVE, checked_real, choice_arg,
                               flag_arg, int_arg, threads_arg)
from fastlr.optim.groups import _is_pair, _some, by_name, names_diff, split_named

# the kernels for this CPU (fastlr._core.ema, or its x86-64-v3 build)
_ema = _variant("ema")

__all__ = ["EMA", "WARMUPS"]

if TYPE_CHECKING:
    #: What :class:`EMA` tracks: one array, a list of them, or named arrays.
    Params = Union[NDArray[np.floating], Sequence[NDArray[np.floating]],
                   Mapping[str, NDArray[np.floating]],
                   Sequence[tuple[str, NDArray[np.floating]]]]

_FORMAT = "fastlr.EMA/1"
#: The decay warmups :class:`EMA` knows (``None``: no warmup, the constant ``decay``).
WARMUPS: tuple[Optional[str], ...] = (None, "tf", "timm")
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

    Parameters
    ----------
    params : numpy.ndarray, list of numpy.ndarray, or named arrays (dict or list of pairs)
        The arrays to average (float32 or float64, C- or F-contiguous, writeable, not
        overlapping one another), optionally named.
    decay : float, default 0.9999
        The decay of the average, in [0, 1] (the weight of the old average at each update;
        with a warmup, its upper bound).
    warmup : {None, 'tf', 'timm'}, default None
        The decay warmup (see above and :data:`WARMUPS`).
    warmup_gamma : float, default 1.0
        The ``"timm"`` warmup's ``gamma`` (in updates), > 0.
    warmup_power : float, default 2/3
        The ``"timm"`` warmup's ``power``, > 0.
    min_decay : float, default 0.0
        The lowest decay a warmup gives, in [0, ``decay``].
    n_threads : int or None, default None
        OpenMP threads for the update, swap and copy (None: :func:`fastlr.get_num_threads`
        at each call).

    Raises
    ------
    TypeError
        If ``params`` is not an array, a list of arrays or named arrays, or an argument has
        the wrong type.
    ValueError
        If ``params`` is empty, has an unsupported dtype or layout, is not writeable or
        overlaps itself, or a hyperparameter is out of its range (``min_decay > decay``).

    See Also
    --------
    fastlr.kernels.ema_update : the compiled update over one array.

    Examples
    --------
    >>> import numpy as np, fastlr
    >>> w = np.array([1.0, 2.0])
    >>> ema = fastlr.EMA(w, decay=0.5)
    >>> w[:] = [3.0, 4.0]                   # an optimizer step
    >>> ema.update()                        # averaged = 0.5 * averaged + 0.5 * w
    >>> ema.averaged[0]
    array([2., 3.])
    >>> with ema.average_parameters():      # evaluate with the averages
    ...     print(w)
    [2. 3.]
    >>> w                                   # and the training weights are back
    array([3., 4.])
    """

    def __init__(self, params: Params, decay: float = 0.9999, *,
                 warmup: Optional[str] = None, warmup_gamma: float = 1.0,
                 warmup_power: float = 2.0 / 3.0, min_decay: float = 0.0,
                 n_threads: Optional[int] = None) -> None:
        name = "fastlr.EMA"
        self._config = _config(name, decay, warmup, warmup_gamma, warmup_power, min_decay)
        self._n_threads = None if n_threads is None else threads_arg(name, n_threads)
        self._names: Optional[list[str]] = None
        if _named_input(params):
            params, self._names = split_named(name, params, "params")
        plist = _ema.check_arrays(name, "params", cast(Any, params))
        if not plist:
            raise ValueError(f"{name}: params is an empty list; give at least one array")
        self._single = isinstance(params, np.ndarray)
        averaged = [np.array(p, copy=True, order="K") for p in plist]
        # Validates the set as a whole: no param overlaps another (or appears twice).
        if self._single:
            self._pairs = _ema._Pairs(name, "averaged", "params", averaged[0], cast(Any, params),
                                      True)
        else:
            self._pairs = _ema._Pairs(name, "averaged", "params", averaged, plist, True)
        self._params = plist
        self._averaged = averaged
        self._updates = 0
        self._swapped = False

    # ---- configuration -------------------------------------------------------------------
    @property
    def decay(self) -> float:
        """The decay (a float in [0, 1]; with a warmup, its upper bound)."""
        return self._config["decay"]

    @property
    def warmup(self) -> Optional[str]:
        """The decay warmup: None, ``"tf"`` or ``"timm"``."""
        return self._config["warmup"]

    @property
    def warmup_gamma(self) -> float:
        """The ``"timm"`` warmup's ``gamma`` (in updates)."""
        return self._config["warmup_gamma"]

    @property
    def warmup_power(self) -> float:
        """The ``"timm"`` warmup's ``power``."""
        return self._config["warmup_power"]

    @property
    def min_decay(self) -> float:
        """The lowest decay a warmup gives."""
        return self._config["min_decay"]

    @property
    def n_threads(self) -> Optional[int]:
        """Threads for the update (None: :func:`fastlr.get_num_threads` at each call)."""
        return self._n_threads

    @n_threads.setter
    def n_threads(self, value: Optional[int]) -> None:
        self._n_threads = None if value is None else threads_arg("fastlr.EMA", value)

    @property
    def updates(self) -> int:
        """Updates applied so far (the ``k`` of the next update's ``decay_at(k)``)."""
        return self._updates

    @property
    def params(self) -> list[NDArray[np.floating]]:
        """The tracked parameter arrays (a list)."""
        return list(self._params)

    @property
    def names(self) -> Optional[list[str]]:
        """The params' names (a list), or None when they were given without names."""
        return None if self._names is None else list(self._names)

    @property
    def averaged(self) -> list[NDArray[np.floating]]:
        """The EMA buffers (a list, one per param, allocated once; the live arrays). While
        swapped (:attr:`swapped`) they hold the training weights and the params the
        averages."""
        return list(self._averaged)

    @property
    def swapped(self) -> bool:
        """True between an odd number of :meth:`swap` calls (the params hold the averages)."""
        return self._swapped

    def decay_at(self, step: int) -> float:
        """The decay of update ``step + 1``, i.e. after ``step`` updates.

        Parameters
        ----------
        step : int
            The number of updates done before it, >= 0.

        Returns
        -------
        float
            The decay that update uses, with the warmup applied.

        Raises
        ------
        TypeError
            If ``step`` is not an int.
        ValueError
            If ``step`` is negative or too large.

        Examples
        --------
        >>> import numpy as np, fastlr
        >>> ema = fastlr.EMA(np.zeros(2), decay=0.999, warmup="tf")
        >>> ema.decay_at(0), ema.decay_at(90), ema.decay_at(10**6)
        (0.1, 0.91, 0.999)
        """
        k = _count("fastlr.EMA.decay_at", "step", step)
        return self._decay_at(k)

    def _decay_at(self, k: int) -> float:
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

    def update(self) -> None:
        """Fold the current params into the averages (call after each optimizer step).

        Raises
        ------
        RuntimeError
            If the params hold the averages (inside :meth:`average_parameters` or after
            :meth:`swap`).
        OverflowError
            If the update count would pass ``2**63 - 1``.
        """
        if self._swapped:
            raise RuntimeError("fastlr.EMA.update: the params hold the averages (inside "
                               "average_parameters() or after swap()); swap back first")
        if self._updates >= 2 ** 63 - 1:
            raise OverflowError("fastlr.EMA.update: the update count would pass 2**63 - 1")
        self._pairs.lerp(self._decay_at(self._updates), self._threads())
        self._updates += 1

    # ---- evaluation ----------------------------------------------------------------------
    def swap(self) -> None:
        """Exchange the params and the averages in place.

        One pass over the arrays; two swaps restore both bit for bit. :attr:`swapped` tells
        which way round they are.

        Examples
        --------
        >>> import numpy as np, fastlr
        >>> w = np.array([1.0])
        >>> ema = fastlr.EMA(w, decay=0.5)
        >>> w[0] = 3.0
        >>> ema.update()
        >>> ema.swap(); w, ema.swapped
        (array([2.]), True)
        >>> ema.swap(); w, ema.swapped
        (array([3.]), False)
        """
        self._pairs.swap(self._threads())
        self._swapped = not self._swapped

    @contextlib.contextmanager
    def average_parameters(self) -> Iterator[EMA]:
        """Swap the averages into the params for the duration of a ``with`` block.

        ``with ema.average_parameters(): evaluate()``: the params hold the averages inside
        the block and their own values again after it, also when it raises.

        Yields
        ------
        EMA
            This EMA.

        Raises
        ------
        RuntimeError
            If the params already hold the averages (nested use, or after :meth:`swap`).
        """
        if self._swapped:
            raise RuntimeError("fastlr.EMA.average_parameters: the params already hold the "
                               "averages (nested use, or after swap())")
        self.swap()
        try:
            yield self
        finally:
            self.swap()

    def copy_to(self, params: Optional[Params] = None) -> None:
        """Write the averages into ``params`` (default: the tracked params, for good).

        Everything is checked before anything is written.

        Parameters
        ----------
        params : numpy.ndarray, list or dict of numpy.ndarray, or None, default None
            Arrays like the tracked ones (same count, dtypes, shapes, layouts; writeable;
            separate from the averages), a dict of them by the tracked names, or None: the
            tracked params.

        Raises
        ------
        RuntimeError
            If the params hold the averages (inside :meth:`average_parameters` or after
            :meth:`swap`).
        TypeError
            If ``params`` is not shaped like the tracked params (one array or a list).
        ValueError
            If the arrays do not match the averages, or a dict's names are not the tracked
            ones.

        Examples
        --------
        >>> import numpy as np, fastlr
        >>> w = np.array([1.0, 1.0])
        >>> ema = fastlr.EMA(w, decay=0.5)
        >>> w[:] = 3.0
        >>> ema.update()
        >>> out = np.empty(2)
        >>> ema.copy_to(out); out
        array([2., 2.])
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
        targets: Any = [params] if isinstance(params, np.ndarray) else params
        pairs = _ema._Pairs(name, "params", "averaged", targets, self._averaged, False)
        pairs.copy(False)

    # ---- checkpoints ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The EMA's state, to restore with :meth:`load_state_dict`.

        Returns
        -------
        dict
            ``{"format", "updates", "decay", "warmup", "warmup_gamma", "warmup_power",
            "min_decay", "averaged": [copies]}`` (the averages, also while swapped), and
            ``"names"`` when the params are named.

        Examples
        --------
        >>> import numpy as np, fastlr
        >>> ema = fastlr.EMA(np.ones(2), decay=0.9)
        >>> sd = ema.state_dict()
        >>> sd["updates"], sd["decay"], sd["averaged"]
        (0, 0.9, [array([1., 1.])])
        """
        source = self._params if self._swapped else self._averaged
        sd = {"format": _FORMAT, "updates": self._updates}
        sd.update(self._config)
        sd["averaged"] = [np.array(a, copy=True, order="K") for a in source]
        if self._names is not None:
            sd["names"] = list(self._names)
        return sd

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> None:
        """Restore a state dict written by :meth:`state_dict`.

        Everything is validated first; on any error nothing changes. When both this EMA and
        the state dict name their params, the names must be the same in the same order,
        else ``ValueError`` naming the missing and unexpected ones (``strict=False``: a
        warning, loaded by position); a state dict without names loads into a named EMA,
        and a named one into an EMA without names, by position.

        Parameters
        ----------
        state_dict : dict
            What :meth:`state_dict` returned.
        strict : bool, default True
            Whether differing param names are an error (else a ``UserWarning``).

        Raises
        ------
        TypeError
            If ``state_dict`` is not a dict or holds entries of the wrong type.
        ValueError
            If the format, an entry, the arrays' dtypes or shapes, or (with ``strict``)
            the names do not fit this EMA.
        RuntimeError
            If the params hold the averages (inside :meth:`average_parameters` or after
            :meth:`swap`).

        Examples
        --------
        >>> import numpy as np, fastlr
        >>> w = np.array([1.0])
        >>> ema = fastlr.EMA(w, decay=0.5)
        >>> sd = ema.state_dict()
        >>> w[0] = 3.0
        >>> ema.update()
        >>> ema.load_state_dict(sd)
        >>> ema.averaged[0], ema.updates
        (array([1.]), 0)
        """
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

    def save(self, path: Union[str, os.PathLike[str]]) -> None:
        """Write the state dict to ``path`` as ``.npz`` (no pickle), atomically.

        A temporary file in the same directory, then a rename.

        Parameters
        ----------
        path : str or os.PathLike
            The file to write.

        Raises
        ------
        OSError
            If the file cannot be written.
        """
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

    def load(self, path: Union[str, os.PathLike[str]], strict: bool = True) -> None:
        """Restore what :meth:`save` wrote (names checked as by :meth:`load_state_dict`).

        Parameters
        ----------
        path : str or os.PathLike
            The file :meth:`save` wrote.
        strict : bool, default True
            Whether differing param names are an error (else a ``UserWarning``).

        Raises
        ------
        ValueError
            If the file is truncated, corrupted or does not fit this EMA; nothing changes.
        OSError
            If the file cannot be read.
        RuntimeError
            If the params hold the averages (inside :meth:`average_parameters` or after
            :meth:`swap`).
        """
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

    def __repr__(self) -> str:
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

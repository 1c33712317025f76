"""Optimizer checkpoints: the state dict (:class:`CheckpointMixin`: ``state_dict``,
``load_state_dict``, ``save``, ``load``) and its ``.npz`` files (no pickle), written
atomically."""

from __future__ import annotations

import json
import math
import numbers
import os
import tempfile
import warnings
from typing import Any, Dict, Mapping, Union

import numpy as np

from fastlr import _specs
from fastlr._core import bf16 as _bf16
from fastlr._core.args import flag_arg
from fastlr.optim import int8
from fastlr.optim.groups import _finite_nonneg, _nonneg_int, _OptimizerAttrs, names_diff
from fastlr.optim.plateau_state import _check_plateau_state
from fastlr.schedules import Schedule

#: the per-param scalar states of the table (NAdam's mu_product, ASGD's eta): floats in files
_SCALARS = frozenset(name for f in _specs.FAMILIES.values() for name, _ in f.scalar_state)

_FORMAT = "fastlr-optimizer-1"

#: A filesystem path: a string or a path-like object.
PathLike = Union[str, "os.PathLike[str]"]


def write_checkpoint(sd: Mapping[str, Any], path: PathLike) -> None:
    """Write an optimizer state dict to ``path`` as ``.npz`` (no pickle), atomically.

    Parameters
    ----------
    sd : dict
        A state dict as :meth:`fastlr.Optimizer.state_dict` returns it.
    path : str or os.PathLike
        The file to write, by :func:`write_npz_atomic` (which raises ``OSError`` when it
        cannot be written).
    """
    arrays = {"format": np.array(_FORMAT), "steps": np.array(sd["steps"], dtype=np.int64),
              "param_groups": np.array(json.dumps(sd["param_groups"])),
              "skipped_steps": np.array(sd["skipped_steps"], dtype=np.int64),
              "lr_scale": np.array(sd["lr_scale"], dtype=np.float64)}
    if sd.get("last_lr") is not None:
        arrays["last_lr"] = np.array(sd["last_lr"], dtype=np.float64)
    if "plateau" in sd:
        arrays["plateau"] = np.array(json.dumps(sd["plateau"]))
    for i, st in sd["state"].items():
        arrays[f"state/{i}/step"] = np.array(st["step"], dtype=np.int64)
        for k, v in st.items():
            if k != "step":
                arrays[f"state/{i}/{k}"] = v
    for i, v in sd.get("master", {}).items():     # master weights (fastlr.distributed)
        arrays[f"master/{i}"] = v
    write_npz_atomic(arrays, path)


def write_npz_atomic(arrays: Mapping[str, Any], path: PathLike) -> None:
    """``np.savez(path, **arrays)``, atomically.

    A temporary file in the same directory, fsync, then a rename, so ``path`` is either
    the old file or the complete new one.

    Parameters
    ----------
    arrays : dict of str -> array_like
        The members to write (no object arrays: the file is read without pickle).
    path : str or os.PathLike
        The file to write.

    Raises
    ------
    OSError
        If the file cannot be written.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".fastlr-", suffix=".npz.tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


#: how a zip archive (an .npz) starts: a local file header, or the end record of an empty one
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")


class _Refused(Exception):
    """(read_npz_members) Not a checkpoint: the message says why."""


def _member(data, key, path, what):
    """One member of an open ``.npz``, read without pickle; an object array (pickled
    data, which fastlr never writes) is refused without NumPy's hint at allow_pickle."""
    try:
        return data[key]
    except ValueError as error:
        if "pickle" not in str(error):
            raise
        raise _Refused(f"{path!s} is not a readable {what}: its member {key!r} holds "
                       f"pickled Python objects, which a fastlr checkpoint never does "
                       f"(fastlr reads checkpoints without unpickling anything)") from None


def read_npz_members(path: PathLike, name: str, what: str) -> Dict[str, np.ndarray]:
    """Every member of the ``.npz`` at ``path``, read without pickle.

    Parameters
    ----------
    path : str or os.PathLike
        The file to read.
    name : str
        The caller's name, for messages (e.g. ``"fastlr.Adam.load"``).
    what : str
        What the file should be, for messages (e.g. ``"fastlr checkpoint"``).

    Returns
    -------
    dict of str -> numpy.ndarray
        The members by name.

    Raises
    ------
    ValueError
        If ``path`` is not a readable ``.npz`` file (the message says it is not a readable
        ``what``).
    """
    try:
        with open(os.fspath(path), "rb") as f:
            head = f.read(4)
            if head not in _ZIP_MAGIC:
                # (NumPy would go on to a .npy or a pickle, and its message about pickled
                # data suggests allow_pickle: never, for a checkpoint)
                start = f"it starts with {head!r}" if head else "it is empty"
                raise _Refused(f"{path!s} is not a readable {what}: it is not a .npz file "
                               f"(the zip archive of .npy arrays that save writes); {start}")
            f.seek(0)
            with np.load(f, allow_pickle=False) as data:
                return {k: _member(data, k, path, what) for k in data.files}
    except _Refused as error:
        raise ValueError(f"{name}: {error}") from None
    except (OSError, ValueError, EOFError) as error:
        raise ValueError(f"{name}: {path!s} is not a readable {what} ({error})") from error
    except Exception as error:      # zipfile.BadZipFile and friends
        raise ValueError(f"{name}: {path!s} is not a readable {what} "
                         f"({type(error).__name__}: {error})") from error


def read_checkpoint(path: PathLike, name: str = "fastlr.read_checkpoint") -> Dict[str, Any]:
    """Read what :func:`write_checkpoint` wrote, as a state dict.

    Parameters
    ----------
    path : str or os.PathLike
        The ``.npz`` checkpoint.
    name : str, default "fastlr.read_checkpoint"
        The caller's name, for messages.

    Returns
    -------
    dict
        The state dict, for :meth:`fastlr.Optimizer.load_state_dict`.

    Raises
    ------
    ValueError
        If the file is truncated, corrupted or not a fastlr optimizer checkpoint.
    """
    files = read_npz_members(path, name, "fastlr checkpoint")
    try:
        if str(files["format"]) != _FORMAT:
            raise ValueError(f"unknown format {str(files['format'])!r}")
        sd = {"format": _FORMAT, "steps": _int_member(files["steps"], "steps"),
              "param_groups": json.loads(str(files["param_groups"])), "state": {}}
        if "skipped_steps" in files:
            sd["skipped_steps"] = _int_member(files["skipped_steps"], "skipped_steps")
        if "lr_scale" in files:
            sd["lr_scale"] = [float(v) for v in np.asarray(files["lr_scale"]).reshape(-1)]
        if "last_lr" in files:
            sd["last_lr"] = [float(v) for v in np.asarray(files["last_lr"]).reshape(-1)]
        if "plateau" in files:
            sd["plateau"] = json.loads(str(files["plateau"]))
        for key, value in files.items():
            if key.startswith("state/"):
                _, i, buf = key.split("/", 2)
                if not i.isdigit() or str(int(i)) != i:
                    raise ValueError(f"member {key!r} has no param index")
                entry = sd["state"].setdefault(int(i), {})
                entry[buf] = (_int_member(value, key) if buf == "step" else
                              float(value) if buf in _SCALARS else value)
            elif key.startswith("master/"):
                i = key.split("/", 1)[1]
                if not i.isdigit() or str(int(i)) != i:
                    raise ValueError(f"member {key!r} has no param index")
                sd.setdefault("master", {})[int(i)] = value
    except (KeyError, ValueError, TypeError) as error:
        raise ValueError(f"{name}: {path!s} is not a valid fastlr checkpoint "
                         f"({error})") from error
    return sd


def _int_member(value, key):
    """An integer counter from an .npz member: a 0-d integer array, exactly."""
    if not (isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "iu"):
        raise ValueError(f"member {key!r} must be a 0-d integer array, got "
                         f"{getattr(value, 'dtype', '?')} of shape {getattr(value, 'shape', '?')}")
    return int(value)


class CheckpointMixin(_OptimizerAttrs):
    """state_dict / load_state_dict / save / load (part of :class:`Optimizer`)."""

    # (getattr: the optimizers that share this mixin without Optimizer keep no state dtype)
    def _export_buffer(self, view):
        """A copy of a state buffer as a checkpoint holds it: bfloat16 state widened to
        float32 (exact), so a state dict loads into either state_dtype; int8 state as its
        codes and scales (loading converts: fastlr/optim/int8.py)."""
        if getattr(self, "_state_dtype", "float32") == "bfloat16":
            out = view.astype(np.uint32)       # (an array also for a 0-d param)
            out <<= 16
            return out.view(np.float32)
        return np.array(view, copy=True)

    def _import_buffer(self, view, values):
        """Write checkpoint values into a state buffer: into bfloat16 state rounded to
        nearest even (exact for values a bfloat16 checkpoint holds; float64 is rounded to
        float32 first), else cast as numpy's same_kind casting allows."""
        if getattr(self, "_state_dtype", "float32") == "bfloat16":
            flat = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
            out = np.empty(flat.shape, dtype=np.uint16)
            _bf16.pack(flat, out)
            view[...] = out.reshape(view.shape)
        else:
            np.copyto(view, values, casting="same_kind")

    def state_dict(self) -> Dict[str, Any]:
        """The optimizer's state as a plain dict, arrays copied.

        A scheduled hyperparameter is saved as ``{"schedule": repr}``: schedules are code,
        rebuilt by the code that builds the optimizer. See :meth:`load_state_dict` for what
        loading restores.

        Returns
        -------
        dict
            ``{"format", "steps", "state": {i: {"step", buffers}}, "param_groups":
            [hyperparameters, "params": indices, "param_names": names]}`` and counters
            (``param_names`` when the params are named, as torch).

        Examples
        --------
        >>> opt = fastlr.Adam([np.ones(2)], lr=0.1)
        >>> opt.step([np.ones(2)])
        >>> sd = opt.state_dict()
        >>> sd["steps"], sorted(sd["state"][0])
        (1, ['exp_avg', 'exp_avg_sq', 'step'])
        """
        groups, index = [], 0
        for group in self.param_groups:
            g = {}
            for key, value in group.items():
                if key == "params":
                    g[key] = list(range(index, index + len(value)))
                    index += len(value)
                elif key == "param_names":
                    g[key] = list(value)
                else:
                    g[key] = _plain(value)
            groups.append(g)
        state = {i: dict({k: self._export_buffer(v) for k, v in self._live_state(i).items()},
                         step=int(self._counts[i])) for i in range(len(self._state))}
        if self._scalar:
            for i, st in state.items():
                st[self._scalar] = float(self._mu_product[i])
        sd = {"format": _FORMAT, "steps": self._t, "state": state, "param_groups": groups,
              "skipped_steps": self._skipped, "lr_scale": [float(v) for v in self._lr_scale],
              "last_lr": self.last_lr, "snapshot_of": self._snapshot_id}
        plateau = (self._plateau.state_dict() if self._plateau is not None
                   else self._pending_plateau)
        if plateau is not None:
            sd["plateau"] = dict(plateau)
        masters = getattr(self, "_masters_of", None) and self._masters_state()
        if masters:
            sd["master"] = masters          # 16-bit params' float32 master weights
        return sd

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> None:
        """Restore a state dict: the step count, per-param state and counters, plateau state.

        Everything is validated first; on any error nothing changes.

        **Hyperparameters are not restored**: the optimizer keeps its own values and
        schedules (the code that builds it decides them) and the restored step count moves
        its schedules to where the run was. Every hyperparameter the checkpoint recorded
        (``lr``, ``momentum``, ``betas``, ``weight_decay``, ``eps``, the flags, ...; a
        schedule by its repr) is compared with the optimizer's: any difference raises
        ``ValueError`` naming the group, the hyperparameter and both values. With
        ``strict=False`` a difference warns (``UserWarning``) and the optimizer's values are
        kept. A Python callable (not a :mod:`fastlr.schedules` schedule) cannot be compared
        and is kept without a check. Exception: a state dict this same optimizer object
        returned (an in-memory snapshot, as :func:`fastlr.find_lr` takes) is a rollback and
        restores its hyperparameters as well, as torch's ``load_state_dict`` does.

        **Names**: when both the optimizer and the checkpoint name their params, each group
        must hold the same names in the same order, else ``ValueError`` naming the missing
        and unexpected names (``strict=False``: a warning, loaded by position). A checkpoint
        without names loads into a named optimizer, and a named one into an optimizer
        without names, by position (shapes are checked), as before names existed.

        Parameters
        ----------
        state_dict : dict
            A state dict from :meth:`state_dict` (or :func:`fastlr.optim.read_checkpoint`).
        strict : bool, default True
            Raise on hyperparameters or names that differ from the optimizer's; with
            False, warn and keep the optimizer's.

        Raises
        ------
        TypeError
            If ``state_dict`` is not a dict or ``strict`` is not a bool.
        ValueError
            If the state dict is malformed, does not fit the params, or (``strict=True``)
            records other hyperparameters or names.
        RuntimeError
            If another thread is stepping or changing this optimizer at the same time.

        Examples
        --------
        >>> w = np.ones(2)
        >>> opt = fastlr.Adam([w], lr=0.1)
        >>> sd = opt.state_dict()
        >>> opt.step([np.ones(2)])
        >>> opt.load_state_dict(sd)
        >>> opt.steps
        0
        """
        strict = flag_arg(f"{self._name}.load_state_dict", "strict", strict)
        with self._exclusive("load_state_dict"):
            self._load_state_dict(state_dict, strict, "load_state_dict")

    def _load_state_dict(self, state_dict, strict, what):
        name = f"{self._name}.{what}"
        sd = state_dict
        if not isinstance(sd, dict):
            raise TypeError(f"{name}: expected a dict, got {type(sd).__name__}")
        for key in ("steps", "state", "param_groups"):
            if key not in sd:
                raise ValueError(f"{name}: the state dict has no {key!r} entry")
        if sd.get("format", _FORMAT) != _FORMAT:
            raise ValueError(f"{name}: unknown format {sd.get('format')!r}")
        steps = _nonneg_int(name, "steps", sd["steps"])
        skipped = _nonneg_int(name, "skipped_steps", sd.get("skipped_steps", 0))
        lr_scale = sd.get("lr_scale", [1.0] * len(self.param_groups))
        if not isinstance(lr_scale, (list, tuple, np.ndarray)) or \
                len(lr_scale) != len(self.param_groups) or \
                not all(_finite_nonneg(v) for v in lr_scale):
            raise ValueError(f"{name}: lr_scale must hold one finite number >= 0 per param "
                             f"group ({len(self.param_groups)}), got {lr_scale!r}")
        last_lr = sd.get("last_lr")
        if last_lr is not None and (
                not isinstance(last_lr, (list, tuple, np.ndarray)) or
                len(last_lr) != len(self.param_groups) or
                not all(_finite_nonneg(v) for v in last_lr)):
            raise ValueError(f"{name}: last_lr must be None or one finite lr >= 0 per param "
                             f"group, got {last_lr!r}")
        plateau = sd.get("plateau")
        if plateau is not None:
            plateau = _check_plateau_state(name, plateau)
            if self._plateau is not None:
                self._plateau._check_compatible(name, plateau)
        new_hypers, renamed, differ = self._checked_groups(name, sd["param_groups"])
        masters = self._checked_masters(name, sd) if hasattr(self, "_masters_of") else None
        state = sd["state"]
        if not isinstance(state, dict):
            raise TypeError(f"{name}: 'state' must be a dict keyed by param index")
        indices = {str(i) for i in range(len(self._params))}
        unknown = [k for k in state if not (isinstance(k, (int, np.integer, str)) and
                                            str(k) in indices)]
        if unknown:
            raise ValueError(f"{name}: 'state' has entries {unknown[:5]!r} for params this "
                             f"optimizer does not have (it has {len(self._params)})")
        new_state = {}
        int8_state = getattr(self, "_state_dtype", "float32") == "int8"
        for i, p in enumerate(self._params):
            st = state.get(i, state.get(str(i)))
            if not isinstance(st, dict):
                raise ValueError(f"{name}: the state dict has no state for param {i}")
            count = _nonneg_int(name, f"state[{i}]['step']", st.get("step"))
            bufs = {}
            if self._scalar:
                mp = st.get(self._scalar)
                if isinstance(mp, np.ndarray) and mp.ndim == 0:
                    mp = mp.item()
                low, high, _, text, _ = _specs.CHECKS[self._scalar_check]
                if isinstance(mp, (bool, np.bool_)) or not isinstance(mp, numbers.Real) or \
                        not (low <= mp and (high is None or mp <= high)) or \
                        not math.isfinite(mp):
                    raise ValueError(f"{name}: state[{i}][{self._scalar!r}] must be "
                                     f"{text if text.startswith('a ') else 'a number ' + text}, "
                                     f"got {mp!r}")
                bufs[self._scalar] = float(mp)
            st = int8.state_in(self, name, i, p, st)     # between state dtypes
            for buf in self._state[i]:
                if buf not in st and buf in self._optional_state:
                    continue
                if buf not in st:
                    raise ValueError(f"{name}: state[{i}] has no {buf!r} buffer, which this "
                                     f"optimizer's options need for {self._label(i)}")
                arr = st[buf]
                if int8_state:
                    bufs[buf] = int8.checked(self, name, i, p, buf, arr)
                    continue
                if not isinstance(arr, np.ndarray) or arr.shape != p.shape or \
                        arr.dtype.kind != "f":
                    raise ValueError(f"{name}: state[{i}][{buf!r}] must be a float array of "
                                     f"shape {p.shape} like {self._label(i)}, got "
                                     f"{getattr(arr, 'dtype', type(arr).__name__)} "
                                     f"{getattr(arr, 'shape', '')}")
                bufs[buf] = arr
            extra = set(st) - set(self._state[i]) - {"step"} - \
                ({self._scalar} if self._scalar else set())
            if extra:
                raise ValueError(f"{name}: state[{i}] has buffers {sorted(extra)} that this "
                                 f"optimizer's options do not use")
            new_state[i] = (count, bufs)
        self._settle_groups(name, strict, sd, new_hypers, renamed, differ)
        # everything checked: apply
        for i, (count, bufs) in new_state.items():
            self._counts[i] = count
            if self._scalar:
                self._mu_product[i] = bufs[self._scalar]
            for buf, view in self._state[i].items():
                if buf in bufs:
                    self._import_buffer(view, bufs[buf])
                else:
                    view[...] = 0
            self._started[i] = all(b in bufs for b in self._optional_state
                                   if b in self._state[i])
        self._t = steps
        self._skipped = skipped
        self._lr_scale[:] = [float(v) for v in lr_scale]
        if plateau is not None:
            if self._plateau is not None:
                self._plateau._load(plateau)
            else:
                self._pending_plateau = plateau
        self._dirty = True
        self._configure()
        self._used[...] = np.nan
        if last_lr is not None:
            self._used[:, 0] = [float(v) for v in last_lr]
        elif steps > 0:         # an older checkpoint: the lr the schedule gave last
            self._used[:, 0] = [v["lr"] for v in self._engine.group_values(steps - 1)]
        if masters is not None:
            self._load_masters(masters)

    def _checked_groups(self, name, groups):
        """A state dict's ``param_groups`` checked against this optimizer's groups (params
        held, names, hyperparameters): ``(new_hypers, renamed, differ)`` -- per group the
        recorded values to restore on a rollback, the name differences, and the
        ``(group, key, mine, saved)`` of every hyperparameter that differs."""
        if not isinstance(groups, (list, tuple)) or len(groups) != len(self.param_groups):
            raise ValueError(f"{name}: the state dict has "
                             f"{len(groups) if isinstance(groups, (list, tuple)) else '?'} "
                             f"param groups, this optimizer has {len(self.param_groups)}")
        new_hypers, index, renamed, differ = [], 0, [], []
        for g, (saved, group) in enumerate(zip(groups, self.param_groups)):
            if not isinstance(saved, dict):
                raise TypeError(f"{name}: param_groups[{g}] must be a dict")
            n = len(group["params"])
            held = saved.get("params", [])
            if not isinstance(held, (list, tuple, np.ndarray)) or \
                    list(held) != list(range(index, index + n)):
                raise ValueError(f"{name}: param_groups[{g}] holds params "
                                 f"{saved.get('params')}, expected {list(range(index, index + n))}")
            index += n
            saved_names = saved.get("param_names")
            if saved_names is not None:
                if not isinstance(saved_names, (list, tuple)) or len(saved_names) != n or \
                        not all(isinstance(k, str) for k in saved_names):
                    raise ValueError(f"{name}: param_groups[{g}]['param_names'] must be a list "
                                     f"of {n} strings, got {saved_names!r:.200}")
                mine = group.get("param_names")
                if mine is not None and list(saved_names) != mine:
                    renamed.append(_names_diff(g, mine, list(saved_names)))
            hyper = {}
            for key, value in saved.items():
                if key == "params" or key == "param_names":
                    continue
                if key not in group:
                    raise ValueError(f"{name}: param_groups[{g}] has an unknown "
                                     f"hyperparameter {key!r}")
                if not _same(group[key], value):
                    differ.append((g, key, group[key], value))
                if _is_marker(value):
                    continue        # a schedule: code, rebuilt by the code that built this
                if key in self._pairs and isinstance(value, (list, tuple)) \
                        and len(value) == 2:      # a scheduled slot: the optimizer's own
                    value = tuple(mine if _is_marker(part) else part
                                  for mine, part in zip(group[key], value))
                value = self._check_hyper(key, value, where=f"param_groups[{g}]")
                hyper[key] = value
            new_hypers.append(hyper)
        return new_hypers, renamed, differ

    def _settle_groups(self, name, strict, sd, new_hypers, renamed, differ):
        """After every other check of a state dict: refuse (``strict``) or warn about the
        names and hyperparameters that differ (what :meth:`_checked_groups` found), then,
        when it is this object's own state dict (a rollback), restore its
        hyperparameters."""
        rollback = sd.get("snapshot_of") == self._snapshot_id
        if renamed:
            self._refuse_or_warn(name, strict, "names its params otherwise", renamed,
                                 "build the optimizer over the checkpoint's names, in its "
                                 "order", "loaded by position")
        if differ and not rollback:
            self._refuse_or_warn(name, strict, "recorded other hyperparameters",
                                 [_hyper_diff(*d) for d in differ],
                                 "a checkpoint restores the step count and the state, never "
                                 "the hyperparameters: build the optimizer with the "
                                 "checkpoint's values and schedules",
                                 "kept this optimizer's values")
        if rollback:
            for group, hyper in zip(self.param_groups, new_hypers):
                for key, value in hyper.items():
                    dict.__setitem__(group, key, value)

    def _refuse_or_warn(self, name, strict, what, diffs, advice, kept):
        """A checkpoint that disagrees with this optimizer: ValueError (strict), else a
        warning saying what was done."""
        listed = "; ".join(diffs)
        if strict:
            raise ValueError(f"{name}: the checkpoint {what} than this optimizer: {listed}. "
                             f"{advice[0].upper()}{advice[1:]}, or load with strict=False "
                             f"(a warning). Nothing was loaded")
        warnings.warn(f"{name}: the checkpoint {what} than this optimizer: {listed}; "
                      f"strict=False: {kept}", UserWarning, stacklevel=4)

    def save(self, path: PathLike) -> None:
        """Write the state dict to ``path`` as ``.npz`` (no pickle), atomically.

        A temporary file in the same directory, then a rename. The params' names (when
        named) and every hyperparameter (a schedule by its repr) are recorded, for
        :meth:`load` to check.

        Parameters
        ----------
        path : str or os.PathLike
            The file to write (replaced when it exists).

        Raises
        ------
        OSError
            If the file cannot be written.

        Examples
        --------
        >>> import os, tempfile
        >>> opt = fastlr.SGD([np.ones(2)], lr=0.1)
        >>> path = os.path.join(tempfile.mkdtemp(), "opt.npz")
        >>> opt.save(path)
        >>> opt.load(path)
        """
        write_checkpoint(self.state_dict(), path)

    def load(self, path: PathLike, strict: bool = True) -> None:
        """Restore what :meth:`save` wrote, under :meth:`load_state_dict`'s rules.

        The optimizer's hyperparameters are kept and checked against the file's, names are
        checked; ``strict=False``: differences warn.

        Parameters
        ----------
        path : str or os.PathLike
            The ``.npz`` file :meth:`save` wrote.
        strict : bool, default True
            As for :meth:`load_state_dict`.

        Raises
        ------
        ValueError
            If the file is truncated, corrupted or does not match (nothing changes).
        OSError
            If the file cannot be read.
        RuntimeError
            If another thread is stepping or changing this optimizer at the same time.

        Examples
        --------
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "opt.npz")
        >>> fastlr.SGD([np.ones(2)], lr=0.1).save(path)
        >>> opt = fastlr.SGD([np.ones(2)], lr=0.1)
        >>> opt.load(path)
        >>> opt.steps
        0
        """
        name = f"{self._name}.load"
        strict = flag_arg(name, "strict", strict)
        sd = read_checkpoint(path, name)
        with self._exclusive("load"):
            self._load_state_dict(sd, strict, "load")


# ---------------------------------------------------------------------------------------
# state dicts of any shape as .npz files: the optimizers outside the table
# ---------------------------------------------------------------------------------------
_TREE = "fastlr-state-tree-1"
_TAGS = ("$array", "$tuple", "$map")


def _encode(value, arrays):
    """``value`` as JSON-able data; its arrays go to ``arrays`` (named a0, a1, ...) and
    are referred to by name. Tuples and dicts with non-string keys are tagged, so that
    :func:`_decode` gives back the same types; a schedule is recorded by its repr."""
    if isinstance(value, np.ndarray):
        name = f"a{len(arrays)}"
        arrays[name] = value
        return {"$array": name}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return {"$tuple": [_encode(v, arrays) for v in value]}
    if isinstance(value, list):
        return [_encode(v, arrays) for v in value]
    if isinstance(value, dict):
        if all(isinstance(k, str) and k not in _TAGS for k in value):
            return {k: _encode(v, arrays) for k, v in value.items()}
        return {"$map": [[_encode(k, arrays), _encode(v, arrays)] for k, v in value.items()]}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Schedule) or callable(value):
        return _plain(value)        # {"schedule": repr}: load checks it against its own
    raise TypeError(f"a state dict entry of type {type(value).__name__} cannot be saved")


def _decode(value, arrays):
    if isinstance(value, list):
        return [_decode(v, arrays) for v in value]
    if isinstance(value, dict):
        if len(value) == 1 and next(iter(value)) in _TAGS:
            tag, inner = next(iter(value.items()))
            if tag == "$array":
                return arrays[inner]
            if tag == "$tuple":
                return tuple(_decode(v, arrays) for v in inner)
            return {_decode(k, arrays): _decode(v, arrays) for k, v in inner}
        return {k: _decode(v, arrays) for k, v in value.items()}
    return value


def write_state_tree(sd: Mapping[str, Any], path: PathLike) -> None:
    """Write a state dict of nested dicts, lists, tuples, numbers, strings and NumPy arrays
    to ``path`` as ``.npz`` (no pickle), atomically: the arrays as members, the rest as
    one JSON member. :func:`read_state_tree` gives back an equal dict (same types).

    Parameters
    ----------
    sd : dict
        The state dict.
    path : str or os.PathLike
        The file to write, by :func:`write_npz_atomic`.

    Raises
    ------
    TypeError
        If an entry is of another type (nothing is written).
    OSError
        If the file cannot be written.
    """
    arrays: Dict[str, np.ndarray] = {}
    tree = json.dumps(_encode(dict(sd), arrays))
    write_npz_atomic({"format": np.array(_TREE), "tree": np.array(tree), **arrays}, path)


def read_state_tree(path: PathLike, name: str, what: str) -> Dict[str, Any]:
    """The state dict :func:`write_state_tree` wrote to ``path``.

    Parameters
    ----------
    path : str or os.PathLike
        The file to read.
    name : str
        The caller's name, for messages (e.g. ``"fastlr.Muon.load"``).
    what : str
        What the file should be, for messages (e.g. ``"fastlr Muon checkpoint"``).

    Returns
    -------
    dict

    Raises
    ------
    ValueError
        If the file is not readable or not such a file.
    """
    files = read_npz_members(path, name, what)
    try:
        if str(files["format"][()]) != _TREE:
            raise ValueError(f"its format is {str(files['format'][()])!r}, not {_TREE!r}")
        sd = _decode(json.loads(str(files["tree"][()])), files)
        if not isinstance(sd, dict):
            raise ValueError("it holds no state dict")
        return sd
    except (KeyError, ValueError, TypeError, IndexError) as error:
        raise ValueError(f"{name}: {path!s} is not a {what} "
                         f"({type(error).__name__}: {error})") from error


class StateFileMixin:
    """``save`` / ``load`` for an optimizer whose ``state_dict()`` is a tree of dicts,
    lists, numbers and arrays (the optimizers outside the table): the file holds exactly
    what ``state_dict()`` returns, and ``load`` applies it as ``load_state_dict`` does.

    The class provides ``state_dict()``, ``_name``, ``_exclusive(what)`` and
    ``_load(sd, strict, what)``."""

    _name: str

    def save(self, path: PathLike) -> None:
        """Write :meth:`state_dict` to ``path`` as ``.npz`` (no pickle), atomically.

        The hyperparameters (a schedule by its repr) and the params' names are recorded,
        for :meth:`load` to check.

        Parameters
        ----------
        path : str or os.PathLike
            The file to write (replaced when it exists).

        Raises
        ------
        OSError
            If the file cannot be written.

        Examples
        --------
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "muon.npz")
        >>> fastlr.Muon([np.ones((2, 2))]).save(path)
        """
        write_state_tree(self.state_dict(), path)      # type: ignore[attr-defined]

    def load(self, path: PathLike, strict: bool = True) -> None:
        """Restore what :meth:`save` wrote, under :meth:`load_state_dict`'s rules.

        Parameters
        ----------
        path : str or os.PathLike
            The ``.npz`` file :meth:`save` wrote.
        strict : bool, default True
            As for :meth:`load_state_dict`.

        Raises
        ------
        ValueError
            If the file is not a readable checkpoint of this optimizer or does not match
            (nothing changes).
        RuntimeError
            If another thread is stepping or changing this optimizer at the same time.

        Examples
        --------
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "muon.npz")
        >>> fastlr.Muon([np.ones((2, 2))]).save(path)
        >>> fastlr.Muon([np.ones((2, 2))]).load(path)
        """
        name = f"{self._name}.load"
        strict = flag_arg(name, "strict", strict)
        sd = read_state_tree(path, name, f"fastlr {type(self).__name__} checkpoint")
        with self._exclusive("load"):                   # type: ignore[attr-defined]
            self._load(sd, strict, "load")              # type: ignore[attr-defined]


def _plain(value):
    if isinstance(value, Schedule) or callable(value):
        return {"schedule": repr(value)}
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    return value


def _is_marker(value):
    return isinstance(value, dict) and set(value) == {"schedule"}


def _same(mine, saved):
    """Whether the optimizer's hyperparameter ``mine`` is what a checkpoint recorded as
    ``saved`` (a number, a flag, a pair, or a schedule's ``{"schedule": repr}``)."""
    saved = _plain(saved)
    if isinstance(mine, (tuple, list)):
        return isinstance(saved, (tuple, list)) and len(saved) == len(mine) and \
            all(_same(a, b) for a, b in zip(mine, saved))
    if isinstance(mine, Schedule):
        return _is_marker(saved) and saved["schedule"] == repr(mine)
    if callable(mine):
        return _is_marker(saved)    # Python code: fastlr cannot tell two callables apart
    if _is_marker(saved) or isinstance(saved, (dict, list, str)):
        return False
    return _plain(mine) == saved


def _shown(value):
    value = _plain(value)
    if _is_marker(value):
        return value["schedule"]
    if isinstance(value, list):
        return f"({', '.join(_shown(v) for v in value)})"
    return repr(value)


def _hyper_diff(g, key, mine, saved):
    return (f"param_groups[{g}][{key!r}] is {_shown(mine)} here, {_shown(saved)} in the "
            f"checkpoint")


def _names_diff(g, mine, saved):
    return f"param_groups[{g}]: {names_diff(mine, saved)}"

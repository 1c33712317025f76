"""Optimizer checkpoints: ``.npz`` files (no pickle), written atomically."""

import json
import os
import tempfile

import numpy as np

_FORMAT = "fastlr-optimizer-1"


def write_checkpoint(sd, path):
    """Write an optimizer state dict to ``path`` as ``.npz`` (no pickle), atomically: a
    temporary file in the same directory, fsync, then a rename."""
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
    write_npz_atomic(arrays, path)


def write_npz_atomic(arrays, path):
    """``np.savez(path, **arrays)`` atomically: a temporary file in the same directory,
    fsync, then a rename, so ``path`` is either the old file or the complete new one."""
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


def read_npz_members(path, name, what):
    """Every member of the ``.npz`` at ``path`` (no pickles), or a ValueError saying that
    ``path`` is not a readable ``what``."""
    try:
        with open(os.fspath(path), "rb") as f, np.load(f, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError) as error:
        raise ValueError(f"{name}: {path!s} is not a readable {what} ({error})") from error
    except Exception as error:      # zipfile.BadZipFile and friends
        raise ValueError(f"{name}: {path!s} is not a readable {what} "
                         f"({type(error).__name__}: {error})") from error


def read_checkpoint(path, name="fastlr.read_checkpoint"):
    """Read what :func:`write_checkpoint` wrote, as a state dict. A truncated or corrupted
    file raises ``ValueError``."""
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
                              float(value) if buf == "mu_product" else value)
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



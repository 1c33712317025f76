"""Data-parallel training over MPI with the optimizer state sharded across ranks (ZeRO-1).

Every rank holds all the params (views of one flat buffer) and computes grads on its part
of the batch. :meth:`ShardedOptimizer.step` then

1. agrees with every rank, by sending each other rank two numbers, that the grads are
   valid and whether any grad holds a NaN or Inf (``skip_nonfinite``): a rank that errs
   makes every rank raise, nobody hangs;
2. reduce-scatters the flat grad (a direct exchange with each other rank), so each rank
   holds the mean grad of its contiguous shard (shards differ by at most one element when
   sizes do not divide);
3. clips by the global norm if asked (the norm of the mean grad: one all-reduce of a
   scalar);
4. runs the fastlr optimizer on its shard only, so each rank keeps 1/N of the state;
5. all-gathers the updated shards, so every rank ends with the full updated params.

With ``overlap=True`` steps 2, 4 and 5 are pipelined bucket by bucket (the same bits).

The transport is MPI through mpi4py (``pip install "fastlr[mpi]"`` and an MPI library,
e.g. Debian's ``openmpi-bin libopenmpi-dev``). Start with ``mpirun -n 2 python train.py``.
Each rank uses one OpenMP thread by default (``n_threads``). Across hosts over TCP, give
Open MPI two connections per pair of ranks (``mpirun --mca btl_tcp_links 2``): the
reduce-scatter sends and receives at once, and over one connection it reached half the
link rate.

Faults never leave a job hanging silently:

- a rank that waits for the others longer than ``timeout`` seconds (default 1800, as
  torch.distributed's) at any point of a step prints which step, where, and which rank(s)
  it waited for (the step's agreement names every rank that did not arrive), and aborts
  every rank (``MPI_Abort``);
- an uncaught exception on a rank (after the traceback) aborts every rank at once
  (``abort_on_exception``), instead of leaving the others waiting in the next step;
- a rank that is killed: the launcher ends the job (Open MPI: "mpirun noticed that
  process rank 1 ... exited on signal 9"), or else the others time out as above.

Checkpoints (:meth:`ShardedOptimizer.save`) are written atomically, so the last complete
one resumes on any number of ranks. ``save``, ``load`` and the gathered state's methods
agree on their arguments before any rank waits for another (a rank whose arguments are
wrong makes every rank raise); outside the step there is no watchdog, so a rank that never
calls one of them (or dies in it) leaves the others waiting until the launcher ends the job.

At construction the ranks compare their params and their optimizers' settings (every
group's hyperparameters, schedules by their repr): a rank built otherwise makes every rank
raise, naming the setting, the group and the ranks. :meth:`ShardedOptimizer.close` (or a
``with`` block) frees the communicator an optimizer makes; garbage collection does not
(freeing is collective, and the ranks collect garbage at different moments).
"""

from __future__ import annotations

import math
import numbers
import os
import pickle
import re
import sys
import threading
import time
import warnings
import weakref
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence, Union

import numpy as np
from numpy.typing import NDArray

from fastlr import optim as _optim
from fastlr._core.args import (INT_MAX, POSITIVE, checked_real, choice_arg, flag_arg, int_arg,
                               threads_arg)
from fastlr._core import bf16 as _bf16
from fastlr._core.engine import grad_stats
from fastlr.optim.front import bare_grad as _bare_grad, check_flat_size as _check_flat_size
from fastlr.optim.groups import by_name, groups_arg, names_diff, split_named
from fastlr.optim.stepping import supports_windows as _supports_windows
from fastlr.schedules import Schedule

__all__ = ["ShardedOptimizer", "shard_bounds", "to_bfloat16", "from_bfloat16"]

if TYPE_CHECKING:
    #: A rank's grads: the flat buffer, one array per param, or a dict by param name.
    Grads = Union[NDArray[np.floating], Sequence[NDArray[np.floating]],
                  Mapping[str, NDArray[np.floating]]]


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError as error:
        raise ImportError("fastlr.distributed needs mpi4py and an MPI library: "
                          "pip install 'fastlr[mpi]' (and e.g. apt install openmpi-bin "
                          "libopenmpi-dev)") from error
    return MPI


def shard_bounds(total: int, world_size: int) -> tuple[list[int], list[int]]:
    """(counts, displacements) of ``world_size`` contiguous shards of ``total`` elements.

    The first ``total % world_size`` shards get one element more.

    Parameters
    ----------
    total : int
        The number of elements to split, >= 0.
    world_size : int
        The number of shards (ranks), >= 1.

    Returns
    -------
    counts : list of int
        The number of elements of each shard.
    displacements : list of int
        The offset of each shard's first element.

    Raises
    ------
    TypeError
        If an argument is not an int.
    ValueError
        If ``total`` is negative or ``world_size`` is below 1.

    Examples
    --------
    >>> shard_bounds(10, 3)
    ([4, 3, 3], [0, 4, 7])
    """
    fn = "fastlr.distributed.shard_bounds"
    total = int_arg(fn, "total", total, 0, INT_MAX)
    world_size = int_arg(fn, "world_size", world_size, 1, INT_MAX)
    base, extra = divmod(total, world_size)
    counts = [base + (1 if r < extra else 0) for r in range(world_size)]
    displs = [int(v) for v in np.concatenate([[0], np.cumsum(counts)[:-1]])]
    return counts, displs


def _max_norm_arg(name, value):
    """None (no clipping) or a finite number > 0."""
    return None if value is None else checked_real(name, "max_grad_norm", value, POSITIVE)


def _root_arg(name, root, world_size):
    return int_arg(name, "root", root, 0, world_size - 1)


def _address(a):
    return a.__array_interface__["data"][0]


def _split(items, groups):
    """``items`` (one per param) cut into one list per group."""
    out, start = [], 0
    for ps in groups:
        out.append(items[start:start + len(ps)])
        start += len(ps)
    return out


def _root(a):
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


def _flat_view(arrays, what):
    """The 1-D view covering ``arrays`` when they are C-contiguous, adjacent views of one
    buffer in order; else None."""
    first = arrays[0]
    dtype, root = first.dtype, _root(first)
    end = _address(first)
    for a in arrays:
        if a.dtype != dtype or not a.flags.c_contiguous or _root(a) is not root or \
                (a.size and _address(a) != end):
            return None
        end += a.nbytes
    total = sum(a.size for a in arrays)
    base = first.reshape(-1)
    return np.lib.stride_tricks.as_strided(base, shape=(total,), strides=(dtype.itemsize,),
                                           writeable=base.flags.writeable)


#: What ``grad_comm`` accepts: None (the grads' own dtype) or "bfloat16".
GRAD_COMM = (None, "bfloat16")
#: What ``param_comm`` accepts: None (the params' own dtype) or "bfloat16".
PARAM_COMM = (None, "bfloat16")


def to_bfloat16(x: NDArray[np.floating], out: Optional[NDArray[np.uint16]] = None
                ) -> NDArray[np.uint16]:
    """The bfloat16 bit patterns of ``x`` (float32 or float64), rounded to nearest even.

    bfloat16 is float32's top 16 bits (sign, 8 exponent bits, 7 mantissa bits): the same
    range as float32, about 3 significant digits (a relative rounding error of at most
    2**-9). float64 is rounded to float32 first. NaN stays NaN, overflow rounds to Inf.

    Parameters
    ----------
    x : numpy.ndarray
        float32 or float64 values.
    out : numpy.ndarray of uint16, optional
        Where to write (``x``'s size), else a new array.

    Returns
    -------
    numpy.ndarray of uint16
        The bit patterns (``out`` when given).

    Raises
    ------
    TypeError
        If ``x`` is not float32 or float64 (native byte order).
    ValueError
        If ``out`` is not a writeable, contiguous 1-D uint16 array of ``x``'s size.
    """
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64):
        raise TypeError(f"fastlr.distributed.to_bfloat16: x must be float32 or float64, got "
                        f"{x.dtype}")
    flat = np.ascontiguousarray(x).reshape(-1)
    if out is None:
        out = np.empty(flat.size, dtype=np.uint16)
    if not (isinstance(out, np.ndarray) and out.dtype == np.uint16 and out.ndim == 1
            and out.flags.c_contiguous and out.flags.writeable and out.size == flat.size):
        raise ValueError(f"fastlr.distributed.to_bfloat16: out must be a writeable, "
                         f"contiguous 1-D uint16 array of {flat.size} elements")
    _bf16.pack(flat, out)
    return out


def from_bfloat16(bits: NDArray[np.uint16]) -> NDArray[np.float32]:
    """float32 values of bfloat16 bit patterns (exact: every bfloat16 is a float32).

    Parameters
    ----------
    bits : numpy.ndarray of uint16
        bfloat16 bit patterns, as :func:`to_bfloat16` writes them.

    Returns
    -------
    numpy.ndarray of float32
        The values.
    """
    return (bits.astype(np.uint32) << 16).view(np.float32)


_TAG_AGREE = 11
_TAG_EXCHANGE = 12
_TAG_GATHER = 13
#: elements of the update between two looks at the overlapped exchange's messages (MPI
#: moves a message along only while this rank is inside an MPI call)
_PROGRESS_ELEMENTS = 1 << 18
_DEFAULT_TIMEOUT = 1800.0
#: bytes per message of load_gathered_state_dict's broadcast of a pickled state
_BCAST_BYTES = 1 << 30
#: bytes per message of the plain step's 16-bit exchange between hosts (its rounding,
#: widening and additions run on one piece while the next ones travel)
_PIPELINE_BYTES = 1 << 20
#: messages of the plain step's exchange posted ahead each way (ShardedOptimizer._in_pieces).
#: Over the 1 Gbit/s test bed 1 MiB x 4 moved 124 MB within 2% of one message's time and
#: 512 KiB x 4 took 18% longer; at 10 Gbit/s, where the CPU bounds the exchange, x 16 cost
#: 9% over one message and x 4 11-22%
_PIPELINE_WINDOW = 16


def _piece_bounds(count, itemsize, piece_bytes):
    """[(first, end)] of the pieces of ``piece_bytes`` (in elements of ``itemsize`` bytes,
    at least one; None: one piece) covering ``range(count)``; none for 0: a rank with an
    empty shard sends and receives nothing."""
    step = max(1, count if piece_bytes is None else piece_bytes // itemsize)
    return [(s, min(s + step, count)) for s in range(0, count, step)]


def _dropped_masters(name):
    warnings.warn(f"{name}: the state holds master weights (param_comm) but this optimizer "
                  f"keeps none; they were not loaded (load the params themselves as saved)",
                  UserWarning, stacklevel=4)


def _timeout_arg(name, value):
    if value is None:
        return None
    return checked_real(name, "timeout", value, POSITIVE)


class _Watchdog:
    """Aborts the MPI job when this rank has waited for the others past its deadline.

    The step arms it before each wait on other ranks (``arm``: the step, where, and the
    ranks it waits for, or a function that says which have not arrived) and disarms it
    after: two
    attribute writes, no lock. A daemon thread (started on the first ``arm``) looks every
    ``timeout / 10`` seconds (at most 1 s); past the deadline it prints what this rank waited
    for and calls ``Abort`` on the communicator, which ends every rank. It stops when its
    optimizer is garbage collected.
    """

    def __init__(self, comm, rank, timeout):
        self.comm, self.rank, self.timeout = comm, rank, timeout
        self.armed = None           # (deadline, step, where, ranks waited for or None)
        self.stopped = False
        self.thread = None

    def arm(self, step, where, ranks):
        if self.timeout is None:
            return
        if self.thread is None:
            self.thread = threading.Thread(target=self._watch, daemon=True,
                                           name=f"fastlr.distributed watchdog rank {self.rank}")
            self.thread.start()
        self.armed = (time.monotonic() + self.timeout, step, where, ranks)

    def disarm(self):
        self.armed = None

    def stop(self):
        self.stopped = True

    def _watch(self):
        period = min(1.0, self.timeout / 10)
        while not self.stopped:
            armed = self.armed
            if armed is not None and time.monotonic() >= armed[0]:
                self._fail(armed)
                return
            time.sleep(period)

    def _fail(self, armed):
        _, step, where, ranks = armed
        if callable(ranks):
            ranks = ranks()
        who = (f"rank(s) {sorted(ranks)}, which did not arrive" if ranks else
               "the other ranks (one of them stopped responding)")
        _say(f"fastlr.distributed: rank {self.rank}, step {step}: waited {self.timeout:g} s "
             f"in {where} for {who}; aborting every rank (MPI_Abort). If steps can "
             f"legitimately wait that long, raise ShardedOptimizer(timeout=...).")
        try:
            self.comm.Abort(1)
        finally:
            os._exit(1)


def _say(message):
    """One line to stderr in one write (the launcher interleaves the ranks' writes)."""
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


_hook_state: dict[str, Any] = {"installed": False, "optimizer": None}


def _install_excepthook(optimizer):
    """Make an uncaught exception on this rank abort every rank (after its traceback)."""
    _hook_state["optimizer"] = weakref.ref(optimizer)
    if _hook_state["installed"]:
        return
    previous = sys.excepthook

    def abort_every_rank(kind, value, tb):
        previous(kind, value, tb)
        ref = _hook_state["optimizer"]
        opt = ref() if ref is not None else None
        if opt is None:
            return
        _say(f"fastlr.distributed: rank {opt.rank} raised {kind.__name__} after step "
             f"{opt._calls} of its ShardedOptimizer; aborting every rank (MPI_Abort) so "
             f"that none waits for it")
        opt.comm.Abort(1)

    sys.excepthook = abort_every_rank
    _hook_state["installed"] = True


#: the optimizers a shard can run: element-wise, of the step engine (a shard is a slice of
#: the flat params; each element's update must not depend on the others)
_SUPPORTED = ("SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "Adadelta", "Adamax", "NAdam",
              "RAdam", "Lion", "Rprop", "ASGD")


def _optimizer_class(name, optimizer):
    """The fastlr optimizer class ``optimizer`` (a class or its name) if a shard can run it."""
    cls = getattr(_optim, optimizer, None) if isinstance(optimizer, str) else optimizer
    if not (isinstance(cls, type) and issubclass(cls, _optim.Optimizer)) or \
            cls is _optim.Optimizer:
        raise TypeError(f"{name}: optimizer must be a fastlr optimizer class or its name, "
                        f"got {optimizer!r}")
    if not issubclass(cls, tuple(getattr(_optim, n) for n in _SUPPORTED)):
        raise ValueError(f"{name}: optimizer must be one of {', '.join(_SUPPORTED)} (or a "
                         f"subclass), got {cls.__name__}")
    return cls


def _raise_if_any(name, own, message, everyone):
    """Raise on every rank when any rank's check failed (``everyone``: each rank's message
    or None): this rank's own error ``own`` as it is, else one naming the rank(s) that
    failed and the first one's message."""
    failed = [r for r, e in enumerate(everyone) if e is not None]
    if not failed:
        return
    if own is not None:
        raise own
    if message is not None:     # this rank's params were invalid (a message, no error)
        raise ValueError(f"{name}: {message}")
    raise ValueError(f"{name}: rank(s) {failed} failed: rank {failed[0]}: "
                     f"{everyone[failed[0]]}")


#: a memory address in a repr (a Python function's, inside a schedule's repr)
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _setting(value):
    """A hyperparameter as the ranks compare it (picklable): a number as it is (floats
    exactly), a pair as a tuple, a schedule or callable as its repr without memory addresses
    (so a Python function in it is compared by its name only: fastlr cannot tell two
    functions apart, as when a checkpoint is loaded), anything else by its repr."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, (bool, str)) or value is None:
        return value
    if isinstance(value, (tuple, list)):
        return tuple(_setting(v) for v in value)
    if isinstance(value, Schedule) or callable(value):
        return ("schedule", _ADDRESS.sub("", repr(value)))
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    return ("repr", _ADDRESS.sub("", repr(value)))


def _shown(value):
    if isinstance(value, tuple) and len(value) == 2 and value[0] in ("schedule", "repr"):
        return value[1]
    return repr(value)


def _settings(optimizer, max_grad_norm, skip_nonfinite):
    """What every rank's shard optimizer must share: ({option: value}, per group
    {hyperparameter: value}), as :func:`_setting` makes them."""
    options = {"max_grad_norm": max_grad_norm, "skip_nonfinite": skip_nonfinite,
               "state_dtype": getattr(optimizer, "_state_dtype", None)}
    groups = [{k: _setting(v) for k, v in g.items() if k not in ("params", "param_names")}
              for g in optimizer.param_groups]
    return {k: _setting(v) for k, v in options.items()}, groups


def _settings_diff(everyone):
    """One line per setting that differs between ranks (``everyone``: each rank's
    :func:`_settings`), naming it, its group and which ranks have which value."""
    lines = []

    def compare(label, values):
        distinct = []           # (value, ranks), in order of the first rank that has it
        for r, v in enumerate(values):
            for value, ranks in distinct:
                if value == v:      # (1 and 1.0 are the same setting, as are True and 1)
                    ranks.append(r)
                    break
            else:
                distinct.append((v, [r]))
        if len(distinct) > 1:
            lines.append(f"{label} is " + ", ".join(
                f"{_shown(v)} on rank(s) {ranks}" for v, ranks in distinct))

    missing = ("repr", "(not set)")
    for key in everyone[0][0]:
        compare(key, [options.get(key, missing) for options, _ in everyone])
    for g in range(max(len(groups) for _, groups in everyone)):
        per_rank = [groups[g] if g < len(groups) else {} for _, groups in everyone]
        keys = sorted({k for d in per_rank for k in d})
        for key in keys:
            compare(f"param_groups[{g}][{key!r}]", [d.get(key, missing) for d in per_rank])
    return lines


class ShardedOptimizer:
    """A fastlr optimizer data-parallel over MPI ranks, its state sharded (ZeRO stage 1).

    ``optimizer``: a fastlr optimizer class (``fastlr.AdamW``, ...) or its name
    (``"AdamW"``); ``params``: the model's params as C-contiguous views of one flat buffer
    (:func:`fastlr.flat_buffer`), as a list or a list of group dicts, or named (a dict of
    name -> view, ``(name, view)`` pairs, per group too, as for the optimizers; then
    ``step`` also takes a dict of grads by name and the gathered checkpoints record the
    names, checked when loaded); ``comm``: an mpi4py
    communicator (``MPI.COMM_WORLD`` by default); ``hyperparameters``: the optimizer's own
    (``lr`` with schedules, ``betas``, ...). Rank 0's initial params are broadcast to all.

    ``step(grads)`` takes this rank's grads: the flat grad buffer, or one array per param
    (views of one buffer are used in place; other arrays are copied into an internal flat
    buffer). It is collective: every rank calls it once per step.

    The optimizer duplicates ``comm`` for its own messages; :meth:`close` frees that
    communicator (collective), as does leaving ``with ShardedOptimizer(...) as opt:``.
    Garbage collection does not (see :meth:`close`): a program that builds many
    optimizers closes each.

    ``max_grad_norm`` clips by the norm of the mean grad over all params and ranks;
    ``skip_nonfinite`` skips the step on every rank when any rank's grad holds a NaN or
    Inf. The shard's optimizer is :attr:`optimizer` (a plain fastlr optimizer over this
    rank's slice of every param: its hyperparameters, ``param_groups`` writes and
    ``ReduceLROnPlateau`` work as usual when every rank does the same).

    Attributes (besides the properties): ``comm``, ``rank``, ``world_size``;
    ``total_size`` (elements of all params); ``bounds`` (this rank's shard, ``(lo, hi)``
    in the flat buffer); ``skip_nonfinite``; ``timeout``;
    ``skipped_steps``; ``last_grad_norm`` (the clipped norm of the last step, NaN before
    one); ``timings`` (seconds of the last step's phases). ``grad_comm``, ``param_comm``,
    ``overlap``, ``bucket_size`` and ``n_buckets`` (buckets per shard) are read-only
    properties: every rank agreed on them at construction.

    Parameters
    ----------
    optimizer : type or str
        A fastlr optimizer class (``fastlr.AdamW``, ...) or its name (``"AdamW"``).
    params : list of numpy.ndarray, list of dict, or named arrays (dict or list of pairs)
        The model's params: C-contiguous float32/float64 views of one flat buffer, in
        order, plainly, in param groups, or named.
    comm : mpi4py.MPI.Comm or None, default None
        The communicator (None: ``MPI.COMM_WORLD``).
    max_grad_norm : float or None, default None
        Clip by the global norm of the mean grad to this, > 0 (None: no clipping).
    skip_nonfinite : bool, default False
        Skip the step on every rank when any rank's grad holds a NaN or Inf.
    n_threads : int or None, default 1
        OpenMP threads of this rank's optimizer (None: :func:`fastlr.get_num_threads`).
    timeout : float or None, default 1800.0
        Seconds a rank waits for the others at any point of a step before it reports
        what it waited for and aborts every rank (None: wait forever).
    abort_on_exception : bool, default True
        With more than one rank, make an uncaught exception on this rank abort every rank
        (``MPI_Abort``, after the traceback) through ``sys.excepthook``, instead of
        leaving the other ranks waiting for it.
    grad_comm : {None, "bfloat16"}, default None
        The precision grads travel in. ``"bfloat16"`` halves the reduce-scatter's bytes
        (float32; a quarter for float64): each rank rounds its grads to bfloat16
        (:func:`to_bfloat16`, nearest even) before sending, and the shard's owner adds
        what it receives to its own grad in the params' dtype. The mean grad then differs
        from the exact one by at most about ``2**-9`` of each rank's contribution; the
        all-gather of the params stays exact.
    param_comm : {None, "bfloat16"}, default None
        The precision the updated params travel in. ``"bfloat16"`` halves the
        all-gather's bytes (float32): each rank keeps its shard's params in full precision
        as master weights (``master``, in the state dict and checkpoints), updates them,
        and sends them rounded to bfloat16 (nearest even); every rank's params (its own
        shard too) become those rounded values, so they stay identical on every rank. The
        update itself is exact on the master weights; the model sees them to about 3
        significant digits.
    overlap : bool, default False
        Overlap communication with the update: the shard is split into buckets, every
        bucket's reduce-scatter is posted at once, each bucket is updated as soon as its
        sum arrives and its params are sent on while later buckets are updated. The
        results are bit for bit those without overlap. It needs a receive buffer per other
        rank (the shard's size each). With ``max_grad_norm`` only the all-gather overlaps
        the update (the norm needs the whole sum first). An MPI error in the middle of an
        overlapped step leaves this rank's shard partly updated (without overlap nothing
        is written before the reduce-scatter completes).
    bucket_size : int, default 1048576
        With ``overlap``: elements of a rank's shard per bucket (>= 1; the shards are
        split into ``n_buckets`` equal parts of at most this size).
    **hyperparameters
        The optimizer's own hyperparameters (``lr``, ``betas``, ``weight_decay``, ...).

    Raises
    ------
    ImportError
        If mpi4py is not installed.
    TypeError
        If ``optimizer`` is not a fastlr optimizer class or name, or an argument has the
        wrong type.
    ValueError
        If ``optimizer`` is not one a shard can run (SGD, Adam, AdamW, RMSprop, Adagrad,
        Adadelta, Adamax, NAdam, RAdam, Lion, Rprop, ASGD or a subclass; not SparseAdam),
        any rank's params are invalid (empty, not views of one flat buffer, wrong dtype),
        or the ranks' models differ, or their settings differ (any group's
        hyperparameters, numbers compared exactly and schedules by their repr;
        ``max_grad_norm``, ``skip_nonfinite``, ``state_dtype``: the message names the
        setting, its group and the ranks). Every rank raises when any rank's arguments,
        params or hyperparameters are invalid: that rank its own error, the others a
        ``ValueError`` naming the rank(s) that failed.

    Examples
    --------
    Run under ``mpirun -n 2 python train.py``:

    >>> from fastlr.distributed import ShardedOptimizer          # doctest: +SKIP
    >>> flat, (w, b) = fastlr.flat_buffer([(100, 10), (10,)])    # doctest: +SKIP
    >>> opt = ShardedOptimizer("AdamW", [w, b], lr=1e-3)        # doctest: +SKIP
    >>> opt.step([grad_w, grad_b])                              # doctest: +SKIP
    """

    comm: Any
    rank: int
    world_size: int
    total_size: int
    bounds: tuple[int, int]
    optimizer: Any
    skip_nonfinite: bool
    skipped_steps: int
    last_grad_norm: float
    timings: dict[str, float]
    timeout: Optional[float]

    def __init__(self, optimizer: Union[type, str], params: Any, comm: Any = None, *,
                 max_grad_norm: Optional[float] = None, skip_nonfinite: bool = False,
                 n_threads: Optional[int] = 1, timeout: Optional[float] = _DEFAULT_TIMEOUT,
                 abort_on_exception: bool = True, grad_comm: Optional[str] = None,
                 param_comm: Optional[str] = None, overlap: bool = False,
                 bucket_size: int = 1 << 20, **hyperparameters: Any) -> None:
        MPI = _mpi()
        self._MPI = MPI
        self.comm = comm = MPI.COMM_WORLD if comm is None else comm
        self.rank, self.world_size = comm.Get_rank(), comm.Get_size()
        name = "fastlr.distributed.ShardedOptimizer"
        # every rank checks its arguments and its params, then all compare what they have:
        # a rank that raised alone would leave the others waiting in the next collective
        own: Optional[Exception] = None     # this rank's error, raised here as it is
        local_error = None                  # its message, for the other ranks
        signature = None
        names: Any
        groups, group_params, names = [], [], []
        try:
            cls = _optimizer_class(name, optimizer)
            skip_nonfinite = flag_arg(name, "skip_nonfinite", skip_nonfinite)
            max_grad_norm = _max_norm_arg(name, max_grad_norm)
            timeout = _timeout_arg(name, timeout)
            abort_on_exception = flag_arg(name, "abort_on_exception", abort_on_exception)
            grad_comm = GRAD_COMM[choice_arg(name, "grad_comm", grad_comm, GRAD_COMM)]
            param_comm = PARAM_COMM[choice_arg(name, "param_comm", param_comm, PARAM_COMM)]
            overlap = flag_arg(name, "overlap", overlap)
            bucket_size = int_arg(name, "bucket_size", bucket_size, 1, INT_MAX)
            if n_threads is not None:
                n_threads = threads_arg(name, n_threads)
            if hyperparameters.get("state_dtype") == "int8":
                # its blocks of 256 elements belong to one param: a shard cut through a
                # block would quantize differently from one process, and gathered state
                # could not be put together
                raise ValueError(f"{name}: state_dtype='int8' is not supported (its blocks "
                                 f"would be cut at the shards' bounds); use 'float32' or "
                                 f"'bfloat16'")
            mw = hyperparameters.get("master_weights")
            if mw is not None and not mw:        # (np.False_ too, as the optimizers read it)
                # the shards are float32 views of one flat buffer: nothing to keep in 16
                # bits (param_comm="bfloat16" sends 16-bit params and keeps float32 masters)
                raise ValueError(f"{name}: master_weights=False is not supported (the "
                                 f"shards are float32; param_comm='bfloat16' keeps float32 "
                                 f"master weights and gathers bfloat16 params)")
        except Exception as error:      # any error: the other ranks must hear of it
            own, local_error = error, str(error).replace(f"{name}: ", "")
        if own is None:
            try:
                groups = groups_arg(name, params)
                for k, g in enumerate(groups):
                    if not isinstance(g, dict) or "params" not in g:
                        raise TypeError("a param group must be a dict with a 'params' entry")
                    ps, ns = split_named(name, g["params"], f"param_groups[{k}]['params']")
                    group_params.append(ps)
                    names.append(ns)
                if len({ns is None for ns in names}) > 1:
                    raise ValueError("name all params or none")
                names = None if names[0] is None else [n for ns in names for n in ns]
                if names is not None and len(set(names)) != len(names):
                    raise ValueError("param names must be unique")
            except Exception as error:      # any error: the other ranks must hear of it
                local_error = str(error).replace(f"{name}: ", "")
                # raised here as its own type, the message named as this class's
                own = type(error)(f"{name}: {local_error}") \
                    if isinstance(error, (TypeError, ValueError)) else error
                group_params, names = [], None
        flat_params = [p for ps in group_params for p in ps]
        if local_error is not None:
            pass                    # shared with every rank below
        elif not flat_params or not all(isinstance(p, np.ndarray) for p in flat_params):
            local_error = "params must be a non-empty list of numpy arrays"
        elif flat_params[0].dtype not in (np.float32, np.float64):
            local_error = f"params must be float32 or float64, got {flat_params[0].dtype}"
        else:
            self._flat = _flat_view(flat_params, "params")
            if self._flat is None or not self._flat.flags.writeable:
                local_error = ("params must be writeable, C-contiguous views of one flat "
                               "buffer, in order (use fastlr.flat_buffer)")
            else:
                signature = (str(flat_params[0].dtype), [len(ps) for ps in group_params],
                             [tuple(p.shape) for p in flat_params], cls.__name__, names,
                             grad_comm, param_comm, overlap, bucket_size)
        everyone = comm.allgather((local_error, signature))
        _raise_if_any(name, own, local_error, [e for e, _ in everyone])
        for r, (_, sig) in enumerate(everyone):
            if sig != everyone[0][1]:
                raise ValueError(f"{name}: rank {r} has params {sig} but rank 0 has "
                                 f"{everyone[0][1]} (dtype, params per group, shapes, "
                                 f"optimizer, names, grad_comm, param_comm, overlap, "
                                 f"bucket_size); every rank "
                                 f"must build the same model")
        self._names = names
        self._group_names: Any = None if names is None else _split(names, group_params)
        self._dtype = flat_params[0].dtype
        self._mpi_type = MPI.FLOAT if self._dtype == np.float32 else MPI.DOUBLE
        self._shapes = [p.shape for p in flat_params]
        self._group_param_counts = [len(ps) for ps in group_params]
        self._sizes = [p.size for p in flat_params]
        self.total_size = total = int(sum(self._sizes))
        comm.Bcast([self._flat, self._mpi_type], root=0)
        self._counts, self._displs = shard_bounds(total, self.world_size)
        lo = self._displs[self.rank]
        hi = lo + self._counts[self.rank]
        self.bounds = (lo, hi)
        # with param_comm, the shard's optimizer updates master weights (a copy of this
        # rank's shard, full precision) rather than the params themselves
        self._param_comm = param_comm
        self._master = self._flat[lo:hi].copy() if param_comm is not None else None
        self._p16 = None                # the 16-bit all-gather's buffer, made on first use
        owned, base = (self._flat, 0) if self._master is None else (self._master, lo)
        # this rank's slice of every param that reaches into [lo, hi); a group with none
        # gets one empty slice, so every rank's optimizer has the same groups
        # (param index, offset in the param, length)
        self._pieces: list[tuple[Optional[int], int, int]] = []
        inner_groups, start, index = [], 0, 0
        for g, ps in zip(groups, group_params):
            views = []
            for p in ps:
                a, b = start, start + p.size
                s, e = max(a, lo), min(b, hi)
                if e > s:
                    views.append(owned[s - base:e - base])
                    self._pieces.append((index, s - a, e - s))
                start = b
                index += 1
            if not views:
                views.append(owned[lo - base:lo - base])
                self._pieces.append((None, 0, 0))
            inner_groups.append(dict({k: v for k, v in g.items() if k != "params"},
                                     params=views) if isinstance(g, dict) else
                                {"params": views})
        # the hyperparameters are the optimizer's to check, on each rank's own: the ranks
        # agree on the outcome, as on the params, and then compare what each rank's
        # optimizer holds (its groups' hyperparameters, schedules by their repr, and the
        # options that change the update): each rank updates its own shard, so a setting
        # that differed would train the shards otherwise, silently. Compared here only,
        # in the all-gather the construction makes anyway (nothing per step)
        own = local_error = settings = None
        try:
            self.optimizer = cls(inner_groups, n_threads=n_threads, **hyperparameters)
            if overlap and not _supports_windows(self.optimizer):
                raise ValueError(f"{name}: overlap=True needs an element-wise optimizer of "
                                 f"the step engine ({', '.join(_SUPPORTED)}), got "
                                 f"{cls.__name__}")
            settings = _settings(self.optimizer, max_grad_norm, skip_nonfinite)
        except Exception as error:      # any error: the other ranks must hear of it
            own, local_error = error, str(error).replace(f"{name}: ", "")
        everyone = comm.allgather((local_error, settings))
        _raise_if_any(name, own, local_error, [e for e, _ in everyone])
        differ = _settings_diff([s for _, s in everyone])
        if differ:
            raise ValueError(f"{name}: the ranks' optimizers differ: {'; '.join(differ)}. "
                             f"Each rank updates its own shard with its own settings: every "
                             f"rank must pass the same hyperparameters")
        self._overlap = overlap
        self._bucket_size = bucket_size
        # overlap: each shard in n_buckets equal parts (bucket c of rank k's shard is
        # elements [counts[k] * c // n_buckets, counts[k] * (c + 1) // n_buckets) of it)
        self._n_buckets = max(1, -(-max(self._counts) // bucket_size))
        self._rounds = None         # the overlapped reduce-scatter's receive buffers
        self._n_threads = n_threads
        self._shard_grad = np.zeros(hi - lo, dtype=self._dtype)
        self._flat_grad = None      # allocated on first use, for grads given as arrays
        self._recv = None           # the reduce-scatter's receive buffer (one shard)
        self.max_grad_norm = max_grad_norm
        self.skip_nonfinite = skip_nonfinite
        self.skipped_steps = 0
        self.last_grad_norm = math.nan
        # fastlr's own messages travel on a duplicate of comm, so they never match a
        # message of the caller's; close() frees it (never a finalizer: see close)
        self._wire = comm.Dup()
        self._closed = False
        # the plain step's 16-bit exchange travels in pieces (see _in_pieces) between hosts;
        # between ranks that all share one host's memory in one piece per round (there the
        # ranks' own cores copy the messages, and pieces made the exchange about 5% slower). The
        # ranks agree: Open MPI's view of who shares memory can differ between them (seen
        # on the network-namespace test bed), and the pieces must match on both ends.
        local = self._wire.Split_type(MPI.COMM_TYPE_SHARED)
        one_host = self._wire.allreduce(local.Get_size() == self.world_size, op=MPI.LAND)
        local.Free()
        self._pipeline_bytes = None if one_host else _PIPELINE_BYTES
        self._grad_comm = grad_comm
        self._send16 = self._recv16 = None      # bfloat16 buffers, made on first use
        self._agree_rows = np.zeros((self.world_size, 2), dtype=np.float64)
        self._others = [k for k in range(self.world_size) if k != self.rank]
        self._agree_requests = None     # persistent requests, made on the first step
        self._calls = 0             # step() calls so far (the step a message names is +1)
        self.timeout = timeout
        self._watchdog = _Watchdog(comm, self.rank, timeout)
        weakref.finalize(self, self._watchdog.stop)
        if abort_on_exception and self.world_size > 1:
            _install_excepthook(self)
        #: seconds of the last step: {"check", "reduce_scatter", "clip", "update",
        #: "all_gather"}; with overlap (over several ranks) {"check", "update" (the update
        #: windows), "exposed" (the update windows at whose end none of the messages this
        #: rank watched was pending: the link may have idled through them), "wait"
        #: (blocked on messages), "exchange" (the pipelined part)}
        self.timings = {}

    # ---- closing -------------------------------------------------------------------------
    def close(self) -> None:
        """Collective: free the communicator this optimizer made (a duplicate of ``comm``,
        where its own messages travel) and stop its watchdog.

        Every rank calls it (or leaves a ``with`` block), once the optimizer is done with;
        calling it again does nothing. Afterwards ``step``, ``save``, ``load``,
        ``gathered_state_dict``, ``load_gathered_state_dict`` and ``load_state_dict``
        raise ``ValueError``; ``state_dict()``, the params and the attributes stay
        readable. ``comm`` itself is the caller's and stays open.

        MPI has a limited number of communicators (Open MPI 4.1: about 65500 per process),
        so a program that builds many optimizers (a hyperparameter sweep, tests) closes
        each. Garbage collection does not free it: freeing a communicator is collective in
        MPI, and the ranks collect their garbage at different moments (or during
        interpreter shutdown, after ``MPI_Finalize``), so a finalizer that freed it could
        wait forever for the other ranks or fail; an optimizer never closed keeps its
        communicator until the program ends.

        Open MPI frees a communicator without waiting for the other ranks (the MPI
        standard allows it), so a rank that leaves a ``with`` block by an exception
        closes its optimizer and goes on; the exception then aborts every rank if
        uncaught (``abort_on_exception``), as before.
        """
        if self._closed:
            return
        self._closed = True
        self._watchdog.stop()
        if self._agree_requests is not None:
            for request in self._agree_requests:
                request.Free()
            self._agree_requests = None
        self._wire.Free()           # mpi4py sets it to MPI.COMM_NULL
        # the exchange's buffers (a shard per other rank with overlap) go now
        self._recv = self._rounds = self._send16 = self._recv16 = self._flat_grad = None

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def __enter__(self) -> "ShardedOptimizer":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def _check_open(self, name):
        if self._closed:
            raise ValueError(f"{name}: the optimizer is closed (close() freed its "
                             f"communicator); build a new ShardedOptimizer")

    # ---- the step -------------------------------------------------------------------------
    def _grad_buffer(self, grads):
        """This rank's grads as one flat array (a view when possible); raises on bad input
        without touching anything."""
        name = "fastlr.distributed.ShardedOptimizer.step"
        if isinstance(grads, dict):
            grads = by_name(name, self._names, grads, "the grads",
                            "nothing was updated on any rank")
        if isinstance(grads, np.ndarray):   # the one param's grad, or a 1-D flat buffer
            grads = _bare_grad(name, grads, self._shapes, self.total_size)
        if isinstance(grads, np.ndarray):   # (any layout: a strided one is copied below)
            _check_flat_size(name, grads, self.total_size)
            arrays, sizes = [grads], [self.total_size]
        elif isinstance(grads, (list, tuple)):
            arrays, sizes = list(grads), self._sizes
            if len(arrays) != len(self._shapes):
                raise ValueError(f"{name}: got {len(arrays)} grads for {len(self._shapes)} "
                                 f"params")
            for i, (g, shape) in enumerate(zip(arrays, self._shapes)):
                if not isinstance(g, np.ndarray):
                    raise TypeError(f"{name}: grads[{i}] must be a numpy.ndarray, got "
                                    f"{type(g).__name__}")
                if g.shape != shape:
                    raise ValueError(f"{name}: grads[{i}] has shape {g.shape} but params[{i}] "
                                     f"has shape {shape}")
        else:
            raise TypeError(f"{name}: grads must be the flat grad buffer ({self.total_size} "
                            f"elements) or a list of arrays, got {type(grads).__name__}")
        for i, g in enumerate(arrays):
            if g.dtype != self._dtype:
                raise TypeError(f"{name}: grads[{i}] has dtype {g.dtype} but the params are "
                                f"{self._dtype}")
        flat = _flat_view(arrays, "grads")
        if flat is not None and flat.size == self.total_size and flat.flags.aligned:
            if np.shares_memory(flat, self._flat):
                raise ValueError(f"{name}: the grads share memory with the params")
            return flat
        if self._flat_grad is None:
            self._flat_grad = np.empty(self.total_size, dtype=self._dtype)
        start = 0
        for g, n in zip(arrays, sizes):        # (a strided flat buffer: copied whole)
            self._flat_grad[start:start + n] = g.reshape(-1)
            start += n
        return self._flat_grad

    def _in_pieces(self, dst, src, tag, T, outgoing, incoming, prepare=None, arrived=None):
        """Send ``outgoing`` (a list of contiguous arrays) to rank ``dst`` and receive
        ``incoming`` (as many arrays, give or take one) from rank ``src``, one message per
        array, in order: ``_PIPELINE_WINDOW`` receives and sends posted first, then one
        more of each every time a receive completes (the rest of the sends at the end).

        ``prepare(j)`` fills outgoing[j] just before it is posted; ``arrived(j)`` runs as
        soon as incoming[j] is here, while the next ones travel. Posting in step with the
        arrivals keeps the messages in order: with every piece posted at once Open MPI
        interleaves them, so they all complete near the end and the work on them cannot
        hide behind the link. Receive j waits only on the sender's send j, posted at the
        start or after the sender's own receive j - W: the exchange cannot wait on itself.
        The caller arms the watchdog and disarms it (also when this raises)."""
        comm, W = self._wire, _PIPELINE_WINDOW
        sends, receives = [], []

        def post_send():
            j = len(sends)
            if prepare is not None:
                prepare(j)
            sends.append(comm.Isend([outgoing[j], T], dst, tag=tag))

        def post_receive():
            receives.append(comm.Irecv([incoming[len(receives)], T], src, tag=tag))

        for _ in range(min(W, len(incoming))):
            post_receive()
        for _ in range(min(W, len(outgoing))):
            post_send()
        for j in range(len(incoming)):
            receives[j].Wait()
            if len(receives) < len(incoming):
                post_receive()
            if len(sends) < len(outgoing):
                post_send()
            if arrived is not None:
                arrived(j)
        while len(sends) < len(outgoing):
            post_send()
        self._MPI.Request.Waitall(sends)

    def _reduce_scatter(self, flat):
        """self._shard_grad = the mean over ranks of their flat[lo:hi]. Direct exchange: in
        round k each rank sends the shard of rank r+k and receives its own shard from rank
        r-k, adding it in (a fixed order, so repeatable); the sum is then divided by the
        rank count. Open MPI's Reduce_scatter over shared memory measured ~9x slower for
        64 MB on the development machine.

        Between hosts each round travels in pieces of ``_PIPELINE_BYTES``, in order
        (:meth:`_in_pieces`): piece j is rounded (with ``grad_comm``) as it is posted, and
        each received piece is added in (in the last round, then divided by the rank count:
        the mean) while the next ones travel. The rounding, the additions and the division
        thus hide behind the link instead of adding to it; the arithmetic per element is
        the same, so are the bits."""
        MPI, T = self._MPI, self._mpi_type
        r, n = self.rank, self.world_size
        lo, hi = self.bounds
        acc = self._shard_grad
        bf16 = self._grad_comm == "bfloat16"
        if bf16:
            if self._send16 is None:
                self._send16 = np.empty(self.total_size, dtype=np.uint16)
                self._recv16 = np.empty(hi - lo, dtype=np.uint16)
            # rounded per round: only the shards sent, never this rank's own
            send, recv, T = self._send16, self._recv16, MPI.UINT16_T
        else:
            if self._recv is None:
                self._recv = np.empty(len(acc), dtype=self._dtype)
            send, recv = flat, self._recv
        # float32 and float64 grads go in one message per round: pieces made them slower
        # where the CPU bounds the exchange (10 Gbit/s on the test bed) and saved nothing
        # clear at 1 Gbit/s, with no conversion to hide
        pieces = self._pipeline_bytes if bf16 else None
        mine = _piece_bounds(hi - lo, recv.itemsize, pieces)
        for k in range(1, n):
            dst, src = (r + k) % n, (r - k) % n
            a = self._displs[dst]
            theirs = [(a + s, a + e)
                      for s, e in _piece_bounds(self._counts[dst], send.itemsize, pieces)]

            def prepare(j):
                s, e = theirs[j]
                _bf16.pack(flat[s:e], send[s:e])

            def arrived(j, k=k):
                s, e = mine[j]
                base = flat[lo + s:lo + e] if k == 1 else acc[s:e]
                if bf16:
                    _bf16.add(acc[s:e], base, recv[s:e])
                else:
                    np.add(base, recv[s:e], out=acc[s:e])
                if k == n - 1:      # the piece's sum is complete: its mean
                    np.divide(acc[s:e], self._dtype.type(n), out=acc[s:e])

            self._watchdog.arm(self._calls, f"the reduce-scatter (round {k}: receiving from "
                               f"rank {src}, sending to rank {dst})", [src])
            try:
                self._in_pieces(dst, src, _TAG_EXCHANGE, T, [send[s:e] for s, e in theirs],
                                [recv[s:e] for s, e in mine], prepare if bf16 else None,
                                arrived)
            finally:
                self._watchdog.disarm()

    def _gather16(self):
        """Every param = the bfloat16 rounding of its master (``param_comm``), the
        all-gather of ``step`` in rounds of the direct exchange: in round k this rank's
        shard goes to rank r+k and rank r-k's comes in, in pieces, in order
        (:meth:`_in_pieces`). The shard's pieces are rounded as round 1 posts them and
        widened into the params one per piece received; the pieces received are widened
        as they arrive. So the rounding and the widening hide behind the link."""
        T = self._MPI.UINT16_T
        r, n = self.rank, self.world_size
        lo, hi = self.bounds
        p16, params, master = self._p16_buffer(), self._flat, self._master
        mine = [(lo + s, lo + e) for s, e in _piece_bounds(hi - lo, 2, self._pipeline_bytes)]
        own = mine[::-1]            # this rank's pieces not yet widened (next one last)

        def prepare(j):
            s, e = mine[j]
            _bf16.pack(master[s - lo:e - lo], p16[s:e])

        for k in range(1, n):
            dst, src = (r + k) % n, (r - k) % n
            a = self._displs[src]
            theirs = [(a + s, a + e)
                      for s, e in _piece_bounds(self._counts[src], 2, self._pipeline_bytes)]

            def arrived(j):
                s, e = theirs[j]
                _bf16.unpack(p16[s:e], params[s:e])
                if own:                     # rounded: posted before this arrival
                    s, e = own.pop()
                    _bf16.unpack(p16[s:e], params[s:e])

            self._watchdog.arm(self._calls, f"the all-gather of the updated params (round "
                               f"{k}: receiving from rank {src}, sending to rank {dst})",
                               [src])
            try:
                self._in_pieces(dst, src, _TAG_GATHER, T, [p16[s:e] for s, e in mine],
                                [p16[s:e] for s, e in theirs], prepare if k == 1 else None,
                                arrived)
            finally:
                self._watchdog.disarm()
        for s, e in own[::-1]:
            _bf16.unpack(p16[s:e], params[s:e])

    def _agree(self, mine):
        """The sum over ranks of each rank's 2-vector ``mine`` (in rank order, so the same
        bits on every rank), by point-to-point messages (persistent requests, one blocking
        wait) so that a rank that does not arrive can be named: the rows of the ranks not
        heard from still hold NaN (see _Watchdog)."""
        rows, r = self._agree_rows, self.rank
        rows[r] = mine
        if self.world_size == 1:
            return rows[0].copy()
        if self._agree_requests is None:
            MPI, wire = self._MPI, self._wire
            others = [k for k in range(self.world_size) if k != r]
            self._agree_requests = (
                [wire.Recv_init([rows[k], MPI.DOUBLE], source=k, tag=_TAG_AGREE)
                 for k in others]
                + [wire.Send_init([rows[r], MPI.DOUBLE], dest=k, tag=_TAG_AGREE)
                   for k in others])
        requests = self._agree_requests
        rows[self._others] = np.nan
        self._watchdog.arm(self._calls, "the step's agreement (every rank checks its grads)",
                           self._not_arrived)
        self._MPI.Prequest.Startall(requests)
        self._MPI.Request.Waitall(requests)
        self._watchdog.disarm()
        return rows.sum(axis=0)

    def _not_arrived(self):
        """The ranks whose agreement row has not come (read by the watchdog's thread)."""
        return [k for k in self._others if np.isnan(self._agree_rows[k, 0])]

    def step(self, grads: Grads) -> Optional[bool]:
        """One collective data-parallel update; every rank calls it once per step.

        Parameters
        ----------
        grads : numpy.ndarray, list of numpy.ndarray or dict of str to numpy.ndarray
            This rank's grads: the flat grad buffer (1-D, ``total_size`` elements), one
            array per param (views of one buffer are used in place, others copied), or a
            dict by param name; ranks may pass different ones of these forms. With one
            param, an array of its shape is its grad. A flat buffer that is not
            C-contiguous (a strided view) is copied.

        Returns
        -------
        bool or None
            None; with ``skip_nonfinite``, True (applied) or False (skipped on every rank).

        Raises
        ------
        TypeError
            If ``grads`` is not one of the above, or has the wrong dtype.
        ValueError
            If the grads do not fit the params (count, shapes, names), share memory with
            them, or another rank's grads are invalid; nothing is updated on any rank.
        """
        if self._closed:
            self._check_open("fastlr.distributed.ShardedOptimizer.step")
        MPI = self._MPI
        t0 = time.perf_counter()
        self._calls += 1
        error = flat = None
        nonfinite = False
        try:
            flat = self._grad_buffer(grads)
            if self.skip_nonfinite:
                nonfinite = grad_stats(flat, n_threads=self._n_threads)[1]
        except (TypeError, ValueError) as e:
            error = e
        # valid grads cover the agreed model's params on every rank, whatever their form
        # (flat, list, dict): nothing more to compare (the number of arrays was, and
        # refused valid grads given in different forms)
        agree = self._agree((error is not None, nonfinite))
        if agree[0]:
            if error is not None:
                raise error
            raise ValueError(f"fastlr.distributed.ShardedOptimizer.step: {int(agree[0])} "
                             f"other rank(s) passed invalid grads (this rank's were fine); "
                             f"nothing was updated on any rank")
        if agree[1]:
            self.skipped_steps += 1
            self.timings = {"check": time.perf_counter() - t0}
            return False
        t1 = time.perf_counter()
        if self.world_size == 1:
            # one rank: the shard is the whole grad; step on it in place (the optimizer's
            # fused clipping reads it without writing it)
            t2 = t3 = time.perf_counter()
            self.optimizer.max_grad_norm = self.max_grad_norm
            self.optimizer.step(flat)
            if self.max_grad_norm is not None:
                self.last_grad_norm = self.optimizer.last_grad_norm
            t4 = time.perf_counter()
            if self._master is not None:
                self._publish(to_bfloat16(self._master, self._p16_buffer()))
            t5 = time.perf_counter()
            self.timings = {"check": t1 - t0, "reduce_scatter": t2 - t1, "clip": t3 - t2,
                            "update": t4 - t3, "all_gather": t5 - t4}
            return True if self.skip_nonfinite else None
        if self.overlap:
            self._overlapped_step(flat)
            self.timings["check"] = t1 - t0
            return True if self.skip_nonfinite else None
        self._reduce_scatter(flat)
        t2 = time.perf_counter()
        if self.max_grad_norm is not None:
            sumsq = np.array([grad_stats(self._shard_grad, n_threads=self._n_threads)[0]])
            self._watchdog.arm(self._calls, "the all-reduce of the grad norm", None)
            self._wire.Allreduce(MPI.IN_PLACE, sumsq, op=MPI.SUM)
            self._watchdog.disarm()
            self.last_grad_norm = norm = math.sqrt(sumsq[0])
            coef = self.max_grad_norm / (norm + 1e-6)
            scale = 1.0 if coef >= 1.0 else coef       # NaN stays NaN, as torch
            if scale != 1.0:
                np.multiply(self._shard_grad, self._dtype.type(scale), out=self._shard_grad)
        t3 = time.perf_counter()
        self.optimizer.step(self._shard_grad)
        t4 = time.perf_counter()
        if self._master is None:
            self._watchdog.arm(self._calls, "the all-gather of the updated params", None)
            self._wire.Allgatherv(MPI.IN_PLACE,
                                  [self._flat, self._counts, self._displs, self._mpi_type])
            self._watchdog.disarm()
        else:
            self._gather16()
        t5 = time.perf_counter()
        self.timings = {"check": t1 - t0, "reduce_scatter": t2 - t1, "clip": t3 - t2,
                        "update": t4 - t3, "all_gather": t5 - t4}
        return True if self.skip_nonfinite else None

    # ---- the overlapped step (overlap=True) ----------------------------------------------
    def _bucket(self, k, c):
        """Bucket c of rank k's shard: (first, end) offsets in that shard."""
        n = self._counts[k]
        return n * c // self._n_buckets, n * (c + 1) // self._n_buckets

    def _bucket_span(self, k, c):
        """Bucket c of rank k's shard: (first, end) offsets in the flat buffer."""
        a, b = self._bucket(k, c)
        return a + self._displs[k], b + self._displs[k]

    def _overlapped_step(self, flat):
        """The reduce-scatter, update and all-gather of ``step``, bucket by bucket.

        Bucket c's reduce-scatter is the direct exchange of ``_reduce_scatter`` restricted
        to bucket c of every shard; every bucket's is posted at the start. As soon
        as bucket c's sum is here it is averaged and (without clipping) its elements of the
        shard are updated, window by window, looking at the messages in flight between
        windows so that MPI keeps moving them; then its updated params go out to every
        rank. The per-element arithmetic (the order of the additions, the division, the
        update) is the same as without overlap, so the bits are too. With
        ``max_grad_norm`` the norm needs every bucket's sum first: the reduce-scatter
        completes, then the updates overlap the all-gathers only.

        Invalid grads and scheduled values are refused before any message goes out, as
        without overlap. An MPI error in the middle (a broken link) leaves the shard partly
        updated and messages posted; with ``abort_on_exception`` every rank aborts.
        """
        MPI, comm = self._MPI, self._wire
        r, n, C = self.rank, self.world_size, self._n_buckets
        lo, hi = self.bounds
        acc = self._shard_grad
        watchdog = self._watchdog
        bf16 = self._grad_comm == "bfloat16"
        T = MPI.UINT16_T if bf16 else self._mpi_type
        if self._rounds is None:
            self._rounds = np.empty((n - 1, hi - lo), dtype=np.uint16 if bf16 else self._dtype)
            if bf16:
                self._send16 = np.empty(self.total_size, dtype=np.uint16)
        rounds = self._rounds
        send = self._send16 if bf16 else flat
        if self._master is None:
            gather, GT = self._flat, self._mpi_type
        else:
            gather, GT = self._p16_buffer(), MPI.UINT16_T
        clip = self.max_grad_norm is not None
        timings = {"update": 0.0, "exposed": 0.0, "wait": 0.0}
        t_start = time.perf_counter()

        def post_reduce(c):
            requests = []
            for k in range(1, n):
                dst, src = (r + k) % n, (r - k) % n
                a, b = self._bucket_span(dst, c)
                if bf16:
                    _bf16.pack(flat[a:b], send[a:b])
                requests.append(comm.Isend([send[a:b], T], dst, tag=_TAG_EXCHANGE))
                a, b = self._bucket(r, c)
                requests.append(comm.Irecv([rounds[k - 1, a:b], T], src, tag=_TAG_EXCHANGE))
            return requests

        def wait(requests, where):
            t = time.perf_counter()
            watchdog.arm(self._calls, where, None)
            try:
                MPI.Request.Waitall(requests)
            finally:
                watchdog.disarm()
            timings["wait"] += time.perf_counter() - t

        def reduce(c):
            a, b = self._bucket(r, c)
            part = acc[a:b]
            for k in range(1, n):
                base = flat[lo + a:lo + b] if k == 1 else part
                if bf16:
                    _bf16.add(part, base, rounds[k - 1, a:b])
                else:
                    np.add(base, rounds[k - 1, a:b], out=part)
            np.divide(part, self._dtype.type(n), out=part)

        def update(c, in_flight):
            a, b = self._bucket(r, c)
            t = time.perf_counter()
            for w in range(a, b, _PROGRESS_ELEMENTS):
                t_window = time.perf_counter()
                stepper.run(w, min(w + _PROGRESS_ELEMENTS, b))
                # a window at whose end none of the messages watched is pending may have
                # left the link idle: counted whole as exposed (one that ends with a
                # message pending is not, though the message may have stalled in it)
                if not in_flight or MPI.Request.Testall(in_flight):
                    in_flight = []
                    timings["exposed"] += time.perf_counter() - t_window
            if self._master is not None:
                t_round = time.perf_counter()
                to_bfloat16(self._master[a:b], gather[lo + a:lo + b])
                if not in_flight:
                    timings["exposed"] += time.perf_counter() - t_round
            timings["update"] += time.perf_counter() - t

        def post_gather(c):
            requests = []
            a, b = self._bucket(r, c)
            for k in range(1, n):
                dst, src = (r + k) % n, (r - k) % n
                requests.append(comm.Isend([gather[lo + a:lo + b], GT], dst, tag=_TAG_GATHER))
                sa, sb = self._bucket_span(src, c)
                requests.append(comm.Irecv([gather[sa:sb], GT], src, tag=_TAG_GATHER))
            return requests

        # without clipping the step begins (schedules evaluated and checked) before any
        # message goes out: an invalid value raises on every rank with nothing in flight
        stepper = None if clip else self.optimizer._windowed_step(acc)
        gathering: list[Any] = []
        try:
            # every bucket's exchange is posted at once, so the link never waits for a post
            # (Open MPI interleaves them: the sums tend to arrive together near the end,
            # and the updates then overlap the all-gather)
            reducing = {c: post_reduce(c) for c in range(C)}
            for c in range(C):
                wait(reducing.pop(c), f"the overlapped reduce-scatter (bucket {c} of {C})")
                reduce(c)
                if not clip:
                    update(c, reducing.get(c + 1, []) + gathering[-2 * (n - 1):])
                    gathering += post_gather(c)
            if clip:
                sumsq = np.array([grad_stats(acc, n_threads=self._n_threads)[0]])
                watchdog.arm(self._calls, "the all-reduce of the grad norm", None)
                comm.Allreduce(MPI.IN_PLACE, sumsq, op=MPI.SUM)
                watchdog.disarm()
                self.last_grad_norm = norm = math.sqrt(sumsq[0])
                coef = self.max_grad_norm / (norm + 1e-6)
                scale = 1.0 if coef >= 1.0 else coef       # NaN stays NaN, as torch
                if scale != 1.0:
                    np.multiply(acc, self._dtype.type(scale), out=acc)
                stepper = self.optimizer._windowed_step(acc)
                for c in range(C):
                    update(c, gathering[-2 * (n - 1):])
                    gathering += post_gather(c)
            stepper.end()
            stepper = None
        finally:
            if stepper is not None:
                stepper.abandon()
        if self._master is None:
            wait(gathering, "the overlapped all-gather of the updated params")
        else:
            # bucket by bucket (post_gather's requests, in bucket order): its params
            # widened from their bfloat16 roundings while the later buckets arrive
            per = 2 * (n - 1)
            for c in range(C):
                wait(gathering[c * per:(c + 1) * per],
                     f"the overlapped all-gather of the updated params (bucket {c} of {C})")
                for k in range(n):
                    a, b = self._bucket_span(k, c)
                    _bf16.unpack(gather[a:b], self._flat[a:b])
        timings["exchange"] = time.perf_counter() - t_start
        self.timings = timings

    def _p16_buffer(self):
        if self._p16 is None:
            self._p16 = np.empty(self.total_size, dtype=np.uint16)
        return self._p16

    def _publish(self, bits):
        """Every param = the bfloat16 value ``bits`` holds for it (exact widening)."""
        _bf16.unpack(bits, self._flat)

    # the configuration every rank agreed on at construction: read-only (one rank changing
    # it alone would garble the exchange)
    @property
    def grad_comm(self) -> Optional[str]:
        """The precision grads travel in (None or ``"bfloat16"``; read-only)."""
        return self._grad_comm

    @property
    def param_comm(self) -> Optional[str]:
        """The precision updated params travel in (None or ``"bfloat16"``; read-only)."""
        return self._param_comm

    @property
    def overlap(self) -> bool:
        """Whether communication overlaps the update (read-only)."""
        return self._overlap

    @property
    def bucket_size(self) -> int:
        """With ``overlap``: at most this many elements of a shard per bucket (read-only)."""
        return self._bucket_size

    @property
    def n_buckets(self) -> int:
        """Buckets per shard (equal parts of at most ``bucket_size`` elements)."""
        return self._n_buckets

    @property
    def master(self) -> Optional[NDArray[np.floating]]:
        """This rank's master weights (its shard of the flat params, full precision) with
        ``param_comm``, else None. The live buffer: writing it changes the next update."""
        return self._master

    @property
    def max_grad_norm(self) -> Optional[float]:
        """Clip by the global norm of the mean grad to this (None: no clipping)."""
        return self._max_grad_norm

    @max_grad_norm.setter
    def max_grad_norm(self, value: Optional[float]) -> None:
        self._max_grad_norm = _max_norm_arg("fastlr.distributed.ShardedOptimizer", value)

    @property
    def steps(self) -> int:
        """Steps applied so far (the shard optimizer's ``steps``)."""
        return self.optimizer.steps

    @property
    def state_elements(self) -> int:
        """Elements of optimizer state this rank holds (about 1/N of one process's)."""
        return sum(int(np.size(v)) for st in self.optimizer.state.values()
                   for k, v in st.items() if isinstance(v, np.ndarray))

    # ---- state ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """This rank's state: its shard's optimizer state dict and where the shard lies.

        Loads back with :meth:`load_state_dict` on the same rank of the same world size.

        Returns
        -------
        dict
            ``{"format", "rank", "world_size", "total_size", "bounds", "skipped_steps",
            "optimizer"}``, and ``"master"`` (this rank's master weights) with
            ``param_comm``.
        """
        sd = {"format": "fastlr-sharded-1", "rank": self.rank,
              "world_size": self.world_size, "total_size": self.total_size,
              "bounds": list(self.bounds), "skipped_steps": self.skipped_steps,
              "optimizer": self.optimizer.state_dict()}
        if self._master is not None:
            sd["master"] = self._master.copy()
        return sd

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> None:
        """Restore :meth:`state_dict` (per rank; not collective).

        With ``param_comm`` the master weights come back but the params are not touched:
        restore them as saved (the masters' rounding), or load a gathered state
        (:meth:`load_gathered_state_dict`, :meth:`load`), which rounds the masters into
        every rank's params.

        Under the optimizers' rules (:meth:`fastlr.Optimizer.load_state_dict`:
        hyperparameters are kept and checked, ``strict=False`` warns).

        Parameters
        ----------
        state_dict : dict
            What :meth:`state_dict` returned on this rank.
        strict : bool, default True
            Whether mismatches the optimizers tolerate are errors (else warnings).

        Raises
        ------
        ValueError
            If it is not a sharded state dict, or was saved by another rank, world size or
            model, or does not fit the optimizer.
        TypeError
            If an entry has the wrong type.
        """
        name = "fastlr.distributed.ShardedOptimizer.load_state_dict"
        self._check_open(name)
        sd = state_dict
        if not isinstance(sd, dict) or sd.get("format") != "fastlr-sharded-1":
            raise ValueError(f"{name}: not a sharded state dict (use "
                             f"load_gathered_state_dict for a gathered one)")
        for key, mine in (("rank", self.rank), ("world_size", self.world_size),
                          ("total_size", self.total_size), ("bounds", list(self.bounds))):
            if sd.get(key) != mine:
                raise ValueError(f"{name}: the state is for {key}={sd.get(key)!r}, this rank "
                                 f"has {mine!r}; load a gathered state to re-shard")
        skipped = int_arg(name, "skipped_steps", sd.get("skipped_steps", 0), 0, INT_MAX)
        master = None
        if self._master is not None and sd.get("master") is not None:
            master = self._checked_master(name, "master", sd["master"], self._master.shape)
        elif sd.get("master") is not None:
            _dropped_masters(name)
        self.optimizer.load_state_dict(sd["optimizer"], strict=strict)
        self.skipped_steps = skipped
        if self._master is not None:
            lo, hi = self.bounds
            self._master[:] = master if master is not None else self._flat[lo:hi]

    def _checked_master(self, name, what, value, shape):
        v = np.asarray(value)
        if v.shape != shape or v.dtype.kind != "f":
            raise ValueError(f"{name}: {what} must be a float array of shape {shape}, got "
                             f"{v.dtype} {v.shape}")
        return v

    def gathered_state_dict(self, root: int = 0) -> Optional[dict[str, Any]]:
        """Collective: the state of the whole model, on rank ``root``.

        In the format of a single-process fastlr optimizer over the full params (it loads
        into one with ``load_state_dict``, or onto any number of ranks with
        :meth:`load_gathered_state_dict`).

        Parameters
        ----------
        root : int, default 0
            The rank that receives the state.

        Returns
        -------
        dict or None
            The gathered state dict on rank ``root``, None elsewhere.

        Raises
        ------
        TypeError
            If ``root`` is not an int (on every rank: the others a ``ValueError`` naming
            the rank).
        ValueError
            If ``root`` is not a rank of the communicator, or the ranks passed different
            roots (on every rank), or the optimizer is closed.
        """
        name = "fastlr.distributed.ShardedOptimizer.gathered_state_dict"
        self._agree_root(name, root)
        return self._gathered(root)

    def _agree_root(self, name, root):
        """Collective: the open check, then every rank's ``root`` checked and agreed on (a
        bad or differing root raises on every rank)."""
        self._check_open(name)
        error = None
        try:
            _root_arg(name, root, self.world_size)
        except Exception as e:      # any error: the other ranks must hear of it
            error = e
        self._agree_args(name, error, root)

    def _agree_args(self, name, error, root=None):
        """Collective (one small all-gather on ``comm``), before a collective method's own
        collectives: raise on every rank when any rank's arguments were invalid
        (``error``: this rank's error, or None), that rank its own error and the others a
        ValueError naming it; and when the ranks passed different roots. Without it a
        rank that raised alone would leave the others waiting in the method's first
        collective, with no watchdog (only the step arms one)."""
        message = None if error is None else str(error).replace(f"{name}: ", "")
        everyone = self.comm.allgather((message, None if error is not None else root))
        _raise_if_any(name, error, message, [m for m, _ in everyone])
        roots = [r for _, r in everyone]
        if any(r != roots[0] for r in roots):
            shown = ", ".join(f"rank {k}: {r!r}" for k, r in enumerate(roots))
            raise ValueError(f"{name}: the ranks passed different roots ({shown}); every "
                             f"rank must pass the same root")

    def _gathered(self, root):
        """gathered_state_dict, its arguments agreed on."""
        mine = self.optimizer.state_dict()
        scalar = self.optimizer._scalar    # the per-param scalar state (NAdam's mu_product)
        info = []
        names: Any
        for j, (k, offset, length) in enumerate(self._pieces):
            st = mine["state"][j]
            names = tuple(sorted(n for n in st if n not in ("step", scalar)))
            info.append((k, offset, length, st["step"], st.get(scalar), names))
        everyone = self.comm.allgather(info)
        names = sorted({n for rank_info in everyone for item in rank_info for n in item[5]})
        full: dict[str, Any] = {}
        for n in names:
            local = np.zeros(self._counts[self.rank], dtype=self._dtype)
            pos = 0
            for j, (k, offset, length) in enumerate(self._pieces):
                if length and n in mine["state"][j]:
                    local[pos:pos + length] = mine["state"][j][n].reshape(-1)
                pos += length
            out = np.empty(self.total_size, dtype=self._dtype) if self.rank == root else None
            self.comm.Gatherv([local, self._mpi_type],
                              [out, self._counts, self._displs, self._mpi_type]
                              if self.rank == root else None, root=root)
            full[n] = out
        full_master = None
        if self._master is not None:
            full_master = (np.empty(self.total_size, dtype=self._dtype)
                           if self.rank == root else None)
            self.comm.Gatherv([self._master, self._mpi_type],
                              [full_master, self._counts, self._displs, self._mpi_type]
                              if self.rank == root else None, root=root)
        if self.rank != root:
            return None
        starts = np.concatenate([[0], np.cumsum(self._sizes)]).astype(np.int64)
        per_param: dict[int, dict[str, Any]] = {}
        for rank_info in everyone:
            for k, offset, length, step, mu, pnames in rank_info:
                if k is None:
                    continue
                entry = per_param.setdefault(k, {"step": step, "mu": mu, "names": set(pnames)})
                entry["names"] &= set(pnames)
        # a param no rank holds (zero-size) gets what a single process gives it: the
        # step, scalar and (empty) buffers of its group's other params
        group_of = [g for g, c in enumerate(self._group_param_counts) for _ in range(c)]
        fallback = {"step": self.optimizer.steps, "names": set(names),
                    "mu": None if scalar is None else self.optimizer._scalar_init}
        for k in range(len(self._shapes)):
            if k not in per_param:
                same = [e for j, e in per_param.items() if group_of[j] == group_of[k]]
                per_param[k] = same[0] if same else fallback
        state = {}
        for k, shape in enumerate(self._shapes):
            entry = per_param[k]
            st = {"step": int(entry["step"])}
            for n in sorted(entry["names"]):
                st[n] = full[n][starts[k]:starts[k + 1]].reshape(shape).copy()
            if entry["mu"] is not None:
                st[scalar] = float(entry["mu"])
            state[k] = st
        groups, index = [], 0
        for g, (saved, n_params) in enumerate(zip(mine["param_groups"],
                                                  self._group_param_counts)):
            groups.append(dict(saved, params=list(range(index, index + n_params))))
            if self._names is not None:
                groups[-1]["param_names"] = list(self._group_names[g])
            index += n_params
        sd = {key: mine[key] for key in mine
              if key not in ("state", "param_groups", "snapshot_of")}
        sd.update(state=state, param_groups=groups)
        sd["skipped_steps"] = self.skipped_steps
        if full_master is not None:
            sd["master"] = {k: full_master[starts[k]:starts[k + 1]].reshape(shape).copy()
                            for k, shape in enumerate(self._shapes)}
        return sd

    def load_gathered_state_dict(self, state_dict: Optional[Mapping[str, Any]],
                                 root: Optional[int] = None, strict: bool = True) -> None:
        """Load a gathered (single-process format) state; each rank takes its shard.

        Collective when ``root`` is given (the state is broadcast from that rank; others
        pass None); with ``root=None`` every rank passes the same gathered state (e.g. read
        from one file). Any number of ranks can load what any number of ranks saved. The
        optimizers' rules apply (hyperparameters kept and checked; names checked when both
        sides have them; ``strict=False`` warns).

        Parameters
        ----------
        state_dict : dict or None
            The gathered state (:meth:`gathered_state_dict`, or a single-process
            optimizer's ``state_dict()``); None on the ranks other than ``root``.
        root : int or None, default None
            The rank whose ``state_dict`` is broadcast, or None: every rank passes it.
        strict : bool, default True
            Whether differing param names are an error (else a ``UserWarning``).

        Raises
        ------
        TypeError
            If an argument has the wrong type, or rank ``root`` cannot pickle the state to
            broadcast it (on every rank: the others a ``ValueError`` naming the rank).
        ValueError
            If the state does not fit this model (on any rank), or the ranks passed
            different roots (or None on some); nothing is loaded on any rank. Also if the
            optimizer is closed.
        """
        name = "fastlr.distributed.ShardedOptimizer.load_gathered_state_dict"
        self._check_open(name)
        error: Optional[Exception] = None
        payload = b""               # on rank root with a root: the pickled state
        try:
            strict = flag_arg(name, "strict", strict)
            if root is not None:
                _root_arg(name, root, self.world_size)
                if self.rank == root and self.world_size > 1:
                    # pickled before any rank waits for it: a state that cannot be pickled
                    # raises here, inside what the ranks agree on
                    try:
                        payload = pickle.dumps(state_dict, protocol=pickle.HIGHEST_PROTOCOL)
                    except Exception as e:
                        raise TypeError(f"{name}: rank {root} cannot pickle the state to "
                                        f"broadcast it ({type(e).__name__}: {e})") from e
        except Exception as e:      # any error: the other ranks must hear of it
            error = e
        self._agree_args(name, error, root)
        received: Optional[bytearray] = None
        if root is not None and self.world_size > 1:
            # the pickled state from rank root: its size, then its bytes (in pieces of
            # at most 1 GiB: an MPI count is an int)
            size = self.comm.bcast(len(payload) if self.rank == root else None, root=root)
            if self.rank != root:
                received = bytearray(size)
            view = memoryview(payload if received is None else received)
            for start in range(0, size, _BCAST_BYTES):
                self.comm.Bcast([view[start:start + _BCAST_BYTES], self._MPI.BYTE],
                                root=root)
        self._load_gathered(name, state_dict if received is None else None, strict,
                            received)

    def _load_gathered(self, name, state_dict, strict, received=None):
        """Collective: load a gathered state (``received``: pickled, from another rank),
        the arguments agreed on; every rank loads or none."""
        MPI = self._MPI
        error = None
        master = snapshot = None
        sd = state_dict
        try:
            if received is not None:
                sd = pickle.loads(received)
            inner = self._shard_state(name, sd, strict)
            skipped = int_arg(name, "skipped_steps", sd.get("skipped_steps", 0), 0, INT_MAX)
            if self._master is not None and sd.get("master") is not None:
                master = self._master_shard(name, sd["master"])
            elif isinstance(sd, dict) and sd.get("master") is not None:
                _dropped_masters(name)
            # the shard's optimizer checks its part (buffers its options need,
            # hyperparameters) only as it loads it, and a checkpoint can fit one rank's part
            # and not another's: load here, inside what the ranks agree on, and put this
            # rank's own state back below if another rank failed (a copy of the shard's
            # state while loading; loading its own state dict is an exact rollback, with
            # what it does not hold: a plateau state waiting for its scheduler, the values
            # last used)
            opt = self.optimizer
            if self.world_size > 1:
                snapshot = (opt.state_dict(), opt._pending_plateau, opt._used.copy())
            opt.load_state_dict(inner, strict=strict)
        except Exception as e:      # any error: the other ranks must hear of it
            error = e
        failed = self.comm.allreduce(int(error is not None), op=MPI.SUM)
        if failed:
            if error is None:
                own_state, pending, used = snapshot
                self.optimizer.load_state_dict(own_state)
                self.optimizer._pending_plateau = pending
                self.optimizer._used[...] = used
                raise ValueError(f"{name}: the state does not fit another rank's shard; "
                                 f"nothing was loaded")
            raise error if not isinstance(error, KeyError) else ValueError(
                f"{name}: the state has no {error}")
        self.skipped_steps = skipped
        if self._master is not None:
            lo, hi = self.bounds
            self._master[:] = master if master is not None else self._flat[lo:hi]
            self._sync_params()

    def _sync_params(self):
        """Collective: every rank's params = the masters rounded to bfloat16, as after a
        step (after a load)."""
        lo, hi = self.bounds
        p16 = self._p16_buffer()
        to_bfloat16(self._master, p16[lo:hi])
        if self.world_size > 1:
            self._wire.Allgatherv(self._MPI.IN_PLACE,
                                  [p16, self._counts, self._displs, self._MPI.UINT16_T])
        self._publish(p16)

    def _master_shard(self, name, master):
        """This rank's shard of a gathered ``master`` ({param index: array})."""
        if not isinstance(master, dict):
            raise ValueError(f"{name}: 'master' must map param indices to arrays")
        out = np.empty(self._counts[self.rank], dtype=self._dtype)
        pos = 0
        for k, offset, length in self._pieces:
            if k is None:
                continue
            v = master.get(k, master.get(str(k)))
            if v is None:
                raise ValueError(f"{name}: 'master' has no entry for param {k}")
            v = self._checked_master(name, f"master[{k}]", v, self._shapes[k])
            out[pos:pos + length] = v.reshape(-1)[offset:offset + length]
            pos += length
        return out

    def _shard_state(self, name, sd, strict):
        if not isinstance(sd, dict) or not isinstance(sd.get("state"), dict) or \
                not isinstance(sd.get("param_groups"), (list, tuple)):
            raise ValueError(f"{name}: expected a gathered (single-process format) state dict")
        state = {}
        scalar = self.optimizer._scalar    # the per-param scalar state (NAdam's mu_product)
        pieces_per_group = self._inner_group_sizes()
        group_of = [g for g, n in enumerate(pieces_per_group) for _ in range(n)]
        first_param = np.concatenate([[0], np.cumsum(self._group_param_counts)]).astype(int)
        for j, (k, offset, length) in enumerate(self._pieces):
            if k is None:
                # a group this rank holds no element of: empty buffers of the names its
                # first param has (the group's options decide them, e.g. amsgrad's
                # max_exp_avg_sq; another group's names would not load)
                st = {"step": 0}
                first = int(first_param[group_of[j]])
                ref = sd["state"].get(first, sd["state"].get(str(first), {}))
                if not isinstance(ref, dict):
                    raise ValueError(f"{name}: the state has no entry for param {first}")
                for n, v in ref.items():
                    if isinstance(v, np.ndarray) and v.ndim > 0:
                        st[n] = np.zeros(0, dtype=self._dtype)
                    elif n == scalar:
                        st[n] = self.optimizer._scalar_init
                state[j] = st
                continue
            full = sd["state"].get(k, sd["state"].get(str(k)))
            if not isinstance(full, dict):
                raise ValueError(f"{name}: the state has no entry for param {k}")
            st = {}
            for n, v in full.items():
                if n == "step" or n == scalar:
                    st[n] = v
                    continue
                v = np.asarray(v)
                if v.shape != self._shapes[k]:
                    raise ValueError(f"{name}: state[{k}][{n!r}] has shape {v.shape}, the "
                                     f"param has {self._shapes[k]}")
                st[n] = v.reshape(-1)[offset:offset + length]
            state[j] = st
        groups = []
        index = 0
        if len(sd["param_groups"]) != len(pieces_per_group):
            raise ValueError(f"{name}: the state has {len(sd['param_groups'])} param groups, "
                             f"the model {len(pieces_per_group)}")
        for g, (saved, n) in enumerate(zip(sd["param_groups"], pieces_per_group)):
            if not isinstance(saved, dict):
                raise ValueError(f"{name}: a param group must be a dict")
            saved_names = saved.get("param_names")
            if saved_names is not None and self._names is not None and \
                    list(saved_names) != self._group_names[g]:
                diff = f"param_groups[{g}]: {names_diff(self._group_names[g], saved_names)}"
                if strict:
                    raise ValueError(f"{name}: the checkpoint names its params otherwise than "
                                     f"this model: {diff}. Build the model over the "
                                     f"checkpoint's names, in its order, or load with "
                                     f"strict=False (a warning). Nothing was loaded")
                warnings.warn(f"{name}: the checkpoint names its params otherwise than this "
                              f"model: {diff}; strict=False: loaded by position", UserWarning,
                              stacklevel=4)
            groups.append({k: v for k, v in saved.items() if k != "param_names"})
            groups[-1]["params"] = list(range(index, index + n))
            index += n
        inner = {k: v for k, v in sd.items() if k not in ("state", "param_groups", "master")}
        inner.update(state=state, param_groups=groups)
        inner.pop("skipped_steps", None)
        return inner

    def _inner_group_sizes(self):
        return [len(g["params"]) for g in self.optimizer.param_groups]

    def save(self, path: Union[str, os.PathLike[str]], root: int = 0) -> None:
        """Collective: write the gathered state from rank ``root``.

        In the single-process format, as ``.npz``, atomically.

        Parameters
        ----------
        path : str or os.PathLike
            The file rank ``root`` writes.
        root : int, default 0
            The rank that gathers and writes the state.

        Raises
        ------
        TypeError
            If ``root`` is not an int (on every rank: the others a ``ValueError`` naming
            the rank).
        ValueError
            If ``root`` is not a rank of the communicator, or the ranks passed different
            roots (on every rank), or the optimizer is closed.
        OSError
            If the file cannot be written (on every rank: rank ``root`` its own error).
        """
        name = "fastlr.distributed.ShardedOptimizer.save"
        self._agree_root(name, root)
        sd = self._gathered(root)
        error = None
        if sd is not None:          # rank root
            try:
                _optim.write_checkpoint(sd, path)
            except Exception as e:      # any error: the other ranks must hear of it
                error = e
        # root's outcome goes to every rank (and no rank returns before the file is there)
        outcome = self.comm.bcast(None if error is None else
                                  f"{type(error).__name__}: {error}", root=root)
        if error is not None:
            raise error
        if outcome is not None:
            raise OSError(f"{name}: rank {root} could not write the checkpoint ({outcome})")

    def load(self, path: Union[str, os.PathLike[str]], strict: bool = True) -> None:
        """Collective: every rank reads ``path`` and takes its shard.

        ``path`` is written by :meth:`save` (on any number of ranks) or by a single-process
        optimizer; the rules of :meth:`load_gathered_state_dict` apply.

        Parameters
        ----------
        path : str or os.PathLike
            The checkpoint file.
        strict : bool, default True
            Whether differing param names are an error (else a ``UserWarning``).

        Raises
        ------
        TypeError
            If ``strict`` is not a bool (on every rank: the others a ``ValueError`` naming
            the rank).
        ValueError
            If any rank cannot read the file (that rank its own error, the others one
            naming it), or it does not fit this model; nothing is loaded on any rank. Also
            if the optimizer is closed.
        """
        name = "fastlr.distributed.ShardedOptimizer.load"
        self._check_open(name)
        error = sd = None
        try:
            strict = flag_arg(name, "strict", strict)
            sd = _optim.read_checkpoint(path, name)
        except Exception as e:      # any error: the other ranks must hear of it
            error = e
        self._agree_args(name, error)
        self._load_gathered(name, sd, strict)

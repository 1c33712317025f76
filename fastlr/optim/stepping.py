"""The step: one compiled call per update, what it reports, and its pure-NumPy twin."""

from __future__ import annotations

import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np

from fastlr import reference
from fastlr._core.engine import Engine, WidenFirst
from fastlr._kernels import get_num_threads as _default_threads
from fastlr.optim import fused16, int8
from fastlr.optim.front import split_flat
from fastlr.optim.groups import _OptimizerAttrs, by_name
from fastlr.optim.master import is_16bit_any_order

#: What ``step`` takes: a list of grads in param order, one flat grad array, or (named
#: params) a mapping of name -> grad.
Grads = Union[Sequence[np.ndarray], np.ndarray, Mapping[str, np.ndarray]]


#: ``grads[3]`` / ``params[3]`` in an engine message (not ``param_groups[...]``)
_INDEXED = re.compile(r"\b(grads|params)\[(\d+)\]")


class StepMixin(_OptimizerAttrs):
    """The step and what it exposes (part of :class:`Optimizer`)."""

    def step(self, grads: Grads) -> Optional[bool]:
        """Apply one update to every param from ``grads``, in one compiled call.

        Raises before touching anything when a grad or a scheduled hyperparameter is
        invalid; a message names the param as ``params[i] (param_groups[g]['params'][j],
        'name')`` and a grad as ``grads[i]`` (``grads['name']`` for a dict).

        With ``skip_nonfinite=True``, grads that hold a NaN or Inf skip the whole step
        (nothing is written, no counter moves, the schedules do not advance,
        :attr:`skipped_steps` goes up). Without the option non-finite grads propagate
        into params and state, as in torch. With ``max_grad_norm``, the grads are scaled by
        ``min(max_norm / (norm + 1e-6), 1)`` (torch's ``clip_grad_norm_``) inside the
        update; :attr:`last_grad_norm` is the norm.

        Parameters
        ----------
        grads : list of numpy.ndarray, numpy.ndarray or dict of str -> numpy.ndarray
            The grads, one per param with its shape and dtype: a list in param order, one
            1-D flat array of the params' total size when the params are views of one
            buffer (see :func:`fastlr.flat_buffer`), or, when the params are named, a dict
            of name -> grad with exactly the params' names, in any order. With a single
            param, one array of its shape is its grad, checked as the list ``[grad]`` is
            (its shape, dtype and memory order); any other array that is not 1-D is
            refused. :class:`fastlr.SGD`,
            :class:`fastlr.Adagrad` and :class:`fastlr.Adam` also take a
            :class:`fastlr.RowSparseGrad` for a 2-D param: its rows only are updated (see
            the docs' sparse page).

        Returns
        -------
        bool or None
            With ``skip_nonfinite=True``: True when the update was applied, False when it
            was skipped. Otherwise None.

        Raises
        ------
        TypeError
            If a grad has the wrong type, dtype or layout, or the grads are not a list,
            an array or (named params) a dict.
        ValueError
            If the number, shapes or names of the grads do not match the params (one
            array that is neither the single param's grad nor a 1-D flat buffer of the
            params' total size included), or a scheduled hyperparameter gives an invalid
            value.
        RuntimeError
            If another thread is stepping or changing this optimizer at the same time.

        Examples
        --------
        >>> w = np.ones(2)
        >>> opt = fastlr.SGD([w], lr=0.5)
        >>> opt.step([np.array([1.0, -1.0])])
        >>> w
        array([0.5, 1.5])
        >>> fastlr.SGD([w], lr=0.5, skip_nonfinite=True).step([np.array([np.nan, 0.0])])
        False
        """
        if not self._busy.acquire(blocking=False):
            # raise now: trying again (the other thread may just have let go) and going on
            # would step without the lock and then release a lock this call does not hold
            raise self._busy_error("step")
        given = grads
        try:
            if self._getter is not None and type(grads) is not list and \
                    isinstance(grads, dict):      # unnamed params: one attribute test
                grads = self._grads_list(grads, "step")
            if self._dirty:
                self._configure()
            # 16-bit params' masters: the engine reads their 16-bit grads and stores the
            # 16-bit params itself (set_users: Engine.published), as Adam/AdamW's fused
            # step (fastlr/optim/fused16.py) and the int8 front (Int8Step.published) do
            masters = getattr(self, "_masters_of", None) and \
                type(self._engine) is not fused16.Fused16Step
            if masters and isinstance(grads, np.ndarray) and is_16bit_any_order(grads.dtype):
                grads = self._split_flat16(grads)
            if masters and type(self._engine) is not Engine and \
                    type(self._engine) is not int8.Int8Step:
                grads = self._master_grads(grads)
            n_threads = self._n_threads if self._n_threads is not None else _default_threads()
            try:
                try:
                    applied = self._engine.step(grads, self._t, n_threads,
                                                self._max_grad_norm or 0.0,
                                                self._skip_nonfinite)
                except WidenFirst:  # (nothing written) a 16-bit grad not laid out as its
                    # param: every one widened into a float32 buffer laid out as its master
                    grads = self._master_grads(grads)
                    applied = self._engine.step(grads, self._t, n_threads,
                                                self._max_grad_norm or 0.0,
                                                self._skip_nonfinite)
            except TypeError:       # nothing written; a fastlr.RowSparseGrad takes this path
                from fastlr.optim.sparse_adam import has_row_sparse, lazy_step
                if not has_row_sparse(self, grads):
                    raise
                # the lazy kernels step the masters (Adam/AdamW's fused front's too) from
                # float32 grads; every master is then rounded into its param
                lazy_masters = bool(getattr(self, "_masters_of", None))
                if lazy_masters:
                    grads = self._master_grads(grads)
                applied = lazy_step(self, grads)
                if lazy_masters:
                    self._publish_masters()
                masters = False
            if applied:
                self._t += 1
                if masters:     # those the step did not store (Engine / Int8Step.published)
                    published = getattr(self._engine, "published", ())
                    if len(published) < len(self._masters_of):
                        self._publish_masters(published)
            else:
                self._skipped += 1
        except (TypeError, ValueError) as error:
            relabelled = self._relabelled(error, given)
            if relabelled is error:
                raise
            raise relabelled from None
        finally:
            self._busy.release()
        if applied:
            return True if self._skip_nonfinite else None
        return False

    def _grads_list(self, grads: Mapping[str, np.ndarray], what: str) -> Sequence[np.ndarray]:
        """A dict of name -> grad as the list in param order (see groups.by_name)."""
        return by_name(f"{self._name}.{what}", self._names, grads, "the grads",
                       f"it needs one grad per param name ({len(self._params)}). Nothing "
                       f"was updated", self._getter)

    def _relabelled(self, error, grads):
        """The engine's error with its params and grads named as the optim layer names them
        (the first mention of each index gets its place in the groups and its name; a dict's
        grads are named by key); any other error as it is."""
        if self._names is None and isinstance(grads, dict):
            try:
                self._grads_list(grads, "step")     # the error that explains it
            except TypeError as better:
                return better
        text = str(error)
        if type(error) not in (TypeError, ValueError) or not _INDEXED.search(text):
            return error
        names = self._names
        by_key = isinstance(grads, dict) and names is not None
        seen = set()

        def label(m):
            what, i = m.group(1), int(m.group(2))
            if i >= len(self._params):
                return m.group(0)
            head = f"grads[{names[i]!r}]" if what == "grads" and by_key else m.group(0)
            if i in seen:
                return head
            seen.add(i)
            g, j = self._where(i)
            where = [f"param_groups[{g}]['params'][{j}]"]
            if head.startswith("grads['"):
                where.insert(0, f"params[{i}]")
            elif names is not None:
                where.append(repr(names[i]))
            return f"{head} ({', '.join(where)})"

        return type(error)(_INDEXED.sub(label, text))

    def _windowed_step(self, grads: np.ndarray) -> "WindowedStep":
        """Begin one step on the flat ``grads`` to be applied window by window (private:
        fastlr.distributed's overlapped step); see :class:`WindowedStep`."""
        return WindowedStep(self, grads)

    @property
    def skipped_steps(self) -> int:
        """Steps skipped because a grad held a NaN or Inf (``skip_nonfinite=True``)."""
        return self._skipped

    @property
    def last_grad_norm(self) -> float:
        """The global L2 norm of the grads of the last step that clipped (NaN before)."""
        return self._engine.last_grad_norm

    @property
    def params(self) -> List[np.ndarray]:
        """Every param array, in order (the caller's arrays, updated in place; a 16-bit
        param's master weights are in ``param_groups``)."""
        if getattr(self, "_masters_of", None):
            return [p if self._user(p) is None else self._user(p) for p in self._params]
        return list(self._params)

    @property
    def steps(self) -> int:
        """Updates applied so far (the step count ``t`` that drives the schedules)."""
        return self._t

    @property
    def state(self) -> Dict[int, Dict[str, Any]]:
        """Per-param state, keyed by param index: ``{"step": updates applied to it, buffer
        name: the buffer (a live view)}``, plus the optimizer's scalar state (NAdam's
        ``mu_product``, a float)."""
        state = {i: dict(self._live_state(i), step=int(self._counts[i]))
                 for i in range(len(self._state))}
        if self._scalar:
            for i, st in state.items():
                st[self._scalar] = float(self._mu_product[i])
        return state

    def _live_state(self, i):
        """Param ``i``'s buffers as torch shows them: a lazily created one (torch's SGD
        momentum buffer) is absent until the param's first update that uses it."""
        st = self._state[i]
        if not self._optional_state or self._started[i]:
            return st
        return {k: v for k, v in st.items() if k not in self._optional_state}

    def _values_at(self, t, what="next_lr"):
        if self._dirty:     # reconfiguring swaps the engine's groups: not while a step runs
            with self._exclusive(what):
                self._configure()
        return self._engine.group_values(t)

    @property
    def last_lr(self) -> Optional[List[float]]:
        """The lr each group used in the last update (None before the first)."""
        if self._t == 0 or np.isnan(self._used[:, 0]).any():
            return None
        return [float(v) for v in self._used[:, 0]]

    @property
    def next_lr(self) -> List[float]:
        """The lr each group will use in the next update."""
        return [v["lr"] for v in self._values_at(self._t)]

    # ---- pure-NumPy twin of the step, for tests and demos ---------------------------------
    def step_reference(self, grads: Grads) -> Optional[bool]:
        """The same update as :meth:`step`, computed by :mod:`fastlr.reference` in Python.

        Slow; the oracle the tests hold :meth:`step` to.

        Parameters
        ----------
        grads : list of numpy.ndarray, numpy.ndarray or dict of str -> numpy.ndarray
            As for :meth:`step`.

        Returns
        -------
        bool or None
            As for :meth:`step`.

        Raises
        ------
        ValueError
            If the number of grads does not match the params.
        TypeError
            If a dict of grads is given for params without names.

        Examples
        --------
        >>> w = np.ones(2)
        >>> opt = fastlr.SGD([w], lr=0.5)
        >>> opt.step_reference([np.array([1.0, -1.0])])
        >>> w
        array([0.5, 1.5])
        """
        if isinstance(grads, dict):
            grads = self._grads_list(grads, "step_reference")
        if getattr(self, "_masters_of", None):
            if isinstance(grads, np.ndarray):       # one array: per param, then widened
                grads = self._split_flat16(grads, "step_reference") \
                    if is_16bit_any_order(grads.dtype) else \
                    split_flat(self._params, grads, f"{self._name}.step_reference", False)
            applied = StepMixin._step_reference(self, self._master_grads(grads,
                                                                         "step_reference"))
            if applied is not False:
                self._publish_masters()
            return applied
        return StepMixin._step_reference(self, grads)

    def _step_reference(self, grads):
        if isinstance(grads, np.ndarray):   # the one param's grad, or a 1-D flat buffer
            # (each param's part in its memory order)
            grads = split_flat(self._params, grads, f"{self._name}.step_reference", False)
        if len(grads) != len(self._params):
            raise ValueError(f"{self._name}.step_reference: got {len(grads)} grads for "
                             f"{len(self._params)} params")
        from fastlr.optim.sparse_adam import has_row_sparse, lazy_step
        if has_row_sparse(self, grads):     # fastlr.RowSparseGrad: the lazy update's twin
            self._t += lazy_step(self, grads, reference=True)
            return True if self._skip_nonfinite else None
        direct = getattr(self, "_master_weights", None) is False and \
            getattr(self, "_fused16", None) is not None      # 16-bit params, no masters
        if direct:
            grads = fused16.check_grads(self, grads, "step_reference")
        for i, (g, p) in enumerate(zip(grads, self._params)):
            if np.shape(g) != p.shape:      # before anything is written, as the step
                raise ValueError(f"{self._name}.step_reference: grads[{i}] has shape "
                                 f"{np.shape(g)} but params[{i}] has shape {p.shape}")
        grads = [np.asarray(g) for g in grads]
        if self._skip_nonfinite and not all(np.isfinite(g).all() for g in grads):
            self._skipped += 1
            return False
        if self._max_grad_norm is not None:
            norm = float(np.sqrt(sum(np.sum(np.square(g, dtype=np.float64)) for g in grads)))
            coef = self._max_grad_norm / (norm + 1e-6)
            scale = 1.0 if coef >= 1.0 else coef
            if scale != 1.0:        # (a 16-bit grad widened first, as the step does)
                grads = [g * g.dtype.type(scale) if g.dtype in (np.float32, np.float64)
                         else g.astype(np.float32) * np.float32(scale) for g in grads]
        values = self._values_at(self._t, "step_reference")
        if self._state_dtype == "int8" or direct:
            if direct:
                self._fused16.update(self, grads, values, twin=True)
            else:
                int8.run(self, grads, values, reference.adam_int8_state)
            self._t += 1
            return True if self._skip_nonfinite else None
        index = 0
        fn = getattr(reference, self._kernel + ("_bf16_state" if self._state_dtype == "bfloat16"
                                                else ""))
        for g, (group, v) in enumerate(zip(self.param_groups, values)):
            for p in group["params"]:
                kwargs = self._reference_kwargs(group, v, index)
                out = fn(p, grads[index], **kwargs)
                if self._scalar:
                    self._mu_product[index] = out
                index += 1
            self._used[g] = [v["lr"], v["momentum"], v["beta1"], v["weight_decay"]]
        self._counts += 1
        self._t += 1
        return True if self._skip_nonfinite else None


def supports_windows(optimizer: Any) -> bool:
    """Whether ``optimizer`` can step in element windows (WindowedStep): a family of the
    step engine, element-wise, with its own params (no 16-bit masters, no
    master_weights=False, no sparse or layer-wise step) and its state in the params' dtype
    or bfloat16 (int8 state's engine is :class:`fastlr.optim.int8.Int8Step`: blocks and a
    kernel call per param)."""
    from fastlr._core.engine import Engine
    return (type(getattr(optimizer, "_engine", None)) is Engine
            and type(optimizer).step is StepMixin.step
            and not getattr(optimizer, "_masters_of", None)
            and getattr(optimizer, "_master_weights", None) is not False)


class WindowedStep:
    """One step of an optimizer applied in element windows.

    Construction checks ``grads`` (one flat array over every param, in param order),
    evaluates the schedules and derives the step's coefficients, like the start of
    ``step``; :meth:`run` then updates elements ``[lo, hi)`` of the params' concatenation,
    and :meth:`end` counts the step once every element was updated exactly once. Any cover
    of the elements by windows gives the bits of one ``step`` (element-wise updates).
    The optimizer's lock is held from construction to :meth:`end` (or :meth:`abandon`,
    after which the params hold a partial update: the caller's error path).
    """

    def __init__(self, optimizer: Any, grads: np.ndarray) -> None:
        if not supports_windows(optimizer):
            why = (" (state_dtype='int8': its blocks and kernel calls are per param)"
                   if getattr(optimizer, "_state_dtype", "float32") == "int8" else
                   " (master_weights=False: its kernel calls are per param)"
                   if getattr(optimizer, "_master_weights", None) is False
                   else "")
            raise TypeError(f"{type(optimizer).__name__}: this optimizer cannot step in "
                            f"windows{why}")
        if optimizer._max_grad_norm is not None or optimizer._skip_nonfinite:
            # both need every grad before the first window (the caller clips or scans)
            raise ValueError(f"{optimizer._name}: a step in windows cannot clip "
                             f"(max_grad_norm) or skip non-finite grads (skip_nonfinite); "
                             f"set them on the caller (e.g. ShardedOptimizer), not here")
        if not optimizer._busy.acquire(blocking=False):
            raise optimizer._busy_error("step")
        try:
            if optimizer._dirty:
                optimizer._configure()
            self._engine = optimizer._engine
            self._engine.begin_windows(grads, optimizer._t)
        except BaseException:
            optimizer._busy.release()
            raise
        self._optimizer = optimizer
        self._grads = grads            # the engine holds its pointers until end()
        self._n_threads = (optimizer._n_threads if optimizer._n_threads is not None
                           else _default_threads())
        self.size = self._engine.total_size

    def run(self, lo: int, hi: int) -> None:
        """Update elements ``[lo, hi)`` of the concatenated params."""
        self._check_open()
        self._engine.run_window(lo, hi, self._n_threads)

    def _check_open(self):
        if self._optimizer is None:
            raise RuntimeError("this windowed step has ended (or was abandoned)")

    def end(self) -> None:
        """Count the step (the optimizer's ``steps``, per-param counts, scalar state)."""
        self._check_open()
        try:
            self._engine.end_windows()
            self._optimizer._t += 1
        finally:
            self._release()

    def abandon(self) -> None:
        """Give up the step (nothing is counted; windows already run stay written)."""
        if self._optimizer is not None:
            self._engine.abandon_windows()
        self._release()

    def _release(self):
        if self._optimizer is not None:
            self._optimizer._busy.release()
            self._optimizer = None
            self._grads = None

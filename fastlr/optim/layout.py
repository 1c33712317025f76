"""Memory layout: spans of adjacent params, one block per state buffer and span, and the
compiled engine configured with them."""

from __future__ import annotations

import numbers
from typing import List, Sequence, Tuple, Union

import numpy as np
from numpy.typing import DTypeLike

from fastlr._core.args import INT_MAX, int_arg
from fastlr._core.engine import Engine
from fastlr.kernels import zeros_like_many
from fastlr.optim import int8
from fastlr.optim import fused16
from fastlr.optim.direct16 import Direct16Step
from fastlr.optim.front import regions
from fastlr.optim.groups import _OptimizerAttrs
from fastlr.optim.master import is_16bit
from fastlr.schedules import as_schedule


def flat_buffer(shapes: Sequence[Union[int, Sequence[int]]],
                dtype: DTypeLike = np.float32) -> Tuple[np.ndarray, List[np.ndarray]]:
    """One zero-filled contiguous buffer and C-contiguous views of it, one per shape.

    Use it for params (the optimizer then updates all of them as one span) and for grads
    (``opt.step(flat_grad)`` or ``opt.step(grad_views)``).

    Parameters
    ----------
    shapes : sequence of tuple of int (or int)
        The views' shapes, in order (an int is a 1-d shape).
    dtype : numpy.float32, numpy.float64, numpy.float16 or ml_dtypes.bfloat16, default float32
        The buffer's dtype (16-bit: params kept with float32 master weights, or stepped
        in place with ``master_weights=False``, and their grads).

    Returns
    -------
    flat : numpy.ndarray
        The 1-d buffer, of the total size.
    views : list of numpy.ndarray
        Views of ``flat``, one per shape, adjacent in order.

    Raises
    ------
    TypeError
        If ``dtype`` is not one of those or ``shapes`` is not a list of shapes.
    ValueError
        If a dimension is negative or too large.

    Examples
    --------
    >>> flat, (w, b) = flat_buffer([(2, 3), (3,)])
    >>> flat.shape, w.shape, b.shape, np.shares_memory(flat, b)
    ((9,), (2, 3), (3,), True)
    """
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64) and not is_16bit(dtype):
        raise TypeError(f"fastlr.flat_buffer: dtype must be float32, float64, float16 or "
                        f"ml_dtypes.bfloat16 (native byte order), got {dtype}")
    fn = "fastlr.flat_buffer"
    try:
        shapes = list(shapes)
    except TypeError:
        raise TypeError(f"{fn}: shapes must be a list of shapes (tuples of ints), got "
                        f"{shapes!r:.80}") from None
    shapes = [tuple(int_arg(fn, f"shapes[{i}]", d, 0, INT_MAX) for d in
                    (np.atleast_1d(s).tolist() if isinstance(s, np.ndarray) else
                     s if isinstance(s, (tuple, list)) else (s,)))
              for i, s in enumerate(shapes)]
    sizes = [int(np.prod(s, dtype=np.int64)) for s in shapes]
    flat = np.zeros(sum(sizes), dtype=dtype)
    views, offset = [], 0
    for shape, n in zip(shapes, sizes):
        views.append(flat[offset:offset + n].reshape(shape))
        offset += n
    return flat, views


class Layout(list):
    """The span structure the state blocks were made for: ``(first param, params, group,
    state names)`` per span, with what it was derived from, so that a configure after a
    hyperparameter write learns whether it still holds without visiting every param.

    Attributes
    ----------
    adjacent : numpy.ndarray of bool
        Per param after the first: whether it lies right after the one before it in
        memory, in the same group (fixed once the params are added; they only grow).
    joins : numpy.ndarray of bool
        Per param after the first: whether it continues the span of the one before it
        (adjacent, and the same update count, first-use flag and scalar state).
    names : list of tuple of str
        Per group, its state buffers.
    """

    __slots__ = ("adjacent", "joins", "names")


class LayoutMixin(_OptimizerAttrs):
    """Spans, state buffers and the engine's configuration (part of :class:`Optimizer`)."""

    def _state_names(self, group):
        raise NotImplementedError

    def _resolved(self, group):
        """The group's hyperparameters as the engine wants them."""
        out = {}
        for key, value in group.items():
            if key == "params" or key == "param_names":
                continue
            if key in self._pairs:                   # betas -> beta1, beta2
                for name, part in zip(self._pairs[key], value):
                    out[name] = (self._source(part) if name in self._schedulable
                                 else float(part))
            elif key in self._schedulable:
                out[key] = self._source(value)
            elif key in self._flags:
                out[key] = bool(value)
            else:
                out[key] = float(value)
        return out

    @staticmethod
    def _source(value):
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            return float(value)
        return as_schedule(value)

    def _configure(self):
        old = self._layout
        names = [self._state_names(group) for group in self.param_groups]
        adjacent = self._adjacency(old)
        counts, started, scalar = self._counts, self._started, self._mu_product
        joins = adjacent & (counts[1:] == counts[:-1]) & (started[1:] == started[:-1]) & \
            (scalar[1:] == scalar[:-1])
        groups = [self._resolved(g) for g in self.param_groups]
        if old is not None and old.names == names and np.array_equal(old.joins, joins):
            # same spans and buffers: new hyperparameters only, state stays where it is
            self._engine.set_groups(groups)
        else:
            layout, index = Layout(), 0
            layout.adjacent, layout.joins, layout.names = adjacent, joins, names
            for g, group in enumerate(self.param_groups):
                n = len(group["params"])
                # a span starts at the group's first param and at each that does not join
                cuts = [index, *(index + 1 + np.flatnonzero(
                    ~joins[index:index + n - 1])).tolist(), index + n]
                layout.extend((a, b - a, g, names[g]) for a, b in zip(cuts, cuts[1:]))
                index += n
            spans, int8_blocks = [], []
            front = getattr(self, "_fused16", None)
            if front is None and getattr(self, "_masters_of", None) and self._fused16_ok():
                front = self._fused16 = fused16.Fused16Step(self, self._engine)
            if front is not None and not isinstance(front, Direct16Step):
                # Adam/AdamW: 16-bit params in one pass per param?
                use = front if fused16.wanted(self) else front._engine
                if use is front and self._engine is not front:
                    front.last_grad_norm = self._engine.last_grad_norm
                self._engine = use
            for first, n, g, names in layout:
                if self._state_dtype == "int8":
                    # per-param codes and scales, stepped by the int8 kernel (fastlr/optim/
                    # int8.py): the engine only checks and counts, so it gets no state
                    int8_blocks += int8.span_state(self, first, self._params[first:first + n],
                                                   names)
                    blocks = {}
                else:
                    blocks = self._span_state(first, self._params[first:first + n], names,
                                              self._state_fill(self.param_groups[g]))
                slots = tuple(blocks.get(name) for name in self._slots)
                spans.append((first, n, g, slots))
            if self._state_dtype == "int8":
                self._engine.regions = regions(int8_blocks)
            self._spans = spans
            self._layout = layout
            if isinstance(self._engine, fused16.Fused16Step):
                # kernel calls per param (fastlr/optim/fused16.py): the engine keeps the
                # groups only (its cores run float32/float64 params); the front checks the
                # grads against the params, their 16-bit arrays and the state
                users = [u for u in map(self._user, self._params) if u is not None]
                self._engine.regions = regions(
                    self._params + users + int8_blocks +
                    [b for *_, slots in spans for b in slots if b is not None])
                self._engine.configure([], [], groups, self._counts, self._started,
                                       self._used, self._mu_product, self._lr_scale)
            else:
                self._engine.configure(self._params, spans, groups, self._counts,
                                       self._started, self._used, self._mu_product,
                                       self._lr_scale)
                if isinstance(self._fused16, Direct16Step):
                    # (16-bit params stepped by the engine: the twin's checks, step_reference)
                    self._fused16.regions = regions(
                        self._params + [b for *_, slots in spans for b in slots
                                        if b is not None])
                if getattr(self, "_masters_of", None) and type(self._engine) in (
                        Engine, int8.Int8Step):
                    # 16-bit params with masters: the engine reads their 16-bit grads and
                    # stores them in the same pass (fastlr/_core/master16.pxd); int8
                    # state's engine checks them (its kernel reads them, int8.run)
                    engine = self._engine if type(self._engine) is Engine else \
                        self._engine._engine
                    engine.set_users([self._user(p) for p in self._params])
        self._dirty = False

    def _adjacency(self, layout):
        """:attr:`Layout.adjacent` for the params now: ``layout``'s while it covers them
        all (the params only grow: add_param_group), else found again."""
        n = len(self._params)
        if layout is not None and len(layout.adjacent) == max(n - 1, 0):
            return layout.adjacent
        adjacent, index = np.zeros(max(n - 1, 0), dtype=bool), 0
        for group in self.param_groups:
            params = group["params"]
            for k in range(1, len(params)):
                adjacent[index + k - 1] = self._adjacent(params[k - 1], params[k])
            index += len(params)
        return adjacent

    @staticmethod
    def _adjacent(a, b):
        return (a.dtype == b.dtype and a.size and b.size
                and a.__array_interface__["data"][0] + a.nbytes
                == b.__array_interface__["data"][0])

    def _state_fill(self, group):
        """Initial values of state buffers that do not start at zero: {name: value}."""
        return {}

    def _buffer_dtype(self, p):
        """The dtype of param ``p``'s state buffers."""
        # bfloat16 state: bits in uint16 (the engine picks the bfloat16 core for them)
        # 16-bit params (master_weights=False): float32 state
        return np.uint16 if self._state_dtype == "bfloat16" else \
            np.float32 if is_16bit(p.dtype) else p.dtype

    def _span_state(self, first, params, names, fill):
        """One contiguous block per state buffer for a span, viewed per param; existing
        buffers are kept (copied into the new block). Returns {name: block}."""
        blocks = {}
        sizes = [p.size for p in params]
        # one allocation for all the span's buffers, staggered when large (see
        # fastlr.kernels.STAGGER_BYTES)
        fresh = zeros_like_many(len(names), (sum(sizes),), self._buffer_dtype(params[0]))
        for name, block in zip(names, fresh):
            offset = 0
            for j, (p, n) in enumerate(zip(params, sizes)):
                order = "F" if (p.flags.f_contiguous and not p.flags.c_contiguous) else "C"
                view = block[offset:offset + n].reshape(p.shape, order=order)
                old = self._state[first + j].get(name)
                if old is not None:
                    view[...] = old
                elif name in fill:
                    view[...] = fill[name]
                self._state[first + j][name] = view
                offset += n
            blocks[name] = block
        for j in range(len(params)):
            for name in list(self._state[first + j]):
                if name not in names:
                    del self._state[first + j][name]
        return blocks

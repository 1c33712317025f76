"""L-BFGS with torch.optim.LBFGS's semantics, in NumPy (:class:`LBFGS`).

The work per iteration is a handful of dot products and axpys over one flat vector, which
NumPy (its BLAS) already does at memory speed, and the closure (the model's loss and
gradient) dominates the cost; so there is no compiled kernel, no NumPy twin separate from
the class (the class is NumPy) and no ``fastlr.compat.torch`` bridge (``torch.optim.LBFGS``
already runs on torch tensors; nothing here would be faster). The tests compare the
iterates with torch's directly.
"""

from __future__ import annotations

import numbers
import operator
import threading
import uuid
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np

from fastlr._core.args import INT_MAX, NONNEG, checked_real, choice_arg, flag_arg, int_arg
from fastlr.optim.checkpoint import (CheckpointMixin, StateFileMixin, _hyper_diff,
                                     _names_diff, _same)
from fastlr.optim.groups import (GroupsMixin, ParamGroup, _FIXED_KEYS, _nonneg_int, _some,
                                 by_name, groups_arg, split_named)

__all__ = ["LBFGS"]

_FORMAT = "fastlr-lbfgs-1"
_HYPERS = ("lr", "max_iter", "max_eval", "tolerance_grad", "tolerance_change",
           "history_size", "line_search_fn")
#: the state's arrays of one flat vector each, and its lists of them
_VECTORS = ("d", "prev_flat_grad")
_HISTORY = ("old_dirs", "old_stps")
#: the state's scalars (None before the first iteration)
_SCALARS = ("t", "H_diag", "prev_loss")


def _cubic_interpolate(x1, f1, g1, x2, f2, g2, bounds=None):
    """The minimizer of the cubic through two points with values and slopes, clamped.

    torch's ``_cubic_interpolate`` (from torch/optim's ``polyinterp.lua``; Nocedal & Wright,
    *Numerical Optimization*, 2nd ed., eq. 3.59): with ``x2`` the farther point,
    ``d1 = g1 + g2 - 3 (f1 - f2) / (x1 - x2)``, ``d2 = sqrt(d1^2 - g1 g2)``,
    ``x = x2 - (x2 - x1) (g2 + d2 - d1) / (g2 - g1 + 2 d2)``, clamped to ``bounds`` (default:
    the interval between the points); the interval's midpoint when ``d1^2 < g1 g2``.

    The arguments are Python floats or NumPy scalars of the params' dtype, exactly where
    torch has Python floats or 0-d tensors, so NumPy's promotion (NEP 50) computes each
    operation in torch's precision.
    """
    if bounds is not None:
        xmin_bound, xmax_bound = bounds
    else:
        xmin_bound, xmax_bound = (x1, x2) if x1 <= x2 else (x2, x1)
    d1 = g1 + g2 - 3 * (f1 - f2) / (x1 - x2)
    d2_square = d1 ** 2 - g1 * g2
    if d2_square >= 0:
        d2 = np.sqrt(d2_square)
        if x1 <= x2:
            min_pos = x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2 * d2))
        else:
            min_pos = x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2 * d2))
        return min(max(min_pos, xmin_bound), xmax_bound)
    return (xmin_bound + xmax_bound) / 2.0


def _strong_wolfe(obj_func, x, t, d, f, g, gtd, c1=1e-4, c2=0.9, tolerance_change=1e-9,
                  max_ls=25):
    """A step length ``t`` along ``d`` satisfying the strong Wolfe conditions.

    torch's ``_strong_wolfe`` (from torch/optim's ``lswolfe.lua``): Nocedal & Wright,
    *Numerical Optimization*, 2nd ed., Algorithm 3.5 (bracketing: grow ``t`` by cubic
    interpolation within ``[t + 0.01 (t - t_prev), 10 t]`` until the sufficient-decrease
    condition ``f(x + t d) <= f + c1 t gtd`` fails, the loss stops decreasing, or the slope
    turns non-negative) and Algorithm 3.6 (zoom: cubic interpolation inside the bracket, kept
    0.1 of the bracket away from its ends, until ``|g(x + t d) . d| <= -c2 gtd``), at most
    ``max_ls`` evaluations after the first, stopping when the bracket is shorter than
    ``tolerance_change / max|d|``.

    ``obj_func(x, t, d)`` returns the loss (a float) and the flat grad at ``x + t d``.
    Returns ``(loss, flat_grad, t, evaluations)`` at the accepted point.
    """
    d_norm = np.abs(d).max()
    f_new, g_new = obj_func(x, t, d)
    ls_func_evals = 1
    gtd_new = g_new.dot(d)

    # bracket an interval containing a point satisfying the Wolfe criteria
    t_prev, f_prev, g_prev, gtd_prev = 0, f, g, gtd
    done = False
    ls_iter = 0
    while ls_iter < max_ls:
        if f_new > (f + c1 * t * gtd) or (ls_iter > 1 and f_new >= f_prev):
            bracket, bracket_f = [t_prev, t], [f_prev, f_new]
            bracket_g, bracket_gtd = [g_prev, g_new], [gtd_prev, gtd_new]
            break
        if abs(gtd_new) <= -c2 * gtd:
            bracket, bracket_f, bracket_g = [t], [f_new], [g_new]
            done = True
            break
        if gtd_new >= 0:
            bracket, bracket_f = [t_prev, t], [f_prev, f_new]
            bracket_g, bracket_gtd = [g_prev, g_new], [gtd_prev, gtd_new]
            break
        # interpolate
        min_step = t + 0.01 * (t - t_prev)
        max_step = t * 10
        tmp = t
        t = _cubic_interpolate(t_prev, f_prev, gtd_prev, t, f_new, gtd_new,
                               bounds=(min_step, max_step))
        # next step
        t_prev, f_prev, g_prev, gtd_prev = tmp, f_new, g_new, gtd_new
        f_new, g_new = obj_func(x, t, d)
        ls_func_evals += 1
        gtd_new = g_new.dot(d)
        ls_iter += 1

    if ls_iter == max_ls:       # no bracket within the evaluations allowed
        bracket, bracket_f, bracket_g = [0, t], [f, f_new], [g, g_new]

    # zoom: shrink the bracket around a point satisfying the criteria
    insuf_progress = False
    low_pos, high_pos = (0, 1) if bracket_f[0] <= bracket_f[-1] else (1, 0)
    while not done and ls_iter < max_ls:
        if abs(bracket[1] - bracket[0]) * d_norm < tolerance_change:
            break
        t = _cubic_interpolate(bracket[0], bracket_f[0], bracket_gtd[0],
                               bracket[1], bracket_f[1], bracket_gtd[1])
        # too close to an end of the bracket (twice in a row, or outside it): move 0.1 of
        # the bracket's length away from the nearer end
        eps = 0.1 * (max(bracket) - min(bracket))
        if min(max(bracket) - t, t - min(bracket)) < eps:
            if insuf_progress or t >= max(bracket) or t <= min(bracket):
                if abs(t - max(bracket)) < abs(t - min(bracket)):
                    t = max(bracket) - eps
                else:
                    t = min(bracket) + eps
                insuf_progress = False
            else:
                insuf_progress = True
        else:
            insuf_progress = False

        f_new, g_new = obj_func(x, t, d)
        ls_func_evals += 1
        gtd_new = g_new.dot(d)
        ls_iter += 1

        if f_new > (f + c1 * t * gtd) or f_new >= bracket_f[low_pos]:
            # no sufficient decrease, or not below the lowest point: the new high end
            bracket[high_pos], bracket_f[high_pos] = t, f_new
            bracket_g[high_pos], bracket_gtd[high_pos] = g_new, gtd_new
            low_pos, high_pos = (0, 1) if bracket_f[0] <= bracket_f[1] else (1, 0)
        else:
            if abs(gtd_new) <= -c2 * gtd:
                done = True             # the strong Wolfe conditions hold
            elif gtd_new * (bracket[high_pos] - bracket[low_pos]) >= 0:
                # the old high end becomes the low end
                bracket[high_pos], bracket_f[high_pos] = bracket[low_pos], bracket_f[low_pos]
                bracket_g[high_pos] = bracket_g[low_pos]
                bracket_gtd[high_pos] = bracket_gtd[low_pos]
            # the new point becomes the low end
            bracket[low_pos], bracket_f[low_pos] = t, f_new
            bracket_g[low_pos], bracket_gtd[low_pos] = g_new, gtd_new

    return bracket_f[low_pos], bracket_g[low_pos], bracket[low_pos], ls_func_evals


def _axpy(x, a, y, tmp=None):
    """``x + a * y`` in ``x``'s dtype (``a`` rounded to it), as torch's
    ``x.add(y, alpha=a)``; written into ``x`` when ``tmp`` (a scratch array like ``y``) is
    given, else a new array.

    torch's CPU kernel fuses the multiply and the add (one rounding); NumPy rounds the
    product and the sum: about an ulp per element, which is also the size of the difference
    between MKL's and NumPy's summation orders in the dot products.
    """
    if tmp is None:
        return x + y * a
    np.multiply(y, a, out=tmp)
    x += tmp
    return x


def _same_hyper(mine, saved):
    """Whether a recorded hyperparameter equals the optimizer's (a number, None or a
    string: ``line_search_fn``)."""
    if isinstance(mine, str) or isinstance(saved, str) or mine is None or saved is None:
        return type(mine) is type(saved) and mine == saved
    return _same(mine, saved)


def _fresh_state() -> Dict[str, Any]:
    state: Dict[str, Any] = {"func_evals": 0, "n_iter": 0}
    state.update((k, None) for k in _VECTORS + _SCALARS)
    state.update((k, []) for k in _HISTORY + ("ro",))
    state["al"] = None
    return state


class LBFGS(StateFileMixin):
    """L-BFGS (torch.optim.LBFGS 2.13's algorithm, names and defaults), in NumPy.

    Each :meth:`step` runs up to ``max_iter`` iterations of limited-memory BFGS on the
    loss and gradient that ``closure`` returns, updating the params in place. With
    ``g`` the flat gradient, ``s_i = x_{i+1} - x_i`` and ``y_i = g_{i+1} - g_i`` the last
    ``history_size`` pairs with ``y_i . s_i > 1e-10`` and ``rho_i = 1 / (y_i . s_i)``, the
    direction is ``d = -H g`` by the two-loop recursion (Nocedal & Wright, *Numerical
    Optimization*, Algorithm 7.4) with ``H_0 = (y . s) / (y . y)`` of the newest pair; the
    very first iteration is steepest descent ``d = -g`` with step
    ``t = lr * min(1, 1 / sum|g|)``, later ones start from ``t = lr``. Without a line search
    the params move by ``t d``; with ``line_search_fn="strong_wolfe"``, ``t`` is chosen to
    satisfy the strong Wolfe conditions (``c1 = 1e-4``, ``c2 = 0.9``; Nocedal & Wright
    Algorithms 3.5 and 3.6, as torch). A step stops after ``max_iter`` iterations or
    ``max_eval`` closure calls, when ``max|g| <= tolerance_grad``, when the directional
    derivative ``g . d > -tolerance_change``, when ``max|t d| <= tolerance_change``, or
    when the loss changes by less than ``tolerance_change``.

    The arithmetic is torch's, operation by operation, in the params' dtype (dot products,
    axpys; scalars promoted as torch promotes them), so the iterates agree with torch's to
    rounding (float64: about 1e-13 relative on smooth problems). Not bit for bit: torch
    fuses its multiply-adds and MKL sums its dot products in its own order. There is no ``fastlr.compat.torch``
    bridge: ``torch.optim.LBFGS`` already runs on tensors and the closure dominates the
    cost.

    Parameters
    ----------
    params : array, list of arrays, dict of str -> array, list of (str, array) pairs, or one
        group dict
        The params, float32 or float64 (all of one dtype), C- or F-contiguous, writeable;
        updated in place. One group only (as torch): a group dict may override the
        hyperparameters.
    lr : float, default 1
        Learning rate, ``>= 0``: the step length's scale (the full step when no line
        search is used).
    max_iter : int, default 20
        Iterations per :meth:`step`, ``>= 1``.
    max_eval : int, optional
        Closure calls per :meth:`step`, ``>= 1``; default ``max_iter * 5 // 4``.
    tolerance_grad : float, default 1e-7
        Stop when ``max|g| <= tolerance_grad`` (same units as the gradient), ``>= 0``.
    tolerance_change : float, default 1e-9
        Stop when the loss, the directional derivative or the param change ``max|t d|``
        falls below it, ``>= 0``.
    history_size : int, default 100
        Correction pairs kept, ``>= 1`` (memory: ``2 * history_size`` flat vectors).
    line_search_fn : {None, "strong_wolfe"}, default None
        The line search.

    Attributes
    ----------
    param_groups : list of dict
        One group (a dict like torch's, writes checked): ``params``, ``param_names`` when
        named, and the hyperparameters.
    state : dict
        torch's state: ``func_evals`` and ``n_iter`` (totals over all steps), ``d``, ``t``,
        ``old_dirs``, ``old_stps``, ``ro``, ``H_diag``, ``prev_flat_grad``, ``prev_loss``,
        ``al`` (flat vectors in the params' dtype, C order of each param, params in order).
        Read it; restore it with :meth:`load_state_dict`.

    Raises
    ------
    TypeError
        If a param or a hyperparameter has the wrong type, or the params mix dtypes.
    ValueError
        If a hyperparameter is out of range, the params come in more than one group, or
        params overlap in memory.

    Notes
    -----
    Where fastlr is stricter than torch: the hyperparameters are checked at construction
    (torch checks only ``lr``, and an unknown ``line_search_fn`` fails in its ``step``); a
    failing closure leaves the params and the state as they were before the step (torch
    leaves them mid-step); lowering ``history_size`` between steps trims the history to the
    new size (torch drops one pair per iteration only when the history is exactly full, so
    its history keeps its old length and grows).

    Examples
    --------
    Least squares ``0.5 |A w - b|^2``: the closure returns the loss and the grads.

    >>> import numpy as np, fastlr
    >>> A = np.array([[3.0, 1.0], [1.0, 2.0]]); b = np.array([1.0, 1.0])
    >>> w = np.zeros(2)
    >>> def closure():
    ...     r = A @ w - b
    ...     return 0.5 * float(r @ r), [A.T @ r]
    >>> opt = fastlr.LBFGS([w], line_search_fn="strong_wolfe")
    >>> opt.step(closure)
    1.0
    >>> np.allclose(w, np.linalg.solve(A, b))
    True
    """

    def __init__(self, params: Any, lr: float = 1, max_iter: int = 20,
                 max_eval: Optional[int] = None, tolerance_grad: float = 1e-7,
                 tolerance_change: float = 1e-9, history_size: int = 100,
                 line_search_fn: Optional[str] = None) -> None:
        name = self._name
        self._busy = threading.Lock()
        self.param_groups: List[ParamGroup] = []
        self._names: Optional[List[str]] = None
        groups = groups_arg(name, params)
        if len(groups) != 1:
            raise ValueError(f"{name}: LBFGS doesn't support per-parameter options (parameter "
                             f"groups): params has {len(groups)} groups, expected one")
        group = groups[0]
        if not isinstance(group, dict) or "params" not in group:
            raise TypeError(f"{name}: a param group must be a dict with a 'params' entry")
        arrays, names = split_named(name, group["params"], "params")
        if "param_names" in group:
            given = group["param_names"]
            if names is not None or not isinstance(given, (list, tuple)) or \
                    len(given) != len(arrays) or not all(isinstance(k, str) for k in given):
                raise ValueError(f"{name}: param_groups[0]['param_names'] must be a list of "
                                 f"{len(arrays)} names beside a list of arrays")
            names = list(given)
        for i, p in enumerate(arrays):
            self._check_param(self._label(i, names, 0, i), p)
        dtypes = {p.dtype for p in arrays}
        if len(dtypes) > 1:
            first = next(i for i, p in enumerate(arrays) if p.dtype != arrays[0].dtype)
            raise TypeError(f"{name}: all params must have one dtype (L-BFGS works on one "
                            f"flat vector), got {arrays[0].dtype} for "
                            f"{self._label(0, names, 0, 0)} and {arrays[first].dtype} for "
                            f"{self._label(first, names, 0, first)}")
        self._check_overlap(arrays, names)
        defaults = {"lr": lr, "max_iter": max_iter, "max_eval": max_eval,
                    "tolerance_grad": tolerance_grad, "tolerance_change": tolerance_change,
                    "history_size": history_size, "line_search_fn": line_search_fn}
        hypers = {k: self._check_hyper(k, v, "") for k, v in defaults.items()}
        overrides = {k: self._check_hyper(k, v, "param_groups[0]")
                     for k, v in group.items() if k not in _FIXED_KEYS}
        if hypers["max_eval"] is None:
            hypers["max_eval"] = hypers["max_iter"] * 5 // 4
        self.defaults: Dict[str, Any] = dict(hypers)
        hypers.update(overrides)
        if hypers["max_eval"] is None:
            hypers["max_eval"] = hypers["max_iter"] * 5 // 4
        full = ParamGroup()
        for k in _HYPERS:
            dict.__setitem__(full, k, hypers[k])
        full._set_params(name, 0, arrays, names)
        full._owner = self      # type: ignore[attr-defined]  # (a slot)
        self.param_groups.append(full)
        self._params: List[np.ndarray] = list(arrays)
        self._names = names
        self._getter = None if names is None else operator.itemgetter(*names)
        self._dtype = arrays[0].dtype
        self._sizes = [p.size for p in arrays]
        self._offsets = np.cumsum([0] + self._sizes).tolist()
        self._numel = self._offsets[-1]
        self._dirty = False
        self._snapshot_id = uuid.uuid4().hex
        self.state: Dict[str, Any] = _fresh_state()

    # the param checks, labels, thread guard and checkpoint refusal of the other optimizers
    # (they use only the attributes set above: _name, _names, param_groups, _busy)
    _check_param: Any = GroupsMixin._check_param
    _check_overlap: Any = GroupsMixin._check_overlap
    _label: Any = GroupsMixin._label
    _where: Any = GroupsMixin._where
    _exclusive: Any = GroupsMixin._exclusive
    _busy_error: Any = GroupsMixin._busy_error
    _refuse_or_warn: Any = CheckpointMixin._refuse_or_warn

    @property
    def _name(self) -> str:
        return f"fastlr.{type(self).__name__}"

    def _check_hyper(self, key, value, where):
        """Type and range of one hyperparameter, before it is stored."""
        fn = self._name
        label = f"{where}[{key!r}]" if where else key
        if isinstance(value, np.ndarray) and value.ndim == 0:
            value = value.item()
        if key in ("lr", "tolerance_grad", "tolerance_change"):
            return checked_real(fn, label, value, NONNEG)
        if key in ("max_iter", "history_size"):
            return int(int_arg(fn, label, value, 1, INT_MAX))
        if key == "max_eval":
            return None if value is None else int(int_arg(fn, label, value, 1, INT_MAX))
        if key == "line_search_fn":
            if value is not None:
                choice_arg(fn, label, value, ("strong_wolfe",))
            return value
        raise ValueError(f"{fn}: unknown hyperparameter {key!r}; expected one of "
                         f"{', '.join(sorted(_HYPERS))}")

    def _validate_group(self, group):
        """(ParamGroup's hook.) A write of ``max_eval = None`` is torch's default again."""
        if group.get("max_eval", 0) is None:
            dict.__setitem__(group, "max_eval", group["max_iter"] * 5 // 4)

    # ------------------------------------------------------------------------------------
    # the flat vector
    # ------------------------------------------------------------------------------------
    def _gather(self) -> np.ndarray:
        """The params as one new flat vector (each in C order)."""
        if len(self._params) == 1:
            return np.array(self._params[0], dtype=self._dtype, order="C").reshape(-1)
        return np.concatenate([p.ravel(order="C") for p in self._params])

    def _scatter(self, flat: np.ndarray) -> None:
        """Write the flat vector into the params, in place."""
        offsets = self._offsets
        for i, p in enumerate(self._params):
            p[...] = flat[offsets[i]:offsets[i + 1]].reshape(p.shape)

    def _evaluate(self, closure: Callable[[], Any]) -> Tuple[float, np.ndarray]:
        """Call the closure; its loss as a float and its grads as one new flat vector,
        checked before any use."""
        out = closure()
        where = f"{self._name}.step"
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            size = f" of length {len(out)}" if isinstance(out, (tuple, list)) else ""
            raise TypeError(f"{where}: closure must return (loss, grads), got "
                            f"{type(out).__name__}{size}")
        loss, grads = out
        value = loss
        if isinstance(value, np.ndarray) and value.ndim == 0:
            value = value[()]
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
            raise TypeError(f"{where}: the loss the closure returned must be a real number, "
                            f"got {type(loss).__name__}")
        loss = float(value)
        n = len(self._params)
        if isinstance(grads, dict):
            grads = by_name(where, self._names, grads, "the closure's grads",
                            "the closure must return one grad per param", self._getter)
            labels = [f"grads[{k!r}]" for k in self._names or ()]
        elif isinstance(grads, np.ndarray) or not isinstance(grads, (list, tuple)):
            raise TypeError(f"{where}: the grads the closure returned must be a list of "
                            f"{n} arrays in param order"
                            f"{' or a dict of name -> array' if self._names else ''}, got "
                            f"{type(grads).__name__}")
        else:
            labels = [f"grads[{i}]" for i in range(n)]
        if len(grads) != n:
            raise ValueError(f"{where}: the closure returned {len(grads)} grads for {n} params")
        for i, (g, p) in enumerate(zip(grads, self._params)):
            if not isinstance(g, np.ndarray):
                raise TypeError(f"{where}: the closure's {labels[i]} must be a numpy.ndarray, "
                                f"got {type(g).__name__}")
            if g.dtype != self._dtype:
                raise TypeError(f"{where}: the closure's {labels[i]} must have dtype "
                                f"{self._dtype} like {self._label(i)}, got {g.dtype}")
            if g.shape != p.shape:
                raise ValueError(f"{where}: the closure's {labels[i]} must have shape "
                                 f"{p.shape} like {self._label(i)}, got {g.shape}")
        if n == 1:
            return loss, np.array(grads[0], order="C").reshape(-1)
        return loss, np.concatenate([g.ravel(order="C") for g in grads])

    # ------------------------------------------------------------------------------------
    # the step
    # ------------------------------------------------------------------------------------
    def step(self, closure: Callable[[], Tuple[float, Any]]) -> float:
        """Run up to ``max_iter`` L-BFGS iterations; returns the loss at the start.

        Parameters
        ----------
        closure : callable
            Called with no arguments; reads the params' current values and returns
            ``(loss, grads)``: the loss (a real number) and the grads, a list of arrays in
            param order (a dict of name -> array for named params), each of its param's
            shape and dtype (any layout). Called at most ``max_eval`` times.

        Returns
        -------
        float
            The loss of the first closure call (torch's ``orig_loss``).

        Raises
        ------
        TypeError
            If ``closure`` is not callable or returns something of the wrong type.
        ValueError
            If the closure returns grads of the wrong shape or number.
        RuntimeError
            If another thread (or the closure) is stepping or changing this optimizer.

        Notes
        -----
        When the closure raises or returns something wrong, the params are restored to
        their values at the start of the step and the state is as before; the error
        propagates.

        Examples
        --------
        >>> w = np.array([1.5])
        >>> opt = fastlr.LBFGS([w], lr=0.5, max_iter=1)
        >>> opt.step(lambda: (float(w[0] ** 2), [2 * w]))
        2.25
        >>> w
        array([1.])
        """
        if not callable(closure):
            raise TypeError(f"{self._name}.step: closure must be a callable returning "
                            f"(loss, grads), got {type(closure).__name__}")
        with self._exclusive("step"):
            x0 = self._gather()
            state = dict(self.state)
            try:
                with np.errstate(all="ignore"):
                    orig_loss = self._run(closure, x0, state)
            except BaseException:
                self._scatter(x0)
                raise
            self.state = state
            return orig_loss

    def _run(self, closure, x, state):
        """torch's ``LBFGS.step`` on the flat vector ``x`` (the params' values); updates
        ``state`` (a copy, kept only when the step completes) and the params."""
        group = self.param_groups[0]
        lr = group["lr"]
        max_iter = group["max_iter"]
        max_eval = group["max_eval"]
        tolerance_grad = group["tolerance_grad"]
        tolerance_change = group["tolerance_change"]
        line_search_fn = group["line_search_fn"]
        history_size = group["history_size"]
        dt = self._dtype.type

        # evaluate initial f(x) and df/dx
        orig_loss, flat_grad = self._evaluate(closure)
        loss = orig_loss
        current_evals = 1
        state["func_evals"] += 1
        opt_cond = np.abs(flat_grad).max() <= tolerance_grad
        if opt_cond:
            return orig_loss

        d, t = state["d"], state["t"]
        old_dirs, old_stps, ro = list(state["old_dirs"]), list(state["old_stps"]), \
            list(state["ro"])
        H_diag, prev_flat_grad, prev_loss = (state["H_diag"], state["prev_flat_grad"],
                                             state["prev_loss"])
        n_iter = 0
        while n_iter < max_iter:
            n_iter += 1
            state["n_iter"] += 1

            # the descent direction
            if state["n_iter"] == 1:
                d = -flat_grad
                old_dirs, old_stps, ro = [], [], []
                H_diag = 1
            else:
                y = flat_grad - prev_flat_grad
                s = d * t
                ys = y.dot(s)
                if ys > 1e-10:
                    if len(old_dirs) >= history_size:   # forget the oldest pairs
                        del old_dirs[:len(old_dirs) - history_size + 1]
                        del old_stps[:len(old_stps) - history_size + 1]
                        del ro[:len(ro) - history_size + 1]
                    old_dirs.append(y)
                    old_stps.append(s)
                    ro.append(1.0 / ys)
                    H_diag = ys / y.dot(y)
                num_old = len(old_dirs)
                al = state["al"]
                if al is None or len(al) < max(history_size, num_old):
                    al = state["al"] = [None] * max(history_size, num_old)
                else:
                    al = state["al"] = list(al)
                # the two-loop recursion, in one buffer
                q = -flat_grad
                tmp = np.empty_like(q)
                for i in range(num_old - 1, -1, -1):
                    al[i] = old_stps[i].dot(q) * ro[i]
                    _axpy(q, dt(-al[i]), old_dirs[i], tmp)
                r = q * H_diag
                for i in range(num_old):
                    be_i = old_dirs[i].dot(r) * ro[i]
                    _axpy(r, dt(al[i] - be_i), old_stps[i], tmp)
                d = r

            prev_flat_grad = flat_grad.copy()
            prev_loss = loss

            # the step length
            if state["n_iter"] == 1:
                t = min(1.0, 1.0 / np.abs(flat_grad).sum()) * lr
            else:
                t = lr

            gtd = flat_grad.dot(d)
            if gtd > -tolerance_change:         # not a descent direction any more
                break

            ls_func_evals = 0
            if line_search_fn is not None:
                def obj_func(x, t, d):
                    self._scatter(_axpy(x, dt(t), d))
                    return self._evaluate(closure)

                loss, flat_grad, t, ls_func_evals = _strong_wolfe(
                    obj_func, x, t, d, loss, flat_grad, gtd, max_ls=max_eval - current_evals)
                x = _axpy(x, dt(t), d)
                self._scatter(x)
                opt_cond = np.abs(flat_grad).max() <= tolerance_grad
            else:
                x = _axpy(x, dt(t), d)
                self._scatter(x)
                if n_iter != max_iter:      # the last iteration's loss is not needed
                    loss, flat_grad = self._evaluate(closure)
                    opt_cond = np.abs(flat_grad).max() <= tolerance_grad
                    ls_func_evals = 1

            current_evals += ls_func_evals
            state["func_evals"] += ls_func_evals

            # the stopping tests
            if n_iter == max_iter:
                break
            if current_evals >= max_eval:
                break
            if opt_cond:
                break
            if np.abs(d * t).max() <= tolerance_change:
                break
            if abs(loss - prev_loss) < tolerance_change:
                break

        state.update(d=d, t=t, old_dirs=old_dirs, old_stps=old_stps, ro=ro, H_diag=H_diag,
                     prev_flat_grad=prev_flat_grad, prev_loss=prev_loss)
        return orig_loss

    # ------------------------------------------------------------------------------------
    # checkpoints
    # ------------------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        """The optimizer's state as a plain dict, arrays copied.

        Returns
        -------
        dict
            ``{"format", "state": {func_evals, n_iter, d, t, old_dirs, old_stps, ro, H_diag,
            prev_flat_grad, prev_loss}, "param_groups": [hyperparameters, "params": indices,
            "param_names": names]}`` (``param_names`` when named), and ``snapshot_of``
            (loading its own state dict back is a rollback: the hyperparameters too).

        Examples
        --------
        >>> opt = fastlr.LBFGS([np.ones(2)])
        >>> sorted(opt.state_dict()["state"])[:4]
        ['H_diag', 'd', 'func_evals', 'n_iter']
        """
        with self._exclusive("state_dict"):
            st = self.state
            state = {"func_evals": st["func_evals"], "n_iter": st["n_iter"]}
            for k in _VECTORS:
                state[k] = None if st[k] is None else st[k].copy()
            for k in _HISTORY:
                state[k] = [v.copy() for v in st[k]]
            state["ro"] = list(st["ro"])
            for k in _SCALARS:
                state[k] = st[k]
            group = self.param_groups[0]
            g = {k: group[k] for k in _HYPERS}
            g["params"] = list(range(len(self._params)))
            if self._names is not None:
                g["param_names"] = list(self._names)
            return {"format": _FORMAT, "state": state, "param_groups": [g],
                    "snapshot_of": self._snapshot_id}

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> None:
        """Restore a state dict: the history and the counters, never a hyperparameter.

        Everything is validated first; on any error nothing changes. Every hyperparameter
        the state dict records must equal the optimizer's (a difference raises
        ``ValueError`` naming it; ``strict=False``: a warning, the optimizer's values kept),
        except when it is this optimizer's own :meth:`state_dict` (a rollback restores them
        too). Named params must carry the same names in order.

        Parameters
        ----------
        state_dict : dict
            From :meth:`state_dict`.
        strict : bool, default True
            Raise on hyperparameters or names that differ; with False, warn.

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
        >>> opt = fastlr.LBFGS([w], max_iter=1)
        >>> sd = opt.state_dict()
        >>> _ = opt.step(lambda: (float(w @ w), [2 * w]))
        >>> opt.load_state_dict(sd)
        >>> opt.state["n_iter"]
        0
        """
        strict = flag_arg(f"{self._name}.load_state_dict", "strict", strict)
        with self._exclusive("load_state_dict"):
            self._load(state_dict, strict, "load_state_dict")

    def _load(self, sd, strict, what):
        name = f"{self._name}.{what}"
        if not isinstance(sd, dict):
            raise TypeError(f"{name}: expected a dict, got {type(sd).__name__}")
        for key in ("state", "param_groups"):
            if key not in sd:
                raise ValueError(f"{name}: the state dict has no {key!r} entry")
        if sd.get("format", _FORMAT) != _FORMAT:
            raise ValueError(f"{name}: unknown format {sd.get('format')!r}, expected "
                             f"{_FORMAT!r}")
        groups = sd["param_groups"]
        if not isinstance(groups, (list, tuple)) or len(groups) != 1 or \
                not isinstance(groups[0], dict):
            raise ValueError(f"{name}: param_groups must be a list of one group dict (LBFGS "
                             f"has one group)")
        saved = groups[0]
        group = self.param_groups[0]
        n = len(self._params)
        held = saved.get("params", [])
        if not isinstance(held, (list, tuple, np.ndarray)) or list(held) != list(range(n)):
            raise ValueError(f"{name}: param_groups[0] holds params {held!r}, expected "
                             f"{list(range(n))}")
        renamed, differ, new_hypers = [], [], {}
        saved_names = saved.get("param_names")
        if saved_names is not None:
            if not isinstance(saved_names, (list, tuple)) or len(saved_names) != n or \
                    not all(isinstance(k, str) for k in saved_names):
                raise ValueError(f"{name}: param_groups[0]['param_names'] must be a list of "
                                 f"{n} strings, got {saved_names!r:.200}")
            if self._names is not None and list(saved_names) != self._names:
                renamed.append(_names_diff(0, self._names, list(saved_names)))
        for key, value in saved.items():
            if key in _FIXED_KEYS:
                continue
            if key not in _HYPERS:
                raise ValueError(f"{name}: param_groups[0] has an unknown hyperparameter "
                                 f"{key!r}")
            new_hypers[key] = self._check_hyper(key, value, "param_groups[0]")
            if not _same_hyper(group[key], value):
                differ.append((0, key, group[key], value))
        state = self._checked_state(name, sd["state"])
        rollback = sd.get("snapshot_of") == self._snapshot_id
        if renamed:
            self._refuse_or_warn(name, strict, "names its params otherwise", renamed,
                                 "build the optimizer over the checkpoint's names, in its "
                                 "order", "loaded by position")
        if differ and not rollback:
            self._refuse_or_warn(name, strict, "recorded other hyperparameters",
                                 [_hyper_diff(*d) for d in differ],
                                 "a checkpoint restores the history and the counters, never "
                                 "the hyperparameters: build the optimizer with the "
                                 "checkpoint's values", "kept this optimizer's values")
        # everything checked: apply
        if rollback:
            for key, value in new_hypers.items():
                dict.__setitem__(group, key, value)
            self._validate_group(group)
        self.state = state

    def _checked_state(self, name, st):
        """A state dict's ``state`` checked and converted (arrays copied into the params'
        dtype, scalars as the step computes them)."""
        if not isinstance(st, dict):
            raise TypeError(f"{name}: 'state' must be a dict, got {type(st).__name__}")
        known = {"func_evals", "n_iter", "al", "ro", *_VECTORS, *_HISTORY, *_SCALARS}
        extra = sorted(set(st) - known, key=str)
        if extra:
            raise ValueError(f"{name}: 'state' has unknown entries {extra[:5]!r}")
        out = _fresh_state()
        for key in ("func_evals", "n_iter"):
            out[key] = int(_nonneg_int(name, f"state[{key!r}]", st.get(key, 0)))
        for key in _VECTORS:
            if st.get(key) is not None:
                out[key] = self._vector(name, f"state[{key!r}]", st[key])
        for key in _HISTORY:
            vs = st.get(key) or []
            if not isinstance(vs, (list, tuple)):
                raise ValueError(f"{name}: state[{key!r}] must be a list of flat arrays, got "
                                 f"{type(vs).__name__}")
            out[key] = [self._vector(name, f"state[{key!r}][{i}]", v)
                        for i, v in enumerate(vs)]
        ro = st.get("ro") or []
        if not isinstance(ro, (list, tuple)):
            raise ValueError(f"{name}: state['ro'] must be a list of numbers")
        out["ro"] = [self._scalar(name, f"state['ro'][{i}]", v) for i, v in enumerate(ro)]
        k = len(out["old_dirs"])
        if len(out["old_stps"]) != k or len(out["ro"]) != k:
            raise ValueError(f"{name}: state['old_dirs'], state['old_stps'] and state['ro'] "
                             f"must have one entry per correction pair, got {k}, "
                             f"{len(out['old_stps'])} and {len(out['ro'])}")
        for key in _SCALARS:
            if st.get(key) is not None:
                out[key] = self._scalar(name, f"state[{key!r}]", st[key])
        if out["n_iter"] > 0:
            missing = [key for key in _VECTORS + _SCALARS if out[key] is None]
            if missing:
                raise ValueError(f"{name}: state[{missing[0]!r}] is missing, but "
                                 f"state['n_iter'] is {out['n_iter']} (an L-BFGS state after "
                                 f"an iteration has {', '.join(_VECTORS + _SCALARS)})")
        return out

    def _vector(self, name, label, v):
        if not isinstance(v, np.ndarray) or v.dtype.kind != "f" or v.shape != (self._numel,):
            raise ValueError(f"{name}: {label} must be a flat float array of {self._numel} "
                             f"elements (the params' total size), got "
                             f"{getattr(v, 'dtype', type(v).__name__)} "
                             f"{getattr(v, 'shape', '')}")
        return np.array(v, dtype=self._dtype, copy=True)

    def _scalar(self, name, label, v):
        """A recorded scalar as the step computes it: a Python number where torch has one
        (recorded as float64/int), else a NumPy scalar of the params' dtype."""
        if isinstance(v, np.ndarray) and v.ndim == 0:
            v = v[()]
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
            raise ValueError(f"{name}: {label} must be a real number, got "
                             f"{type(v).__name__}")
        if isinstance(v, np.floating) and v.dtype != np.float64:
            return self._dtype.type(v)
        if isinstance(v, (np.floating, float)):
            return self._dtype.type(v) if self._dtype == np.float64 else float(v)
        return int(v)

    def __repr__(self) -> str:
        """torch's layout: the class, then the group's params (count, names) and
        hyperparameters."""
        group = self.param_groups[0]
        n = len(self._params)
        shown = f"{n} array{'' if n == 1 else 's'}"
        if self._names:
            shown += f" ({_some(self._names, 8)})"
        lines = ["LBFGS (", "Parameter Group 0", f"    params: {shown}"]
        lines += [f"    {key}: {group[key]!r}" for key in sorted(_HYPERS)]
        lines.append(")")
        return "\n".join(lines)

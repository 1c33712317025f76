"""Learning-rate schedules: pure functions of the step, evaluated in C.

Every constructor returns a :class:`Schedule`. ``s(t)`` is the value after ``t`` completed
steps (an int >= 0; an optimizer's first update uses ``s(0)``), ``s.values(ts)`` evaluates an
array of steps in one C call, schedules combine in C (``s1 + s2``, ``s - c``, ``s1 * s2``,
``s * c``, ``s / c``, ``-s``, :func:`minimum`, :func:`maximum`), schedules pickle, and their
``repr`` reads like the call or the expression that built them. After its end a schedule
holds its final value; it never raises for a large ``t`` (and only :func:`multiplicative`
of a schedule costs more than O(1) there: its running product).

>>> from fastlr import schedules
>>> s = schedules.warmup_cosine(1e-3, warmup_steps=2, total_steps=6)
>>> [round(v, 6) for v in s.values(range(8)).tolist()]
[0.0, 0.0005, 0.001, 0.000854, 0.0005, 0.000146, 0.0, 0.0]
>>> s
warmup_cosine(0.001, warmup_steps=2, total_steps=6)

The first argument is the value a schedule starts from (``init``) or its peak (``peak``);
values are in the units of whatever the schedule drives (usually the learning rate). Steps
and lengths are integers. A plain Python callable ``step -> float`` is accepted wherever a
schedule is (:func:`as_schedule`); it works everywhere but is evaluated in Python with the
GIL, the slower path.
"""

from __future__ import annotations

import numbers
from typing import Any, Callable, Optional, Sequence, Union, cast

from fastlr._core.args import (CLOSED_UNIT, FINITE, INT_MAX, NONNEG, POSITIVE, checked_real,
                               choice_arg, flag_arg, int_arg)
from fastlr._schedules import KINDS, Schedule, _build

__all__ = [
    "Schedule", "as_schedule", "from_callable", "constant", "step_decay", "multistep",
    "exponential", "exponential_decay", "inverse_time", "polynomial", "linear", "cosine",
    "cosine_restarts", "cyclic", "one_cycle", "piecewise_constant", "piecewise_linear",
    "warmup_cosine", "warmup", "join", "minimum", "maximum", "chained", "multiplicative",
    "constant_lr", "lambda_lr", "wsd", "inverse_sqrt", "noam", "rex",
    "warmup_exponential_decay", "sgdr",
]

#: What a schedule argument accepts: a Schedule, a number (a constant) or a Python callable
#: ``step -> lr`` (see :func:`as_schedule`).
ScheduleLike = Union[Schedule, float, Callable[[int], float]]

CYCLIC_MODES: tuple[str, ...] = ("triangular", "triangular2", "exp_range")
ONE_CYCLE_ANNEALS: tuple[str, ...] = ("cos", "linear")
_PREFIX = "fastlr.schedules."


# ---------------------------------------------------------------------------------------
# argument checks: ValueError / TypeError naming the argument, raised at construction
# ---------------------------------------------------------------------------------------
# fastlr._core.args holds the rules; these name the callable ("fastlr.schedules.<fn>") and
# add the sequence arguments.
def _value(fn, name, value, rule=FINITE):
    return checked_real(_PREFIX + fn, name, value, rule)


def _int(fn, name, value, minimum=0):
    return int_arg(_PREFIX + fn, name, value, minimum, INT_MAX)


def _steps(fn, name, values, *, increasing):
    try:
        items = list(values)
    except TypeError:
        raise TypeError(f"{_PREFIX}{fn}: {name} must be a sequence of integers, got "
                        f"{type(values).__name__}") from None
    items = [_int(fn, f"{name}[{i}]", v) for i, v in enumerate(items)]
    if increasing:
        for i in range(1, len(items)):
            if items[i] <= items[i - 1]:
                raise ValueError(f"{_PREFIX}{fn}: {name} must be strictly increasing, got "
                                 f"{name}[{i - 1}]={items[i - 1]} then {name}[{i}]={items[i]}")
    return items


def _values(fn, name, values):
    try:
        items = list(values)
    except TypeError:
        raise TypeError(f"{_PREFIX}{fn}: {name} must be a sequence of numbers, got "
                        f"{type(values).__name__}") from None
    return [_value(fn, f"{name}[{i}]", v) for i, v in enumerate(items)]


def _choice(fn, name, value, choices):
    return choice_arg(_PREFIX + fn, name, value, choices)


def _flag(fn, name, value):
    return flag_arg(_PREFIX + fn, name, value)


def _make(name, args, kwargs, defaults, **parts):
    """A Schedule whose repr shows the positional args and the non-default keywords."""
    explicit = {k: v for k, v in kwargs.items() if k not in defaults or defaults[k] != v
                or type(defaults[k]) is not type(v)}
    return _build(KINDS[parts.pop("kind", name)], name, tuple(args), explicit, **parts)


# ---------------------------------------------------------------------------------------
# conversion
# ---------------------------------------------------------------------------------------
def as_schedule(value: ScheduleLike,
                name: str = "fastlr.schedules.as_schedule: schedule") -> Schedule:
    """Convert a number, a schedule or a Python callable to a :class:`Schedule`.

    Parameters
    ----------
    value : Schedule, float or callable
        A Schedule (returned as is), a real number (:func:`constant`) or a Python callable
        ``step -> float`` (:func:`from_callable`, evaluated in Python: slower, still
        correct).
    name : str, optional
        How error messages name ``value``.

    Returns
    -------
    Schedule

    Raises
    ------
    TypeError
        When ``value`` is none of these.
    """
    if isinstance(value, Schedule):
        return value
    if type(value).__name__ == "ndarray" and getattr(value, "ndim", None) == 0:
        value = cast(Any, value).item()     # a 0-d NumPy array is its element
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return constant(value)
    if callable(value):
        return from_callable(value)
    raise TypeError(f"{name} must be a number, a fastlr schedule or a callable step -> float, "
                    f"got {type(value).__name__} {value!r}")


def from_callable(fn: Callable[[int], float]) -> Schedule:
    """Wrap a Python callable ``fn(step: int) -> float`` as a Schedule.

    It composes like any schedule but is evaluated in Python, holding the GIL. An exception
    it raises propagates to whoever evaluated the schedule.

    Parameters
    ----------
    fn : callable
        ``fn(step) -> float``, called with the number of completed steps.

    Returns
    -------
    Schedule
    """
    if not callable(fn):
        raise TypeError(f"fastlr.schedules.from_callable: fn must be callable, got {fn!r}")
    return _build(KINDS["callback"], "from_callable", (fn,), {}, fn=fn)


# ---------------------------------------------------------------------------------------
# arithmetic: s1 + s2, s - c, c * s, s / c, -s (Schedule's operators call these)
# ---------------------------------------------------------------------------------------
def _operand(value, where, name="other"):
    """An operand of schedule arithmetic: a Schedule, a float (checked finite) or a Python
    callable (as :func:`from_callable`); None for anything else (the operator then returns
    NotImplemented and Python raises its TypeError)."""
    if isinstance(value, Schedule):
        return value
    if type(value).__name__ == "ndarray" and getattr(value, "ndim", None) == 0:
        value = cast(Any, value).item()
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return _value(where, name, value)
    if callable(value):
        return from_callable(value)
    return None


def _node(value):
    return value if isinstance(value, Schedule) else constant(value)


def _infix(ctor, kind, op, a, b):
    x, y = _operand(a, f"Schedule.{op}"), _operand(b, f"Schedule.{op}")
    if x is None or y is None:
        return NotImplemented
    return _build(KINDS[kind], ctor, (x, y), {}, children=(_node(x), _node(y)))


def _add(a, b):
    return _infix("_add", "sum", "__add__", a, b)


def _sub(a, b):
    return _infix("_sub", "difference", "__sub__", a, b)


def _mul(a, b):
    x, y = (_operand(a, "Schedule.__mul__", "factor"),
            _operand(b, "Schedule.__mul__", "factor"))
    if x is None or y is None:
        return NotImplemented
    if not isinstance(y, Schedule):
        return _scaled(x, y)
    if not isinstance(x, Schedule):
        return _scaled(y, x)                # c * s is s * c
    return _build(KINDS["product"], "_mul", (x, y), {}, children=(x, y))


def _div(a, b):
    if isinstance(b, Schedule) or (callable(b) and not isinstance(b, numbers.Real)):
        raise TypeError(f"{_PREFIX}Schedule.__truediv__: the divisor must be a nonzero finite "
                        f"number, got {type(b).__name__}; a schedule in the denominator "
                        "could reach 0 mid-training (multiply by a schedule of the "
                        "reciprocal instead)")
    x, y = (_operand(a, "Schedule.__truediv__"),
            _operand(b, "Schedule.__truediv__", "divisor"))
    if x is None or y is None:
        return NotImplemented
    if y == 0.0:
        raise ValueError(f"{_PREFIX}Schedule.__truediv__: the divisor must be a nonzero "
                         f"finite number, got {b!r}")
    return _build(KINDS["quotient"], "_div", (x, y), {}, children=(x, constant(y)))


def _neg(a):
    return _build(KINDS["negate"], "_neg", (a,), {}, children=(a,))


def _scaled(schedule, factor):
    factor = _value("Schedule.__mul__", "factor", factor)
    return _build(KINDS["scale"], "_scaled", (schedule, factor), {}, p=(factor,),
                  children=(schedule,))


def _nary(fn, kind, schedules):
    """A node over one or more schedules; numbers stay numbers in the repr."""
    if not schedules:
        raise TypeError(f"{_PREFIX}{fn}: expected at least one schedule, got none")
    args = []
    for i, s in enumerate(schedules):
        x = _operand(s, fn, f"schedules[{i}]")
        if x is None:
            raise TypeError(f"{_PREFIX}{fn}: schedules[{i}] must be a number, a fastlr "
                            f"schedule or a callable step -> float, got "
                            f"{type(s).__name__} {s!r:.80}")
        args.append(x)
    return _build(KINDS[kind], fn, tuple(args), {}, children=tuple(_node(x) for x in args))


def _rebuild(ctor, args, kwargs):
    """Unpickle: call the constructor again (schedules are pure functions of their args)."""
    return globals()[ctor](*args, **kwargs)


# ---------------------------------------------------------------------------------------
# constructors
# ---------------------------------------------------------------------------------------
def constant(value: float) -> Schedule:
    """``value`` at every step.

    Parameters
    ----------
    value : float
        The value, a finite number.

    Returns
    -------
    Schedule
    """
    v = _value("constant", "value", value)
    return _make("constant", (value,), {}, {}, p=(v,))


def step_decay(init: float, step_size: int, gamma: float = 0.1) -> Schedule:
    """``init * gamma ** (t // step_size)`` (torch StepLR).

    Parameters
    ----------
    init : float
        The value at step 0.
    step_size : int
        Steps between two decays, >= 1.
    gamma : float, default 0.1
        The factor of each decay, >= 0.

    Returns
    -------
    Schedule
    """
    fn = "step_decay"
    p = (_value(fn, "init", init), _value(fn, "gamma", gamma, NONNEG))
    k = (_int(fn, "step_size", step_size, minimum=1),)
    return _make(fn, (init, step_size), {"gamma": gamma}, {"gamma": 0.1}, p=p, k=k)


def multistep(init: float, milestones: Sequence[int], gamma: float = 0.1) -> Schedule:
    """``init * gamma ** (number of milestones <= t)`` (torch MultiStepLR).

    Parameters
    ----------
    init : float
        The value at step 0.
    milestones : sequence of int
        The steps at which the value is multiplied by ``gamma``, in any order; a duplicate
        counts twice.
    gamma : float, default 0.1
        The factor at each milestone, >= 0.

    Returns
    -------
    Schedule
    """
    fn = "multistep"
    ms = _steps(fn, "milestones", milestones, increasing=False)
    p = (_value(fn, "init", init), _value(fn, "gamma", gamma, NONNEG))
    return _make(fn, (init, ms), {"gamma": gamma}, {"gamma": 0.1}, p=p, ivals=sorted(ms))


def exponential(init: float, gamma: float) -> Schedule:
    """``init * gamma ** t`` (torch ExponentialLR).

    Parameters
    ----------
    init : float
        The value at step 0.
    gamma : float
        The factor per step, >= 0.

    Returns
    -------
    Schedule
    """
    fn = "exponential"
    p = (_value(fn, "init", init), _value(fn, "gamma", gamma, NONNEG))
    return _make(fn, (init, gamma), {}, {}, p=p)


def exponential_decay(init: float, transition_steps: int, decay_rate: float, *,
                      staircase: bool = False, transition_begin: int = 0,
                      end: Optional[float] = None) -> Schedule:
    """optax ``exponential_decay``: exponential decay after an optional delay, optionally
    stepwise and bounded.

    ``init`` until ``transition_begin``, then
    ``init * decay_rate ** ((t - transition_begin) / transition_steps)`` (the exponent
    floored when ``staircase``), bounded by ``end`` when given.

    Parameters
    ----------
    init : float
        The value up to ``transition_begin``.
    transition_steps : int
        Steps over which the value is multiplied by ``decay_rate``, >= 1.
    decay_rate : float
        The factor per ``transition_steps``, > 0 (> 1 grows).
    staircase : bool, default False
        Floor the exponent: the value changes every ``transition_steps`` steps.
    transition_begin : int, default 0
        Steps before the decay starts.
    end : float, optional
        A floor when decaying, a cap when growing; None for no bound.

    Returns
    -------
    Schedule
    """
    fn = "exponential_decay"
    p = (_value(fn, "init", init), _value(fn, "decay_rate", decay_rate, POSITIVE),
         0.0 if end is None else _value(fn, "end", end))
    k = (_int(fn, "transition_steps", transition_steps, minimum=1),
         _int(fn, "transition_begin", transition_begin), int(_flag(fn, "staircase", staircase)),
         int(end is not None))
    return _make(fn, (init, transition_steps, decay_rate),
                 {"staircase": staircase, "transition_begin": transition_begin, "end": end},
                 {"staircase": False, "transition_begin": 0, "end": None}, p=p, k=k)


def inverse_time(init: float, decay_steps: int, decay_rate: float, *,
                 staircase: bool = False) -> Schedule:
    """``init / (1 + decay_rate * t / decay_steps)`` (Keras InverseTimeDecay).

    Parameters
    ----------
    init : float
        The value at step 0.
    decay_steps : int
        The step scale of the decay, >= 1.
    decay_rate : float
        The rate of the decay, >= 0.
    staircase : bool, default False
        Use ``t // decay_steps`` instead of ``t / decay_steps``.

    Returns
    -------
    Schedule
    """
    fn = "inverse_time"
    p = (_value(fn, "init", init), _value(fn, "decay_rate", decay_rate, NONNEG))
    k = (_int(fn, "decay_steps", decay_steps, minimum=1),
         int(_flag(fn, "staircase", staircase)))
    return _make(fn, (init, decay_steps, decay_rate), {"staircase": staircase},
                 {"staircase": False}, p=p, k=k)


def polynomial(init: float, total_steps: int, *, end: float = 0.0, power: float = 1.0,
               transition_begin: int = 0, staircase_steps: int = 1) -> Schedule:
    """``(init - end) * (1 - c / T) ** power + end`` with ``T = total_steps`` and ``c =
    clip(t - transition_begin, 0, T)`` (torch PolynomialLR when ``end=0``; optax
    ``polynomial_schedule``); with ``staircase_steps = k > 1``, ``c`` is first rounded down
    to a multiple of ``k`` (the value changes every ``k`` steps, as a staircase).

    Parameters
    ----------
    init : float
        The value at step 0, held until ``transition_begin``.
    total_steps : int
        Steps of the decay, >= 1; ``end`` is held after ``transition_begin + total_steps``.
    end : float, default 0.0
        The final value.
    power : float, default 1.0
        The exponent, >= 0 (1: linear).
    transition_begin : int, default 0
        Steps before the decay starts (optax's ``transition_begin``), >= 0.
    staircase_steps : int, default 1
        Steps per stair, >= 1 (1: a smooth decay). The decay is evaluated at ``c - c % k``:
        the value of step ``transition_begin + j * k`` is held for ``k`` steps (as the
        ``staircase`` of :func:`exponential_decay`, whose stair is its ``transition_steps``).

    Returns
    -------
    Schedule

    Examples
    --------
    >>> from fastlr import schedules
    >>> s = schedules.polynomial(1.0, 100, staircase_steps=25)
    >>> [float(s(t)) for t in (0, 24, 25, 99, 100)]
    [1.0, 1.0, 0.75, 0.25, 0.0]
    """
    fn = "polynomial"
    p = (_value(fn, "init", init), _value(fn, "end", end),
         _value(fn, "power", power, NONNEG))
    k = (_int(fn, "total_steps", total_steps, minimum=1),
         _int(fn, "transition_begin", transition_begin),
         _int(fn, "staircase_steps", staircase_steps, minimum=1))
    return _make(fn, (init, total_steps), {"end": end, "power": power,
                                           "transition_begin": transition_begin,
                                           "staircase_steps": staircase_steps},
                 {"end": 0.0, "power": 1.0, "transition_begin": 0, "staircase_steps": 1},
                 p=p, k=k)


def linear(init: float, *, start_factor: float = 1.0 / 3, end_factor: float = 1.0,
           total_steps: int = 5, transition_begin: int = 0,
           staircase_steps: int = 1) -> Schedule:
    """``init * (s + (e - s) * c / T)`` with ``c = clip(t - transition_begin, 0, T)``
    (torch LinearLR): from ``start_factor * init`` to ``end_factor * init`` over
    ``total_steps``, after ``transition_begin`` steps at ``start_factor * init``; with
    ``staircase_steps = k > 1``, ``c`` is first rounded down to a multiple of ``k``.

    Parameters
    ----------
    init : float
        The value the factors scale.
    start_factor : float, default 1/3
        The factor at step 0, >= 0.
    end_factor : float, default 1.0
        The factor from ``transition_begin + total_steps`` on, >= 0.
    total_steps : int, default 5
        Steps of the ramp, >= 1.
    transition_begin : int, default 0
        Steps before the ramp starts (optax ``linear_schedule``'s ``transition_begin``),
        >= 0.
    staircase_steps : int, default 1
        Steps per stair, >= 1 (1: a smooth ramp); the ramp is evaluated at ``c - c % k``
        (see :func:`polynomial`).

    Returns
    -------
    Schedule

    Examples
    --------
    >>> from fastlr import schedules
    >>> s = schedules.linear(1.0, start_factor=1.0, end_factor=0.0, total_steps=10,
    ...                      staircase_steps=5)
    >>> [float(s(t)) for t in (0, 4, 5, 9, 10)]
    [1.0, 1.0, 0.5, 0.5, 0.0]
    """
    fn = "linear"
    p = (_value(fn, "init", init), _value(fn, "start_factor", start_factor, NONNEG),
         _value(fn, "end_factor", end_factor, NONNEG))
    k = (_int(fn, "total_steps", total_steps, minimum=1),
         _int(fn, "transition_begin", transition_begin),
         _int(fn, "staircase_steps", staircase_steps, minimum=1))
    return _make(fn, (init,), {"start_factor": start_factor, "end_factor": end_factor,
                               "total_steps": total_steps,
                               "transition_begin": transition_begin,
                               "staircase_steps": staircase_steps},
                 {"start_factor": 1.0 / 3, "end_factor": 1.0, "total_steps": 5,
                  "transition_begin": 0, "staircase_steps": 1}, p=p, k=k)


def cosine(init: float, total_steps: int, *, end: float = 0.0,
           exponent: float = 1.0) -> Schedule:
    """``end + (init - end) * ((1 + cos(pi * min(t, T) / T)) / 2) ** exponent``: torch
    CosineAnnealingLR up to ``T = total_steps`` (``exponent=1``), then it holds ``end``
    (torch's rises again).

    With ``end = alpha * init`` it is optax's ``cosine_decay_schedule(init, T, alpha,
    exponent)``.

    Parameters
    ----------
    init : float
        The value at step 0.
    total_steps : int
        Steps of the half cosine, >= 1.
    end : float, default 0.0
        The final value (torch's ``eta_min``).
    exponent : float, default 1.0
        The power of the cosine factor (optax's ``exponent``), > 0.

    Returns
    -------
    Schedule
    """
    fn = "cosine"
    p = (_value(fn, "init", init), _value(fn, "end", end),
         _value(fn, "exponent", exponent, POSITIVE))
    k = (_int(fn, "total_steps", total_steps, minimum=1),)
    return _make(fn, (init, total_steps), {"end": end, "exponent": exponent},
                 {"end": 0.0, "exponent": 1.0}, p=p, k=k)


def cosine_restarts(init: float, period: int, *, period_mult: int = 1, end: float = 0.0,
                    decay: float = 1.0) -> Schedule:
    """SGDR (torch CosineAnnealingWarmRestarts): cosine cycles that restart from the top.

    Over cycle ``i``, which lasts ``period * period_mult**i`` steps (found with integer
    arithmetic), the value is ``end + (init - end) * decay**i * (1 + cos(pi * t_i / T_i)) /
    2``, where ``t_i`` counts the steps into the cycle and ``T_i`` is its length.

    Parameters
    ----------
    init : float
        The value at the start of the first cycle.
    period : int
        The length of the first cycle (torch's ``T_0``), >= 1.
    period_mult : int, default 1
        Each cycle is this many times longer than the previous one (torch's ``T_mult``),
        >= 1.
    end : float, default 0.0
        The value at the end of each cycle (torch's ``eta_min``).
    decay : float, default 1.0
        Scales each restart's height above ``end`` (Keras ``m_mul``), >= 0.

    Returns
    -------
    Schedule
    """
    fn = "cosine_restarts"
    p = (_value(fn, "init", init), _value(fn, "end", end),
         _value(fn, "decay", decay, NONNEG))
    k = (_int(fn, "period", period, minimum=1),
         _int(fn, "period_mult", period_mult, minimum=1))
    return _make(fn, (init, period), {"period_mult": period_mult, "end": end, "decay": decay},
                 {"period_mult": 1, "end": 0.0, "decay": 1.0}, p=p, k=k)


def cyclic(base: float, peak: float, *, step_size_up: int = 2000,
           step_size_down: Optional[int] = None, mode: str = "triangular",
           gamma: float = 1.0) -> Schedule:
    """torch CyclicLR: triangular cycles between ``base`` and ``peak``.

    Up from ``base`` to ``peak`` in ``step_size_up`` steps and back in ``step_size_down``.

    Parameters
    ----------
    base : float
        The lower bound of each cycle.
    peak : float
        The upper bound of the first cycle.
    step_size_up : int, default 2000
        Steps from ``base`` up to ``peak``, >= 1.
    step_size_down : int, optional
        Steps from ``peak`` back down; None: the same as ``step_size_up``.
    mode : {'triangular', 'triangular2', 'exp_range'}, default 'triangular'
        ``'triangular'`` keeps the amplitude, ``'triangular2'`` halves it every cycle,
        ``'exp_range'`` scales it by ``gamma ** t``.
    gamma : float, default 1.0
        The per-step factor of ``'exp_range'``, > 0.

    Returns
    -------
    Schedule
    """
    fn = "cyclic"
    up = _int(fn, "step_size_up", step_size_up, minimum=1)
    down = up if step_size_down is None else _int(fn, "step_size_down", step_size_down)
    p = (_value(fn, "base", base), _value(fn, "peak", peak),
         _value(fn, "gamma", gamma, POSITIVE))
    k = (up, down, _choice(fn, "mode", mode, CYCLIC_MODES))
    return _make(fn, (base, peak), {"step_size_up": step_size_up,
                                    "step_size_down": step_size_down, "mode": mode,
                                    "gamma": gamma},
                 {"step_size_up": 2000, "step_size_down": None, "mode": "triangular",
                  "gamma": 1.0}, p=p, k=k)


def one_cycle(peak: float, total_steps: int, *, pct_start: float = 0.3, anneal: str = "cos",
              div_factor: float = 25.0, final_div_factor: float = 1e4,
              three_phase: bool = False) -> Schedule:
    """torch OneCycleLR: a warmup to ``peak``, then an annealing far below the start.

    From ``peak / div_factor`` up to ``peak`` over the first ``pct_start`` of
    ``total_steps``, then down to ``peak / div_factor / final_div_factor`` (three-phase:
    back to the initial value, then down). Holds its last value after ``total_steps``.
    Phase ends are at ``pct*N - 1``, ``2*pct*N - 2`` (three-phase) and ``N - 1``;
    arguments that make a phase empty or reversed are rejected.

    Parameters
    ----------
    peak : float
        The highest value (torch's ``max_lr``).
    total_steps : int
        The length of the cycle, >= 2.
    pct_start : float, default 0.3
        The fraction of the steps spent rising, in (0, 1).
    anneal : {'cos', 'linear'}, default 'cos'
        The shape of every phase (torch's ``anneal_strategy``).
    div_factor : float, default 25.0
        The initial value is ``peak / div_factor``, > 0.
    final_div_factor : float, default 1e4
        The final value is the initial one divided by this, > 0.
    three_phase : bool, default False
        Come back down to the initial value before the final annealing.

    Returns
    -------
    Schedule
    """
    fn = "one_cycle"
    n = _int(fn, "total_steps", total_steps, minimum=2)
    pct = _value(fn, "pct_start", pct_start)
    if not 0.0 < pct < 1.0:
        raise ValueError(f"{_PREFIX}{fn}: pct_start must be in (0, 1), got {pct_start!r}")
    anneal_code = _choice(fn, "anneal", anneal, ONE_CYCLE_ANNEALS)
    three = _flag(fn, "three_phase", three_phase)
    peak_v = _value(fn, "peak", peak)
    div = _value(fn, "div_factor", div_factor, POSITIVE)
    final_div = _value(fn, "final_div_factor", final_div_factor, POSITIVE)
    # torch's phase ends, in its own arithmetic
    ends = [float(pct * n) - 1]
    if three:
        ends.append(float(2 * pct * n) - 2)
    ends.append(float(n - 1))
    start = 0.0
    for i, end_step in enumerate(ends):
        if not end_step > start:
            raise ValueError(
                f"{_PREFIX}{fn}: pct_start={pct_start!r} with total_steps={total_steps} "
                f"leaves phase {i + 1} empty or reversed (it would run from step {start:g} "
                f"to {end_step:g}); use more steps or another pct_start")
        start = end_step
    initial = peak_v / div
    minimum = initial / final_div
    ends += [0.0] * (3 - len(ends))
    p = (initial, peak_v, minimum, ends[0], ends[1], ends[2])
    k = (n, anneal_code, int(three))
    return _make(fn, (peak, total_steps),
                 {"pct_start": pct_start, "anneal": anneal, "div_factor": div_factor,
                  "final_div_factor": final_div_factor, "three_phase": three_phase},
                 {"pct_start": 0.3, "anneal": "cos", "div_factor": 25.0,
                  "final_div_factor": 1e4, "three_phase": False}, p=p, k=k)


def piecewise_constant(boundaries: Sequence[int], values: Sequence[float]) -> Schedule:
    """``values[i]`` for ``boundaries[i-1] <= t < boundaries[i]``: the value switches at
    ``t == b`` (optax; Keras switches at ``b + 1``).

    Parameters
    ----------
    boundaries : sequence of int
        Strictly increasing steps at which the value switches.
    values : sequence of float
        ``len(boundaries) + 1`` values.

    Returns
    -------
    Schedule
    """
    fn = "piecewise_constant"
    b = _steps(fn, "boundaries", boundaries, increasing=True)
    v = _values(fn, "values", values)
    if len(v) != len(b) + 1:
        raise ValueError(f"{_PREFIX}{fn}: values needs len(boundaries) + 1 = {len(b) + 1} "
                         f"entries, got {len(v)}")
    return _make(fn, (b, v), {}, {}, ivals=b, dvals=v)


def piecewise_linear(boundaries: Sequence[int], values: Sequence[float]) -> Schedule:
    """Linear between the knots ``(boundaries[i], values[i])``, held before the first and
    after the last.

    Parameters
    ----------
    boundaries : sequence of int
        The knots' steps, strictly increasing (at least one).
    values : sequence of float
        The knots' values, as many as ``boundaries``.

    Returns
    -------
    Schedule
    """
    fn = "piecewise_linear"
    b = _steps(fn, "boundaries", boundaries, increasing=True)
    v = _values(fn, "values", values)
    if len(v) != len(b) or not b:
        raise ValueError(f"{_PREFIX}{fn}: boundaries and values need the same length >= 1, "
                         f"got {len(b)} and {len(v)}")
    return _make(fn, (b, v), {}, {}, ivals=b, dvals=v)


def warmup_cosine(peak: float, *, warmup_steps: int, total_steps: int, init: float = 0.0,
                  end: float = 0.0, exponent: float = 1.0) -> Schedule:
    """Linear warmup from ``init`` to ``peak``, then cosine decay to ``end`` (optax's
    ``warmup_cosine_decay_schedule``); holds ``end`` after ``total_steps``.

    With ``W = warmup_steps``, ``T = total_steps`` and ``c = min(t - W, T - W) / (T - W)``:
    ``init + (peak - init) * t / W`` for ``t < W``, then ``end + (peak - end) * ((1 +
    cos(pi c)) / 2) ** exponent``.

    Parameters
    ----------
    peak : float
        The value at the end of the warmup.
    warmup_steps : int
        Steps of the linear warmup, >= 0.
    total_steps : int
        Steps until ``end``, the warmup included (as optax's ``decay_steps``); must be
        greater than ``warmup_steps``.
    init : float, default 0.0
        The value at step 0.
    end : float, default 0.0
        The final value.
    exponent : float, default 1.0
        The power of the cosine factor (optax's ``exponent``), > 0.

    Returns
    -------
    Schedule
    """
    fn = "warmup_cosine"
    w = _int(fn, "warmup_steps", warmup_steps)
    n = _int(fn, "total_steps", total_steps, minimum=1)
    if n <= w:
        raise ValueError(f"{_PREFIX}{fn}: total_steps (={n}) includes the warmup and must be "
                         f"> warmup_steps (={w})")
    p = (_value(fn, "peak", peak), _value(fn, "init", init), _value(fn, "end", end),
         _value(fn, "exponent", exponent, POSITIVE))
    return _make(fn, (peak,), {"warmup_steps": warmup_steps, "total_steps": total_steps,
                               "init": init, "end": end, "exponent": exponent},
                 {"init": 0.0, "end": 0.0, "exponent": 1.0}, p=p, k=(w, n))


def warmup(schedule: ScheduleLike, warmup_steps: int, *,
           start_factor: float = 0.0) -> Schedule:
    """Prepend a linear warmup to a schedule.

    A linear ramp from ``start_factor * s(0)`` to ``s(0)`` over ``warmup_steps``, then
    ``s(t - warmup_steps)``: the wrapped schedule starts at 0 when the warmup ends.

    Parameters
    ----------
    schedule : Schedule, float or callable
        The schedule after the warmup (anything :func:`as_schedule` takes).
    warmup_steps : int
        Steps of the ramp, >= 0; 0 returns the schedule itself.
    start_factor : float, default 0.0
        The ramp starts at ``start_factor * s(0)``, >= 0.

    Returns
    -------
    Schedule
    """
    fn = "warmup"
    inner = as_schedule(schedule, f"{_PREFIX}{fn}: schedule")
    w = _int(fn, "warmup_steps", warmup_steps)
    sf = _value(fn, "start_factor", start_factor, NONNEG)
    if w == 0:
        return inner
    return _make(fn, (inner, warmup_steps), {"start_factor": start_factor},
                 {"start_factor": 0.0}, p=(sf,), k=(w,), children=(inner,))


def join(schedules: Sequence[ScheduleLike], boundaries: Sequence[int]) -> Schedule:
    """Schedules one after the other, each restarting at 0 (torch SequentialLR, optax
    ``join_schedules``).

    ``schedules[i](t - boundaries[i-1])`` where ``i`` counts the boundaries <= t.

    Parameters
    ----------
    schedules : sequence of Schedule, float or callable
        The pieces, in order (anything :func:`as_schedule` takes).
    boundaries : sequence of int
        ``len(schedules) - 1`` strictly increasing steps at which the next piece starts.

    Returns
    -------
    Schedule
    """
    fn = "join"
    try:
        parts = [as_schedule(s, f"{_PREFIX}{fn}: schedules[{i}]")
                 for i, s in enumerate(schedules)]
    except TypeError as error:
        if "schedules[" in str(error):
            raise
        raise TypeError(f"{_PREFIX}{fn}: schedules must be a sequence of schedules, got "
                        f"{type(schedules).__name__}") from None
    if not parts:
        raise ValueError(f"{_PREFIX}{fn}: schedules must not be empty")
    b = _steps(fn, "boundaries", boundaries, increasing=True)
    if len(b) != len(parts) - 1:
        raise ValueError(f"{_PREFIX}{fn}: boundaries needs len(schedules) - 1 = "
                         f"{len(parts) - 1} entries, got {len(b)}")
    return _make(fn, (parts, b), {}, {}, ivals=b, children=tuple(parts))


# ---------------------------------------------------------------------------------------
# compositions: minimum / maximum, torch's MultiplicativeLR, ConstantLR, ChainedScheduler,
# LambdaLR
# ---------------------------------------------------------------------------------------
def minimum(*schedules: ScheduleLike) -> Schedule:
    """The smallest of several schedules at every step: ``min(s_1(t), s_2(t), ...)``.

    Evaluated in C (a NaN from any of them is the result). Numbers are constants; Python
    callables are accepted and make the result need the GIL.

    Parameters
    ----------
    *schedules : Schedule, float or callable
        One or more schedules (anything :func:`as_schedule` takes).

    Returns
    -------
    Schedule

    Examples
    --------
    >>> from fastlr import schedules
    >>> s = schedules.minimum(schedules.exponential(1.0, 0.5), 0.3)
    >>> s.values(range(4)).tolist()
    [0.3, 0.3, 0.25, 0.125]
    """
    return _nary("minimum", "minimum", schedules)


def maximum(*schedules: ScheduleLike) -> Schedule:
    """The largest of several schedules at every step: ``max(s_1(t), s_2(t), ...)``.

    A floor under a decaying schedule: ``maximum(cosine(0.1, 1000), 1e-3)``. Evaluated in
    C (a NaN from any of them is the result).

    Parameters
    ----------
    *schedules : Schedule, float or callable
        One or more schedules (anything :func:`as_schedule` takes).

    Returns
    -------
    Schedule
    """
    return _nary("maximum", "maximum", schedules)


def chained(*schedules: ScheduleLike) -> Schedule:
    """The product of several schedules, ``s_1(t) * s_2(t) * ...`` (torch ChainedScheduler).

    torch's ChainedScheduler steps multiplicative schedulers one after the other on the
    same lr, so its lr is the base lr times each scheduler's factor: give the first
    schedule the lr and the others ``init=1.0``, e.g. ``ChainedScheduler([ConstantLR(opt,
    factor=0.1, total_iters=2), ExponentialLR(opt, gamma=0.9)])`` is ``chained(
    constant_lr(lr, factor=0.1, total_steps=2), exponential(1.0, 0.9))``. ``s1 * s2`` is the
    same product of two.

    Parameters
    ----------
    *schedules : Schedule, float or callable
        One or more factors (anything :func:`as_schedule` takes), multiplied left to right.

    Returns
    -------
    Schedule
    """
    return _nary("chained", "product", schedules)


def multiplicative(init: float, factor: ScheduleLike) -> Schedule:
    """torch MultiplicativeLR: ``lr_t = lr_(t-1) * f(t)`` from ``lr_0 = init``, that is
    ``init * f(1) * f(2) * ... * f(t)``.

    A number ``f`` gives ``init * f ** t`` in closed form (one ``pow``). A schedule or a
    callable ``f`` gives the running product, multiplied left to right as torch does: the
    value after ``t`` steps needs ``f(1) ... f(t)``. A compiled ``f`` keeps the last product
    it computed, so stepping on from it costs one evaluation of ``f`` (an optimizer's steps,
    ``values(range(n))``) while any other ``t`` costs ``t`` evaluations; the value is the
    same either way, bit for bit. A Python callable ``f`` is not cached: ``t`` calls for
    every evaluation, so it suits short runs (prefer a number or a fastlr schedule).

    Parameters
    ----------
    init : float
        The value at step 0.
    factor : float, Schedule or callable
        ``f``: the factor applied at step ``t >= 1``; a number is the same factor at every
        step (torch's ``lr_lambda`` returning a constant).

    Returns
    -------
    Schedule
    """
    fn = "multiplicative"
    v = _value(fn, "init", init)
    f = _operand(factor, fn, "factor")
    if f is None:
        raise TypeError(f"{_PREFIX}{fn}: factor must be a number, a fastlr schedule or a "
                        f"callable step -> float, got {type(factor).__name__} {factor!r:.80}")
    if not isinstance(f, Schedule):
        return _make(fn, (init, f), {}, {}, kind="exponential", p=(v, f))
    return _make(fn, (init, f), {}, {}, kind="multiplicative", p=(v,), children=(f,))


def constant_lr(init: float, factor: float = 1.0 / 3, total_steps: int = 5) -> Schedule:
    """torch ConstantLR: ``init * factor`` for ``t < total_steps``, then ``init``.

    Parameters
    ----------
    init : float
        The value from ``total_steps`` on.
    factor : float, default 1/3
        The factor before ``total_steps``, in [0, 1].
    total_steps : int, default 5
        Steps at the reduced value (torch's ``total_iters``), >= 1.

    Returns
    -------
    Schedule
    """
    fn = "constant_lr"
    v = _value(fn, "init", init)
    f = _value(fn, "factor", factor, CLOSED_UNIT)
    n = _int(fn, "total_steps", total_steps, minimum=1)
    return _make(fn, (init,), {"factor": factor, "total_steps": total_steps},
                 {"factor": 1.0 / 3, "total_steps": 5}, kind="piecewise_constant",
                 ivals=[n], dvals=[v * f, v])


def lambda_lr(init: float, fn: ScheduleLike) -> Schedule:
    """torch LambdaLR: ``init * fn(t)``.

    Parameters
    ----------
    init : float
        The base value (torch's initial lr).
    fn : Schedule, float or callable
        The factor at step ``t`` (torch's ``lr_lambda``); a fastlr schedule keeps it in C,
        a Python callable is evaluated with the GIL.

    Returns
    -------
    Schedule
    """
    name = "lambda_lr"
    v = _value(name, "init", init)
    f = as_schedule(fn, f"{_PREFIX}{name}: fn")
    return _make(name, (init, f), {}, {}, kind="scale", p=(v,), children=(f,))


# ---------------------------------------------------------------------------------------
# schedules of large-model training
# ---------------------------------------------------------------------------------------
WSD_DECAYS: tuple[str, ...] = ("linear", "cosine", "1-sqrt")


def wsd(peak: float, total_steps: int, *, warmup_steps: int = 0, decay_fraction: float = 0.1,
        decay: str = "linear", end: float = 0.0) -> Schedule:
    """Warmup-stable-decay: a linear warmup, a constant plateau at ``peak``, then a
    cooldown to ``end`` over the final ``D = round(decay_fraction * total_steps)`` steps.

    With ``W = warmup_steps``, ``T = total_steps`` and ``x = (t - (T - D)) / D``::

        peak * t / W                               t < W
        peak                                       W <= t < T - D
        end + (peak - end) * g(x)                  T - D <= t <= T
        end                                        t >= T

    where ``g(x) = 1 - x`` (``'linear'``), ``(1 + cos(pi x)) / 2`` (``'cosine'``) or
    ``1 - sqrt(x)`` (``'1-sqrt'``, Hägele et al. 2024, "Scaling Laws and Compute-Optimal
    Training Beyond Fixed Training Durations"). The schedule of MiniCPM (Hu et al. 2024).

    Parameters
    ----------
    peak : float
        The plateau's value.
    total_steps : int
        Steps until ``end``, warmup and cooldown included, >= 1.
    warmup_steps : int, default 0
        Steps of the linear warmup from 0, >= 0.
    decay_fraction : float, default 0.1
        The cooldown's share of ``total_steps``, in [0, 1]; it must round to at least one
        step and leave room for the warmup (``W + D <= T``).
    decay : {'linear', 'cosine', '1-sqrt'}, default 'linear'
        The cooldown's shape ``g``.
    end : float, default 0.0
        The final value.

    Returns
    -------
    Schedule
    """
    fn = "wsd"
    p = (_value(fn, "peak", peak), _value(fn, "end", end))
    n = _int(fn, "total_steps", total_steps, minimum=1)
    w = _int(fn, "warmup_steps", warmup_steps)
    frac = _value(fn, "decay_fraction", decay_fraction, CLOSED_UNIT)
    shape = _choice(fn, "decay", decay, WSD_DECAYS)
    d = round(frac * n)
    if d < 1:
        raise ValueError(f"{_PREFIX}{fn}: decay_fraction={decay_fraction!r} of "
                         f"total_steps={n} is {frac * n:g} steps, which rounds to 0; the "
                         "cooldown needs at least 1 step")
    if w + d > n:
        raise ValueError(f"{_PREFIX}{fn}: warmup_steps (={w}) and the cooldown "
                         f"(round(decay_fraction * total_steps) = {d}) do not fit in "
                         f"total_steps (={n})")
    return _make(fn, (peak, total_steps),
                 {"warmup_steps": warmup_steps, "decay_fraction": decay_fraction,
                  "decay": decay, "end": end},
                 {"warmup_steps": 0, "decay_fraction": 0.1, "decay": "linear", "end": 0.0},
                 p=p, k=(w, n, d, shape))


def inverse_sqrt(peak: float, warmup_steps: int, *, init: float = 0.0) -> Schedule:
    """Inverse square root decay after a linear warmup (fairseq's ``inverse_sqrt``)::

        init + (peak - init) * t / W      t < W
        peak * sqrt(W / t)                t >= W

    with ``W = warmup_steps``: ``peak`` at ``t = W``, then ``peak / 2`` at ``4 W``. For
    the Transformer's parametrization see :func:`noam`.

    Parameters
    ----------
    peak : float
        The value at the end of the warmup.
    warmup_steps : int
        Steps of the warmup, >= 1.
    init : float, default 0.0
        The value at step 0.

    Returns
    -------
    Schedule
    """
    fn = "inverse_sqrt"
    p = (_value(fn, "peak", peak), _value(fn, "init", init))
    w = _int(fn, "warmup_steps", warmup_steps, minimum=1)
    return _make(fn, (peak, warmup_steps), {"init": init}, {"init": 0.0}, p=p, k=(w,))


def noam(d_model: int, warmup_steps: int, *, factor: float = 1.0) -> Schedule:
    """The Transformer's schedule (Vaswani et al. 2017, "Attention Is All You Need", eq. 3):
    ``factor * d_model ** -0.5 * min(n ** -0.5, n * warmup_steps ** -1.5)``.

    ``n = t + 1`` counts updates from 1, so the first update (``t = 0``) uses ``n = 1``;
    the peak ``factor * (d_model * warmup_steps) ** -0.5`` is at ``n = warmup_steps``. The
    same curve as ``inverse_sqrt`` up to where its steps are counted.

    Parameters
    ----------
    d_model : int
        The model width, >= 1.
    warmup_steps : int
        Updates of the linear warmup, >= 1.
    factor : float, default 1.0
        A constant factor, > 0.

    Returns
    -------
    Schedule
    """
    fn = "noam"
    d = _int(fn, "d_model", d_model, minimum=1)
    w = _int(fn, "warmup_steps", warmup_steps, minimum=1)
    f = _value(fn, "factor", factor, POSITIVE)
    return _make(fn, (d_model, warmup_steps), {"factor": factor}, {"factor": 1.0},
                 p=(f * d ** -0.5,), k=(w,))


def rex(init: float, total_steps: int, *, end: float = 0.0) -> Schedule:
    """REX (Chen, Wolfe and Kyrillidis 2022, "REX: Revisiting Budgeted Training with an
    Improved Schedule", MLSys): ``end + (init - end) * (1 - z) / (1/2 + (1 - z) / 2)``,
    ``z = min(t, T) / T``, ``T = total_steps``.

    Computed as ``(1 - z) / (1 - z / 2)``; it falls slower than linear at first and faster
    at the end, and holds ``end`` after ``T``.

    Parameters
    ----------
    init : float
        The value at step 0.
    total_steps : int
        Steps until ``end``, >= 1.
    end : float, default 0.0
        The final value.

    Returns
    -------
    Schedule
    """
    fn = "rex"
    p = (_value(fn, "init", init), _value(fn, "end", end))
    k = (_int(fn, "total_steps", total_steps, minimum=1),)
    return _make(fn, (init, total_steps), {"end": end}, {"end": 0.0}, p=p, k=k)


# ---------------------------------------------------------------------------------------
# optax's compositions
# ---------------------------------------------------------------------------------------
def warmup_exponential_decay(peak: float, *, warmup_steps: int, transition_steps: int,
                             decay_rate: float, init: float = 0.0, transition_begin: int = 0,
                             staircase: bool = False,
                             end: Optional[float] = None) -> Schedule:
    """A linear warmup from ``init`` to ``peak``, then :func:`exponential_decay` from
    ``peak`` (optax's ``warmup_exponential_decay_schedule``).

    ``(init - peak) * (1 - t / W) + peak`` for ``t < W = warmup_steps`` (optax's
    ``linear_schedule``), then ``exponential_decay(peak, transition_steps, decay_rate,
    staircase=staircase, transition_begin=transition_begin, end=end)(t - W)``: the decay
    counts from the end of the warmup, and ``transition_begin`` delays it further.

    Parameters
    ----------
    peak : float
        The value at the end of the warmup.
    warmup_steps : int
        Steps of the warmup, >= 0.
    transition_steps : int
        Steps over which the value is multiplied by ``decay_rate``, >= 1.
    decay_rate : float
        The factor per ``transition_steps``, > 0.
    init : float, default 0.0
        The value at step 0.
    transition_begin : int, default 0
        Steps at ``peak`` after the warmup before the decay starts, >= 0.
    staircase : bool, default False
        Decay in steps of ``transition_steps``.
    end : float, optional
        A floor when decaying (a cap when ``decay_rate > 1``); None for none.

    Returns
    -------
    Schedule
    """
    fn = "warmup_exponential_decay"
    w = _int(fn, "warmup_steps", warmup_steps)
    ramp = polynomial(_value(fn, "init", init), max(w, 1), end=_value(fn, "peak", peak))
    try:
        decay = exponential_decay(peak, transition_steps, decay_rate, staircase=staircase,
                                  transition_begin=transition_begin, end=end)
    except (TypeError, ValueError) as error:
        raise type(error)(str(error).replace("exponential_decay:", f"{fn}:", 1)) from None
    return _make(fn, (peak,), {"warmup_steps": warmup_steps,
                               "transition_steps": transition_steps,
                               "decay_rate": decay_rate, "init": init,
                               "transition_begin": transition_begin, "staircase": staircase,
                               "end": end},
                 {"init": 0.0, "transition_begin": 0, "staircase": False, "end": None},
                 kind="join", ivals=[w], children=(ramp, decay))


def sgdr(cycles: Sequence[dict]) -> Schedule:
    """Warm restarts of :func:`warmup_cosine` cycles, one after the other (optax's
    ``sgdr_schedule``).

    Cycle ``i`` is ``warmup_cosine(**cycles[i])`` and starts when the previous ones'
    ``total_steps`` have run; after the last cycle its ``end`` is held (the schedule ends,
    unlike :func:`cosine_restarts`).

    Parameters
    ----------
    cycles : sequence of dict
        One dict of :func:`warmup_cosine` keyword arguments per cycle (``peak``,
        ``warmup_steps``, ``total_steps`` and optionally ``init``, ``end``, ``exponent``);
        at least one.

    Returns
    -------
    Schedule

    Examples
    --------
    >>> from fastlr import schedules
    >>> s = schedules.sgdr([dict(peak=1.0, warmup_steps=1, total_steps=3),
    ...                     dict(peak=0.5, warmup_steps=1, total_steps=3)])
    >>> s.values(range(8)).tolist()
    [0.0, 1.0, 0.5, 0.0, 0.5, 0.25, 0.0, 0.0]
    """
    fn = "sgdr"
    try:
        items = list(cycles)
    except TypeError:
        raise TypeError(f"{_PREFIX}{fn}: cycles must be a sequence of dicts, got "
                        f"{type(cycles).__name__}") from None
    if not items:
        raise ValueError(f"{_PREFIX}{fn}: cycles must not be empty")
    parts, boundaries, step = [], [], 0
    for i, kwargs in enumerate(items):
        if not isinstance(kwargs, dict):
            raise TypeError(f"{_PREFIX}{fn}: cycles[{i}] must be a dict of warmup_cosine "
                            f"arguments, got {type(kwargs).__name__}")
        try:
            parts.append(warmup_cosine(**kwargs))
        except (TypeError, ValueError) as error:
            raise type(error)(f"{_PREFIX}{fn}: cycles[{i}]: {error}") from None
        step += kwargs["total_steps"]
        boundaries.append(step)
    return _make(fn, ([dict(c) for c in items],), {}, {}, kind="join", ivals=boundaries[:-1],
                 children=tuple(parts))

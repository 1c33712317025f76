"""Tests of fastlr.schedules (docs/design.md, Numerics).

1. every constructor against its closed form, written here independently in plain Python
   (``math``) from the formulas of torch, optax and Keras, at every step of a
   range that crosses all its boundaries and up to ~3x its length, plus huge steps;
2. against ``torch.optim.lr_scheduler`` sequences (skipped without torch);
3. ``s(t)``, ``s.values(ts)`` and the compiled loop agree bit for bit;
4. pickle round trips and ``repr`` that reads like (and evaluates to) the call;
5. every invalid argument raises at construction, naming the argument;
6. large steps never raise and schedules hold their final value after their end;
7. Python callables: evaluation, ``is_compiled``, exceptions propagate and are cleared.
"""

import math
import pickle
import warnings

import numpy as np
import pytest

import fastlr.schedules as S
from _schedule_helpers import torch_lrs
from fastlr import _schedules
from fastlr.schedules import (
    Schedule, as_schedule, constant, cosine, cosine_restarts, cyclic, exponential,
    exponential_decay, from_callable, inverse_time, join, linear, multistep, one_cycle,
    piecewise_constant, piecewise_linear, polynomial, step_decay, warmup, warmup_cosine,
)

INT64_MAX = 2 ** 63 - 1
HUGE = [10 ** 6, 10 ** 9 + 7, 2 ** 40, 2 ** 53 + 1, 2 ** 62, INT64_MAX]
RTOL = 1e-12


def _pow(a, b):
    """C pow() with IEEE overflow to inf (Python raises OverflowError instead)."""
    try:
        return math.pow(a, b)
    except OverflowError:
        return math.inf


def _count_le(sorted_or_not, t):
    return sum(1 for b in sorted_or_not if b <= t)


# ---------------------------------------------------------------------------------------
# closed forms (plain Python, from the spec)
# ---------------------------------------------------------------------------------------
def cf_constant(value):
    return lambda t: value


def cf_step_decay(init, step_size, gamma=0.1):
    return lambda t: init * _pow(gamma, t // step_size)


def cf_multistep(init, milestones, gamma=0.1):
    # every milestone <= t counts, duplicates included, in any order
    return lambda t: init * _pow(gamma, _count_le(milestones, t))


def cf_exponential(init, gamma):
    return lambda t: init * _pow(gamma, t)


def cf_exponential_decay(init, transition_steps, rate, staircase=False, begin=0, end=None):
    # optax exponential_decay, literally: clip with max when rate < 1, min otherwise
    def f(t):
        c = t - begin
        p = c / transition_steps
        if staircase:
            p = math.floor(p)
        v = init if c <= 0 else init * _pow(rate, p)
        if end is not None:
            v = max(v, end) if rate < 1.0 else min(v, end)
        return v
    return f


def cf_inverse_time(init, decay_steps, rate, staircase=False):
    def f(t):
        p = t // decay_steps if staircase else t / decay_steps
        return init / (1 + rate * p)
    return f


def cf_polynomial(init, total, end=0.0, power=1.0):
    return lambda t: (init - end) * _pow(1 - min(t, total) / total, power) + end


def cf_linear(init, start_factor=1 / 3, end_factor=1.0, total=5):
    return lambda t: init * (start_factor + (end_factor - start_factor) * min(t, total) / total)


def _cos_anneal(hi, lo, t, T):
    return lo + (hi - lo) * (1 + math.cos(math.pi * t / T)) / 2


def cf_cosine(init, total, end=0.0):
    return lambda t: _cos_anneal(init, end, min(t, total), total)


def cf_cosine_restarts(init, period, mult=1, end=0.0, decay=1.0):
    # SGDR with exact (unbounded) integer arithmetic: cycle i lasts period * mult**i steps;
    # decay scales each restart's amplitude above end, as Keras' m_mul does:
    # end + (init - end) * decay**i * (1 + cos(pi t / T)) / 2
    def f(t):
        if mult == 1:
            i, tc = divmod(t, period)
            length = period
        else:
            i, tc, length = 0, t, period
            while tc >= length:
                tc -= length
                length *= mult
                i += 1
        return end + (init - end) * _pow(decay, i) * (1 + math.cos(math.pi * tc / length)) / 2
    return f


def cf_cyclic(base, peak, up=2000, down=None, mode="triangular", gamma=1.0):
    # torch CyclicLR (features.md 2.1)
    down = up if down is None else down
    size = float(up + down)
    ratio = up / size

    def f(t):
        cycle = math.floor(1 + t / size)
        x = 1.0 + t / size - cycle
        scale = x / ratio if x <= ratio else (x - 1) / (ratio - 1)
        height = (peak - base) * scale
        if mode == "triangular":
            factor = 1.0
        elif mode == "triangular2":
            factor = 1 / _pow(2.0, cycle - 1)
        else:
            factor = _pow(gamma, t)
        return base + height * factor
    return f


def cf_one_cycle(peak, total, pct=0.3, anneal="cos", div=25.0, final_div=1e4,
                 three_phase=False):
    # torch OneCycleLR; after the last step (total - 1) it holds the final value
    initial = peak / div
    low = initial / final_div
    if three_phase:
        phases = [(pct * total - 1, initial, peak), (2 * pct * total - 2, peak, initial),
                  (total - 1, initial, low)]
    else:
        phases = [(pct * total - 1, initial, peak), (total - 1, peak, low)]

    def f(t):
        t = min(t, total - 1)
        start = 0.0
        for k, (end_step, a, b) in enumerate(phases):
            if t <= end_step or k == len(phases) - 1:
                frac = (t - start) / (end_step - start)
                if anneal == "cos":
                    return b + (a - b) / 2 * (math.cos(math.pi * frac) + 1)
                return (b - a) * frac + a
            start = end_step
        raise AssertionError("unreachable")
    return f


def cf_piecewise_constant(boundaries, values):
    return lambda t: values[_count_le(boundaries, t)]


def cf_piecewise_linear(boundaries, values):
    def f(t):
        if t <= boundaries[0]:
            return values[0]
        if t >= boundaries[-1]:
            return values[-1]
        for (b0, v0), (b1, v1) in zip(zip(boundaries, values), zip(boundaries[1:], values[1:])):
            if b0 <= t < b1:
                return v0 + (v1 - v0) * (t - b0) / (b1 - b0)
        raise AssertionError("unreachable")
    return f


def cf_warmup_cosine(peak, warmup_steps, total, init=0.0, end=0.0):
    # optax warmup_cosine_decay_schedule, in optax's own arithmetic:
    # join([linear_schedule(init -> peak, warmup), cosine_decay(peak, total - warmup,
    #       alpha=end/peak)], [warmup])
    alpha = end / peak
    decay_steps = total - warmup_steps

    def f(t):
        if t < warmup_steps:
            return (init - peak) * (1 - t / warmup_steps) + peak
        c = min(t - warmup_steps, decay_steps)
        return peak * ((1 - alpha) * 0.5 * (1 + math.cos(math.pi * c / decay_steps)) + alpha)
    return f


def cf_warmup(inner, warmup_steps, start_factor=0.0):
    def f(t):
        if t < warmup_steps:
            v0 = inner(0)
            return start_factor * v0 + (v0 - start_factor * v0) * t / warmup_steps
        return inner(t - warmup_steps)
    return f


def cf_join(pieces, boundaries):
    def f(t):
        i = _count_le(boundaries, t)
        return pieces[i](t - (boundaries[i - 1] if i else 0))
    return f


def cf_scale(inner, c):
    return lambda t: c * inner(t)


# ---------------------------------------------------------------------------------------
# the cases: id -> (schedule factory, closed form, horizon [steps where it changes])
# ---------------------------------------------------------------------------------------
def _cases():
    c = {}
    c["constant"] = (lambda: constant(0.25), cf_constant(0.25), 5)
    c["constant-negative"] = (lambda: constant(-3), cf_constant(-3.0), 5)
    c["step_decay"] = (lambda: step_decay(0.1, 7), cf_step_decay(0.1, 7), 40)
    c["step_decay-gamma"] = (lambda: step_decay(2.0, 3, gamma=0.5),
                             cf_step_decay(2.0, 3, 0.5), 30)
    c["step_decay-step1"] = (lambda: step_decay(1.0, 1, gamma=0.9),
                             cf_step_decay(1.0, 1, 0.9), 30)
    c["multistep-unsorted-dup"] = (lambda: multistep(0.1, [20, 5, 12, 12], gamma=0.5),
                                   cf_multistep(0.1, [20, 5, 12, 12], 0.5), 25)
    c["multistep-zero"] = (lambda: multistep(1.0, [0, 3]), cf_multistep(1.0, [0, 3]), 6)
    c["multistep-empty"] = (lambda: multistep(0.3, []), cf_multistep(0.3, []), 5)
    c["exponential"] = (lambda: exponential(0.1, 0.95), cf_exponential(0.1, 0.95), 40)
    c["exponential-growth"] = (lambda: exponential(1e-3, 1.1), cf_exponential(1e-3, 1.1), 40)
    c["exponential_decay"] = (lambda: exponential_decay(0.1, 10, 0.5),
                              cf_exponential_decay(0.1, 10, 0.5), 40)
    c["exponential_decay-staircase-begin"] = (
        lambda: exponential_decay(0.1, 4, 0.5, staircase=True, transition_begin=6),
        cf_exponential_decay(0.1, 4, 0.5, True, 6), 30)
    c["exponential_decay-floor"] = (
        lambda: exponential_decay(1.0, 3, 0.5, transition_begin=2, end=0.1),
        cf_exponential_decay(1.0, 3, 0.5, False, 2, 0.1), 20)
    c["exponential_decay-cap"] = (
        lambda: exponential_decay(0.01, 2, 3.0, end=1.0),
        cf_exponential_decay(0.01, 2, 3.0, False, 0, 1.0), 20)
    c["exponential_decay-staircase-cap"] = (
        lambda: exponential_decay(0.01, 2, 3.0, staircase=True, end=1.0),
        cf_exponential_decay(0.01, 2, 3.0, True, 0, 1.0), 20)
    # optax: rate == 1 is not < 1, so end is an upper bound (jnp.minimum)
    c["exponential_decay-rate1-end"] = (
        lambda: exponential_decay(0.1, 10, 1.0, end=0.05),
        cf_exponential_decay(0.1, 10, 1.0, False, 0, 0.05), 20)
    c["inverse_time"] = (lambda: inverse_time(0.1, 5, 0.5), cf_inverse_time(0.1, 5, 0.5), 30)
    c["inverse_time-staircase"] = (lambda: inverse_time(0.1, 5, 0.5, staircase=True),
                                   cf_inverse_time(0.1, 5, 0.5, True), 30)
    c["polynomial"] = (lambda: polynomial(0.1, 20), cf_polynomial(0.1, 20), 20)
    c["polynomial-end-p2"] = (lambda: polynomial(0.1, 20, end=0.01, power=2.0),
                              cf_polynomial(0.1, 20, 0.01, 2.0), 20)
    c["polynomial-end-p0.5"] = (lambda: polynomial(0.1, 20, end=0.01, power=0.5),
                                cf_polynomial(0.1, 20, 0.01, 0.5), 20)
    c["polynomial-rising"] = (lambda: polynomial(0.01, 9, end=0.1, power=3),
                              cf_polynomial(0.01, 9, 0.1, 3.0), 9)
    c["linear-default"] = (lambda: linear(0.1), cf_linear(0.1), 5)
    c["linear"] = (lambda: linear(0.2, start_factor=0.1, end_factor=0.6, total_steps=12),
                   cf_linear(0.2, 0.1, 0.6, 12), 12)
    c["linear-down"] = (lambda: linear(0.2, start_factor=1.0, end_factor=0.0, total_steps=7),
                        cf_linear(0.2, 1.0, 0.0, 7), 7)
    c["cosine"] = (lambda: cosine(0.1, 20), cf_cosine(0.1, 20), 20)
    c["cosine-end"] = (lambda: cosine(0.1, 17, end=0.001), cf_cosine(0.1, 17, 0.001), 17)
    c["cosine-T1"] = (lambda: cosine(0.1, 1), cf_cosine(0.1, 1), 4)
    c["cosine_restarts"] = (lambda: cosine_restarts(0.1, 7),
                            cf_cosine_restarts(0.1, 7), 40)
    c["cosine_restarts-mult2"] = (lambda: cosine_restarts(0.1, 3, period_mult=2),
                                  cf_cosine_restarts(0.1, 3, 2), 60)
    c["cosine_restarts-mult3-end-decay"] = (
        lambda: cosine_restarts(0.1, 2, period_mult=3, end=0.002, decay=0.5),
        cf_cosine_restarts(0.1, 2, 3, 0.002, 0.5), 60)
    c["cosine_restarts-mult1-end-decay"] = (
        lambda: cosine_restarts(0.1, 5, end=0.01, decay=0.8),
        cf_cosine_restarts(0.1, 5, 1, 0.01, 0.8), 40)
    c["cosine_restarts-period1"] = (lambda: cosine_restarts(1.0, 1, period_mult=2),
                                    cf_cosine_restarts(1.0, 1, 2), 40)
    # cycles whose length no longer fits in int64 (reached only near t = 2**63)
    c["cosine_restarts-mult3-overflow"] = (lambda: cosine_restarts(1.0, 1, period_mult=3),
                                           cf_cosine_restarts(1.0, 1, 3), 40)
    c["cosine_restarts-mult2-overflow"] = (lambda: cosine_restarts(1.0, 2 ** 61, period_mult=2),
                                           cf_cosine_restarts(1.0, 2 ** 61, 2), 4)
    c["cyclic-triangular"] = (lambda: cyclic(0.01, 0.1, step_size_up=4),
                              cf_cyclic(0.01, 0.1, 4), 30)
    c["cyclic-triangular-asym"] = (lambda: cyclic(0.01, 0.1, step_size_up=3, step_size_down=7),
                                   cf_cyclic(0.01, 0.1, 3, 7), 40)
    c["cyclic-triangular2"] = (
        lambda: cyclic(0.01, 0.1, step_size_up=5, step_size_down=2, mode="triangular2"),
        cf_cyclic(0.01, 0.1, 5, 2, "triangular2"), 40)
    c["cyclic-exp_range"] = (
        lambda: cyclic(0.01, 0.1, step_size_up=4, step_size_down=6, mode="exp_range",
                       gamma=0.97),
        cf_cyclic(0.01, 0.1, 4, 6, "exp_range", 0.97), 40)
    c["cyclic-down0"] = (lambda: cyclic(0.01, 0.1, step_size_up=4, step_size_down=0),
                         cf_cyclic(0.01, 0.1, 4, 0), 20)
    # step_size_up + step_size_down beyond int64 (each one valid on its own)
    c["cyclic-huge-sizes"] = (
        lambda: cyclic(0.01, 0.1, step_size_up=2 ** 62, step_size_down=2 ** 62),
        cf_cyclic(0.01, 0.1, 2 ** 62, 2 ** 62), 4)
    c["one_cycle-cos"] = (lambda: one_cycle(0.1, 30), cf_one_cycle(0.1, 30), 30)
    c["one_cycle-linear"] = (
        lambda: one_cycle(0.1, 31, pct_start=0.25, anneal="linear", div_factor=10.0,
                          final_div_factor=100.0),
        cf_one_cycle(0.1, 31, 0.25, "linear", 10.0, 100.0), 31)
    c["one_cycle-three-phase"] = (
        lambda: one_cycle(0.1, 40, pct_start=0.35, three_phase=True),
        cf_one_cycle(0.1, 40, 0.35, "cos", 25.0, 1e4, True), 40)
    c["one_cycle-three-phase-linear"] = (
        lambda: one_cycle(1.0, 23, pct_start=0.4, anneal="linear", three_phase=True),
        cf_one_cycle(1.0, 23, 0.4, "linear", 25.0, 1e4, True), 23)
    c["piecewise_constant"] = (
        lambda: piecewise_constant([3, 8, 9], [1.0, 0.5, 0.25, 0.125]),
        cf_piecewise_constant([3, 8, 9], [1.0, 0.5, 0.25, 0.125]), 12)
    c["piecewise_constant-zero"] = (lambda: piecewise_constant([0], [1.0, 2.0]),
                                    cf_piecewise_constant([0], [1.0, 2.0]), 3)
    c["piecewise_constant-single"] = (lambda: piecewise_constant([], [0.7]),
                                      cf_piecewise_constant([], [0.7]), 3)
    c["piecewise_linear"] = (
        lambda: piecewise_linear([4, 10, 11, 20], [0.0, 1.0, 0.5, 0.1]),
        cf_piecewise_linear([4, 10, 11, 20], [0.0, 1.0, 0.5, 0.1]), 20)
    c["piecewise_linear-one-knot"] = (lambda: piecewise_linear([5], [0.3]),
                                      cf_piecewise_linear([5], [0.3]), 8)
    c["warmup_cosine"] = (lambda: warmup_cosine(1e-3, warmup_steps=5, total_steps=25),
                          cf_warmup_cosine(1e-3, 5, 25), 25)
    c["warmup_cosine-init-end"] = (
        lambda: warmup_cosine(0.1, warmup_steps=6, total_steps=20, init=0.01, end=0.001),
        cf_warmup_cosine(0.1, 6, 20, 0.01, 0.001), 20)
    c["warmup_cosine-nowarmup"] = (lambda: warmup_cosine(0.1, warmup_steps=0, total_steps=15,
                                                         end=0.01),
                                   cf_warmup_cosine(0.1, 0, 15, 0.0, 0.01), 15)
    c["warmup-sf0"] = (lambda: warmup(cosine(0.1, 20), 5),
                       cf_warmup(cf_cosine(0.1, 20), 5), 25)
    c["warmup-sf0.1"] = (lambda: warmup(step_decay(0.1, 4, gamma=0.5), 6, start_factor=0.1),
                         cf_warmup(cf_step_decay(0.1, 4, 0.5), 6, 0.1), 30)
    c["warmup-of-number"] = (lambda: warmup(0.2, 4, start_factor=0.5),
                             cf_warmup(cf_constant(0.2), 4, 0.5), 8)
    c["join"] = (
        lambda: join([linear(0.1, start_factor=0.1, total_steps=5), cosine(0.1, 20, end=0.001)],
                     [5]),
        cf_join([cf_linear(0.1, 0.1, 1.0, 5), cf_cosine(0.1, 20, 0.001)], [5]), 25)
    c["join-three"] = (
        lambda: join([constant(0.5), step_decay(1.0, 2), 0.125], [3, 10]),
        cf_join([cf_constant(0.5), cf_step_decay(1.0, 2), cf_constant(0.125)], [3, 10]), 15)
    c["join-boundary0"] = (lambda: join([constant(9.0), exponential(1.0, 0.5)], [0]),
                           cf_join([cf_constant(9.0), cf_exponential(1.0, 0.5)], [0]), 10)
    c["join-nested"] = (
        lambda: join([join([constant(1.0), linear(2.0, total_steps=4)], [2]),
                      warmup(cosine(1.0, 6), 3, start_factor=0.2)], [7]),
        cf_join([cf_join([cf_constant(1.0), cf_linear(2.0, 1 / 3, 1.0, 4)], [2]),
                 cf_warmup(cf_cosine(1.0, 6), 3, 0.2)], [7]), 16)
    c["scale-right"] = (lambda: cosine(0.1, 10) * 3.0, cf_scale(cf_cosine(0.1, 10), 3.0), 10)
    c["scale-left"] = (lambda: 0.5 * step_decay(1.0, 3), cf_scale(cf_step_decay(1.0, 3), 0.5),
                       12)
    c["scale-nested"] = (lambda: 2 * (warmup(polynomial(1.0, 8, power=2), 2) * 0.25),
                         cf_scale(cf_scale(cf_warmup(cf_polynomial(1.0, 8, 0.0, 2.0), 2), 0.25),
                                  2.0), 10)
    return c


CASES = _cases()


def _steps(horizon):
    return list(range(0, 3 * horizon + 4)) + HUGE


def assert_matches(got, expected, scale, context=""):
    got = np.asarray(got, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    # tight relative tolerance; the absolute term only covers values that cancel to ~0
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=1e-15 * scale, err_msg=context)


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_closed_form(case):
    make, form, horizon = CASES[case]
    s = make()
    steps = _steps(horizon)
    expected = [form(t) for t in steps]
    scale = max(abs(v) for v in expected if math.isfinite(v))
    got_values = s.values(steps)
    got_calls = [s(t) for t in steps]
    for t, g, e in zip(steps, got_calls, expected):
        assert_matches(g, e, scale, context=f"{case} at t={t}: got {g!r}, expected {e!r}")
    assert_matches(got_values, expected, scale, context=case)


def test_closed_form_sanity():
    # the closed forms themselves hit the textbook values (guards against a shared mistake)
    assert cf_cosine(1.0, 10)(5) == pytest.approx(0.5, rel=1e-15)
    assert cf_cosine(1.0, 10)(10) == 0.0
    assert cf_one_cycle(1.0, 10, 0.5, "linear", 10.0, 10.0)(4) == pytest.approx(1.0)
    assert cf_one_cycle(1.0, 10, 0.5, "linear", 10.0, 10.0)(9) == pytest.approx(0.01)
    assert cf_cyclic(0.0, 1.0, 2, 2)(2) == 1.0
    assert cf_cyclic(0.0, 1.0, 2, 2)(4) == 0.0
    assert cf_cyclic(0.0, 1.0, 2, 2, "triangular2")(6) == 0.5
    assert cf_cosine_restarts(1.0, 2, 2)(2) == 1.0          # restart after 2 steps
    assert cf_cosine_restarts(1.0, 2, 2)(4) == pytest.approx(0.5)   # middle of a 4-step cycle
    assert cf_cosine_restarts(1.0, 2, 2)(6) == 1.0          # next restart at 2 + 4
    assert cf_warmup_cosine(1e-3, 2, 6)(4) == pytest.approx(0.0005)


def test_doc_values():
    # the literal values from the module docstring
    s = warmup_cosine(1e-3, warmup_steps=2, total_steps=6)
    expected = [0.0, 0.0005, 0.001, 0.000853553390593, 0.0005, 0.000146446609407, 0.0, 0.0]
    np.testing.assert_allclose(s.values(range(8)), expected, rtol=1e-11, atol=1e-18)
    # piecewise_constant switches AT the boundary (optax), not one step later (Keras)
    p = piecewise_constant([3], [1.0, 2.0])
    assert (p(2), p(3)) == (1.0, 2.0)
    # multistep: a duplicate milestone applies gamma twice
    m = multistep(1.0, [2, 2], gamma=0.5)
    assert m.values([1, 2, 3]).tolist() == [1.0, 0.25, 0.25]
    # join: each piece restarts at 0
    j = join([constant(5.0), linear(1.0, start_factor=0.0, total_steps=4)], [10])
    assert j.values([9, 10, 11, 14]).tolist() == [5.0, 0.0, 0.25, 1.0]


def test_warmup_zero_steps_is_the_schedule():
    s = cosine(0.1, 10)
    assert warmup(s, 0) is s
    assert warmup(s, 0, start_factor=0.5) is s


# ---------------------------------------------------------------------------------------
# torch.optim.lr_scheduler parity
# ---------------------------------------------------------------------------------------
_torch_lrs = torch_lrs


# (id, torch factory, base lr, n, fastlr schedule, rtol)
# rtol 1e-12 even for torch's recursive (chainable) forms: over these lengths their drift from
# the closed form stays at a few ulps. Closed-form (absolute) torch schedulers are compared to
# 1e-14.
TORCH_CASES = [
    ("StepLR", lambda L, o: L.StepLR(o, step_size=3, gamma=0.5), 0.1, 30,
     lambda: step_decay(0.1, 3, gamma=0.5), 1e-12),
    ("MultiStepLR-unsorted-dup", lambda L, o: L.MultiStepLR(o, [12, 3, 7, 7], gamma=0.3), 0.1,
     25, lambda: multistep(0.1, [12, 3, 7, 7], gamma=0.3), 1e-12),
    ("ExponentialLR", lambda L, o: L.ExponentialLR(o, gamma=0.93), 0.1, 60,
     lambda: exponential(0.1, 0.93), 1e-12),
    ("CosineAnnealingLR", lambda L, o: L.CosineAnnealingLR(o, T_max=20, eta_min=0.001), 0.1,
     21, lambda: cosine(0.1, 20, end=0.001), 1e-12),
    ("CosineAnnealingWarmRestarts-mult1",
     lambda L, o: L.CosineAnnealingWarmRestarts(o, T_0=5, T_mult=1, eta_min=0.001), 0.1, 40,
     lambda: cosine_restarts(0.1, 5, end=0.001), 1e-14),
    ("CosineAnnealingWarmRestarts-mult2",
     lambda L, o: L.CosineAnnealingWarmRestarts(o, T_0=3, T_mult=2, eta_min=0.001), 0.1, 100,
     lambda: cosine_restarts(0.1, 3, period_mult=2, end=0.001), 1e-14),
    ("PolynomialLR", lambda L, o: L.PolynomialLR(o, total_iters=10, power=2.0), 0.1, 25,
     lambda: polynomial(0.1, 10, power=2.0), 1e-12),
    ("PolynomialLR-p1", lambda L, o: L.PolynomialLR(o, total_iters=7), 0.1, 12,
     lambda: polynomial(0.1, 7), 1e-12),
    ("LinearLR", lambda L, o: L.LinearLR(o, start_factor=0.25, end_factor=0.75, total_iters=8),
     0.1, 20, lambda: linear(0.1, start_factor=0.25, end_factor=0.75, total_steps=8), 1e-12),
    ("LinearLR-default", lambda L, o: L.LinearLR(o), 0.1, 10, lambda: linear(0.1), 1e-12),
    ("CyclicLR-triangular",
     lambda L, o: L.CyclicLR(o, 0.01, 0.1, step_size_up=4, cycle_momentum=False), 0.5, 40,
     lambda: cyclic(0.01, 0.1, step_size_up=4), 1e-14),
    ("CyclicLR-triangular-asym",
     lambda L, o: L.CyclicLR(o, 0.01, 0.1, step_size_up=3, step_size_down=7,
                             cycle_momentum=False), 0.5, 45,
     lambda: cyclic(0.01, 0.1, step_size_up=3, step_size_down=7), 1e-14),
    ("CyclicLR-triangular2",
     lambda L, o: L.CyclicLR(o, 0.01, 0.1, step_size_up=5, step_size_down=2,
                             mode="triangular2", cycle_momentum=False), 0.5, 45,
     lambda: cyclic(0.01, 0.1, step_size_up=5, step_size_down=2, mode="triangular2"), 1e-14),
    ("CyclicLR-exp_range",
     lambda L, o: L.CyclicLR(o, 0.01, 0.1, step_size_up=4, step_size_down=6, mode="exp_range",
                             gamma=0.97, cycle_momentum=False), 0.5, 45,
     lambda: cyclic(0.01, 0.1, step_size_up=4, step_size_down=6, mode="exp_range",
                    gamma=0.97), 1e-14),
    ("OneCycleLR-cos",
     lambda L, o: L.OneCycleLR(o, 0.1, total_steps=30, cycle_momentum=False), 0.5, 30,
     lambda: one_cycle(0.1, 30), 1e-14),
    ("OneCycleLR-linear",
     lambda L, o: L.OneCycleLR(o, 0.1, total_steps=31, pct_start=0.25,
                               anneal_strategy="linear", div_factor=10.0,
                               final_div_factor=100.0, cycle_momentum=False), 0.5, 31,
     lambda: one_cycle(0.1, 31, pct_start=0.25, anneal="linear", div_factor=10.0,
                       final_div_factor=100.0), 1e-14),
    ("OneCycleLR-three-phase",
     lambda L, o: L.OneCycleLR(o, 0.1, total_steps=40, pct_start=0.35, three_phase=True,
                               cycle_momentum=False), 0.5, 40,
     lambda: one_cycle(0.1, 40, pct_start=0.35, three_phase=True), 1e-14),
    ("OneCycleLR-three-phase-linear",
     lambda L, o: L.OneCycleLR(o, 1.0, total_steps=23, pct_start=0.4, three_phase=True,
                               anneal_strategy="linear", cycle_momentum=False), 0.5, 23,
     lambda: one_cycle(1.0, 23, pct_start=0.4, anneal="linear", three_phase=True), 1e-14),
    ("SequentialLR-warmup-cosine",
     lambda L, o: L.SequentialLR(o, [L.LinearLR(o, start_factor=0.1, total_iters=5),
                                     L.CosineAnnealingLR(o, T_max=20, eta_min=0.001)],
                                 milestones=[5]), 0.1, 26,
     lambda: join([linear(0.1, start_factor=0.1, total_steps=5), cosine(0.1, 20, end=0.001)],
                  [5]), 1e-12),
]


@pytest.mark.parametrize("name,make_torch,base_lr,n,make,rtol", TORCH_CASES,
                         ids=[c[0] for c in TORCH_CASES])
def test_torch_parity(name, make_torch, base_lr, n, make, rtol):
    expected = _torch_lrs(make_torch, base_lr, n)
    got = make().values(range(n))
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=1e-17, err_msg=name)


def test_torch_cosine_annealing_rises_after_t_max_but_fastlr_holds():
    # By design: torch's CosineAnnealingLR is periodic (rises again after T_max); cosine() holds
    expected = _torch_lrs(lambda L, o: L.CosineAnnealingLR(o, T_max=10, eta_min=0.0), 0.1, 16)
    got = cosine(0.1, 10).values(range(16))
    np.testing.assert_allclose(got[:11], expected[:11], rtol=1e-12, atol=1e-17)
    assert expected[15] > 0.01 and got[11:].tolist() == [0.0] * 5


# ---------------------------------------------------------------------------------------
# s(t), s.values(ts) and the compiled loop agree bit for bit
# ---------------------------------------------------------------------------------------
def _py_fn(t):
    return 0.1 / (1 + t % 7)


ALL_FACTORIES = {name: make for name, (make, _, _) in CASES.items()}
ALL_FACTORIES.update({
    "from_callable": lambda: from_callable(_py_fn),
    "join-with-callable": lambda: join([cosine(0.1, 5), _py_fn], [5]),
    "warmup-callable": lambda: warmup(_py_fn, 4, start_factor=0.1),
    "scaled-callable": lambda: as_schedule(_py_fn) * 2.0,
})

BIT_STEPS = list(range(0, 130)) + [997, 4096, 65537] + HUGE


@pytest.mark.parametrize("name", list(ALL_FACTORIES), ids=list(ALL_FACTORIES))
def test_values_call_and_compiled_loop_bitwise(name):
    s = ALL_FACTORIES[name]()
    ts = np.array(BIT_STEPS, dtype=np.int64)
    vals = s.values(ts)
    assert vals.dtype == np.float64 and vals.shape == ts.shape
    calls = np.array([s(int(t)) for t in ts])
    np.testing.assert_array_equal(vals.view(np.uint64), calls.view(np.uint64))
    assert all(type(s(int(t))) is float for t in ts[:3])
    # numpy integer scalars are steps too
    assert s(np.int64(5)) == s(5) and s(np.uint8(5)) == s(5)
    # other integer containers and dtypes give the same bits
    small = BIT_STEPS[:130]
    ref = s.values(np.array(small, dtype=np.int64))
    for ts_other in (small, tuple(small), range(130), np.array(small, dtype=np.int32),
                     np.array(small, dtype=np.uint8), np.array(small, dtype=np.uint64),
                     np.array(small, dtype=np.float64)):
        np.testing.assert_array_equal(s.values(ts_other).view(np.uint64), ref.view(np.uint64))
    # 2-D (and Fortran-ordered, and 0-d) steps keep their shape
    grid = np.arange(60, dtype=np.int64).reshape(6, 10)
    v2 = s.values(grid)
    assert v2.shape == (6, 10)
    np.testing.assert_array_equal(v2.ravel(), s.values(np.arange(60)))
    np.testing.assert_array_equal(s.values(np.asfortranarray(grid)), v2)
    np.testing.assert_array_equal(s.values(grid[:, ::3]), v2[:, ::3])
    assert s.values([]).shape == (0,)
    # the compiled loop (_time_evaluations) sums the same doubles in the same order
    for t0, n in ((0, 200), (37, 50), (2 ** 62, 10)):
        seconds, total = _schedules._time_evaluations(s, n, t0)
        assert seconds >= 0.0
        acc = 0.0
        for v in s.values(np.arange(t0, t0 + n, dtype=np.int64)).tolist():
            acc += v
        assert total == acc or (math.isnan(total) and math.isnan(acc)), (t0, n)
    seconds, total = _schedules._time_evaluations(s, 0)
    assert total == 0.0


# ---------------------------------------------------------------------------------------
# pickle and repr
# ---------------------------------------------------------------------------------------
PICKLE_STEPS = list(range(0, 90)) + HUGE


@pytest.mark.parametrize("name", list(ALL_FACTORIES), ids=list(ALL_FACTORIES))
def test_pickle_round_trip(name):
    s = ALL_FACTORIES[name]()
    for protocol in (2, pickle.HIGHEST_PROTOCOL):
        r = pickle.loads(pickle.dumps(s, protocol=protocol))
        assert isinstance(r, Schedule) and r is not s
        assert repr(r) == repr(s)
        assert r == s and hash(r) == hash(s)
        assert r.is_compiled == s.is_compiled
        np.testing.assert_array_equal(r.values(PICKLE_STEPS).view(np.uint64),
                                      s.values(PICKLE_STEPS).view(np.uint64))


@pytest.mark.parametrize("name", [n for n in CASES], ids=list(CASES))
def test_repr_evaluates_to_an_equal_schedule(name):
    s = CASES[name][0]()
    namespace = {}
    exec("from fastlr.schedules import *", namespace)
    r = eval(repr(s), namespace)
    assert repr(r) == repr(s) and r == s
    np.testing.assert_array_equal(r.values(PICKLE_STEPS), s.values(PICKLE_STEPS))


REPRS = [
    "constant(0.1)",
    "step_decay(0.1, 30)",
    "step_decay(0.1, 30, gamma=0.5)",
    "multistep(0.1, [30, 10, 30])",
    "multistep(0.1, [30, 80], gamma=0.2)",
    "exponential(0.1, 0.99)",
    "exponential_decay(0.1, 100, 0.5)",
    "exponential_decay(0.1, 100, 0.5, staircase=True, transition_begin=10, end=0.001)",
    "inverse_time(0.1, 10, 0.5, staircase=True)",
    "polynomial(0.1, 100)",
    "polynomial(0.1, 100, end=0.001, power=2.0)",
    "linear(0.1)",
    "linear(0.1, start_factor=0.1, end_factor=0.5, total_steps=10)",
    "cosine(0.1, 100)",
    "cosine(0.1, 100, end=0.001)",
    "cosine_restarts(0.1, 10, period_mult=2, end=0.001, decay=0.5)",
    "cyclic(0.01, 0.1)",
    "cyclic(0.01, 0.1, step_size_up=4, step_size_down=6, mode='exp_range', gamma=0.99)",
    "one_cycle(0.1, 100)",
    "one_cycle(0.1, 100, pct_start=0.25, anneal='linear', three_phase=True)",
    "piecewise_constant([10, 20], [0.1, 0.01, 0.001])",
    "piecewise_linear([0, 10], [0.0, 0.1])",
    "warmup_cosine(0.001, warmup_steps=2, total_steps=6)",
    "warmup_cosine(0.1, warmup_steps=10, total_steps=100, init=0.01, end=0.001)",
    "warmup(cosine(0.1, 100), 10)",
    "warmup(cosine(0.1, 100), 10, start_factor=0.1)",
    "join([linear(0.1, start_factor=0.1), cosine(0.1, 100)], [5])",
    "join([join([constant(1.0), constant(2.0)], [3]), cosine(0.1, 100)], [5])",
    "cosine(0.1, 100) * 2.0",
    "warmup(cosine(0.1, 100) * 0.5, 3) * 2.0",
]


@pytest.mark.parametrize("text", REPRS)
def test_repr_reads_like_the_call(text):
    namespace = {}
    exec("from fastlr.schedules import *", namespace)
    assert repr(eval(text, namespace)) == text


def test_repr_details():
    assert repr(cosine(0.1, 100, end=0.001)) == "cosine(0.1, 100, end=0.001)"
    # defaults passed explicitly are left out; the left-scaled form reads as s * c
    assert repr(cosine(0.1, 100, end=0.0)) == "cosine(0.1, 100)"
    assert repr(linear(0.1, start_factor=1 / 3)) == "linear(0.1)"
    assert repr(2.0 * cosine(0.1, 100)) == "cosine(0.1, 100) * 2.0"
    assert repr(as_schedule(0.1)) == "constant(0.1)"
    assert repr(as_schedule(_py_fn)).startswith("from_callable(<function _py_fn")
    assert repr(warmup(0.3, 2)) == "warmup(constant(0.3), 2)"


def test_iterator_arguments_round_trip():
    # boundaries/milestones/values are consumed once by validation; repr and pickle must
    # still describe the schedule that was built
    cases = [
        (lambda: multistep(0.1, iter([3, 5])), "multistep(0.1, [3, 5])"),
        (lambda: piecewise_constant(iter([3]), iter([1.0, 2.0])),
         "piecewise_constant([3], [1.0, 2.0])"),
        (lambda: piecewise_linear((b for b in [0, 4]), (v for v in [0.0, 1.0])),
         "piecewise_linear([0, 4], [0.0, 1.0])"),
        (lambda: join([constant(1.0), constant(2.0)], iter([3])),
         "join([constant(1.0), constant(2.0)], [3])"),
    ]
    for make, text in cases:
        s = make()
        assert repr(s) == text
        r = pickle.loads(pickle.dumps(s))
        np.testing.assert_array_equal(r.values(range(8)), s.values(range(8)))


# ---------------------------------------------------------------------------------------
# invalid arguments raise at construction, naming the argument
# ---------------------------------------------------------------------------------------
NAN, INF = float("nan"), float("inf")
E = (ValueError, TypeError)   # non-integer lengths: either is acceptable
C = cosine(0.1, 10)

INVALID = [
    # constant
    (lambda: constant(NAN), ValueError, "value"),
    (lambda: constant(INF), ValueError, "value"),
    (lambda: constant("0.1"), TypeError, "value"),
    (lambda: constant(True), TypeError, "value"),
    # step_decay
    (lambda: step_decay(0.1, 0), ValueError, "step_size"),
    (lambda: step_decay(0.1, -3), ValueError, "step_size"),
    (lambda: step_decay(0.1, 2.5), E, "step_size"),
    (lambda: step_decay(0.1, 3, gamma=-0.1), ValueError, "gamma"),
    (lambda: step_decay(NAN, 3), ValueError, "init"),
    # multistep
    (lambda: multistep(0.1, [3, -1]), ValueError, r"milestones\[1\]"),
    (lambda: multistep(0.1, [2.5]), E, r"milestones\[0\]"),
    (lambda: multistep(0.1, 5), TypeError, "milestones"),
    (lambda: multistep(0.1, [3], gamma=NAN), ValueError, "gamma"),
    (lambda: multistep(INF, [3]), ValueError, "init"),
    # exponential
    (lambda: exponential(0.1, -0.5), ValueError, "gamma"),
    (lambda: exponential(NAN, 0.9), ValueError, "init"),
    (lambda: exponential(0.1, INF), ValueError, "gamma"),
    # exponential_decay
    (lambda: exponential_decay(0.1, 0, 0.5), ValueError, "transition_steps"),
    (lambda: exponential_decay(0.1, -2, 0.5), ValueError, "transition_steps"),
    (lambda: exponential_decay(0.1, 10, 0.0), ValueError, "decay_rate"),
    (lambda: exponential_decay(0.1, 10, -0.5), ValueError, "decay_rate"),
    (lambda: exponential_decay(0.1, 10, 0.5, transition_begin=-1), ValueError,
     "transition_begin"),
    (lambda: exponential_decay(0.1, 10, 0.5, end=NAN), ValueError, "end"),
    (lambda: exponential_decay(0.1, 10, 0.5, end=INF), ValueError, "end"),
    (lambda: exponential_decay(NAN, 10, 0.5), ValueError, "init"),
    (lambda: exponential_decay(0.1, 10, 0.5, staircase="yes"), TypeError, "staircase"),
    # inverse_time
    (lambda: inverse_time(0.1, 0, 0.5), ValueError, "decay_steps"),
    (lambda: inverse_time(0.1, -1, 0.5), ValueError, "decay_steps"),
    (lambda: inverse_time(0.1, 10, -0.5), ValueError, "decay_rate"),
    (lambda: inverse_time(INF, 10, 0.5), ValueError, "init"),
    # polynomial
    (lambda: polynomial(0.1, 0), ValueError, "total_steps"),
    (lambda: polynomial(0.1, -5), ValueError, "total_steps"),
    (lambda: polynomial(0.1, 10, power=-1.0), ValueError, "power"),
    (lambda: polynomial(0.1, 10, end=INF), ValueError, "end"),
    (lambda: polynomial(NAN, 10), ValueError, "init"),
    # linear
    (lambda: linear(0.1, total_steps=0), ValueError, "total_steps"),
    (lambda: linear(0.1, start_factor=-0.1), ValueError, "start_factor"),
    (lambda: linear(0.1, end_factor=NAN), ValueError, "end_factor"),
    (lambda: linear(NAN), ValueError, "init"),
    # cosine
    (lambda: cosine(0.1, 0), ValueError, "total_steps"),
    (lambda: cosine(0.1, -10), ValueError, "total_steps"),
    (lambda: cosine(0.1, 10.5), E, "total_steps"),
    (lambda: cosine(INF, 10), ValueError, "init"),
    (lambda: cosine(0.1, 10, end=NAN), ValueError, "end"),
    # cosine_restarts
    (lambda: cosine_restarts(0.1, 0), ValueError, "period"),
    (lambda: cosine_restarts(0.1, -4), ValueError, "period"),
    (lambda: cosine_restarts(0.1, 5, period_mult=0), ValueError, "period_mult"),
    (lambda: cosine_restarts(0.1, 5, period_mult=2.5), E, "period_mult"),
    (lambda: cosine_restarts(0.1, 5, decay=-1.0), ValueError, "decay"),
    (lambda: cosine_restarts(0.1, 5, end=INF), ValueError, "end"),
    (lambda: cosine_restarts(NAN, 5), ValueError, "init"),
    # cyclic
    (lambda: cyclic(0.01, 0.1, step_size_up=0), ValueError, "step_size_up"),
    (lambda: cyclic(0.01, 0.1, step_size_up=-2), ValueError, "step_size_up"),
    (lambda: cyclic(0.01, 0.1, step_size_down=-1), ValueError, "step_size_down"),
    (lambda: cyclic(0.01, 0.1, mode="triangle"), ValueError,
     r"mode.*'triangular'.*'triangular2'.*'exp_range'"),
    (lambda: cyclic(0.01, 0.1, gamma=0.0), ValueError, "gamma"),
    (lambda: cyclic(0.01, NAN), ValueError, "peak"),
    (lambda: cyclic(INF, 0.1), ValueError, "base"),
    # one_cycle
    (lambda: one_cycle(1.0, 3, pct_start=0.3), ValueError, "pct_start"),
    (lambda: one_cycle(1.0, 100, pct_start=0.0), ValueError, "pct_start"),
    (lambda: one_cycle(1.0, 100, pct_start=1.0), ValueError, "pct_start"),
    (lambda: one_cycle(1.0, 100, pct_start=1.5), ValueError, "pct_start"),
    (lambda: one_cycle(1.0, 100, pct_start=-0.1), ValueError, "pct_start"),
    (lambda: one_cycle(1.0, 10, pct_start=0.6, three_phase=True), ValueError, "pct_start"),
    (lambda: one_cycle(1.0, 2, pct_start=0.5), ValueError, "pct_start"),
    (lambda: one_cycle(1.0, 1), ValueError, "total_steps"),
    (lambda: one_cycle(1.0, 0), ValueError, "total_steps"),
    (lambda: one_cycle(1.0, -5), ValueError, "total_steps"),
    (lambda: one_cycle(1.0, 100, anneal="cosine"), ValueError, r"anneal.*'cos'.*'linear'"),
    (lambda: one_cycle(NAN, 100), ValueError, "peak"),
    (lambda: one_cycle(1.0, 100, div_factor=0.0), ValueError, "div_factor"),
    (lambda: one_cycle(1.0, 100, final_div_factor=-1.0), ValueError, "final_div_factor"),
    # piecewise_constant
    (lambda: piecewise_constant([10, 5], [1.0, 2.0, 3.0]), ValueError, "strictly increasing"),
    (lambda: piecewise_constant([5, 5], [1.0, 2.0, 3.0]), ValueError, "strictly increasing"),
    (lambda: piecewise_constant([-1], [1.0, 2.0]), ValueError, r"boundaries\[0\]"),
    (lambda: piecewise_constant([2.5], [1.0, 2.0]), E, r"boundaries\[0\]"),
    (lambda: piecewise_constant([10], [1.0]), ValueError, "values"),
    (lambda: piecewise_constant([10], [1.0, 2.0, 3.0]), ValueError, "values"),
    (lambda: piecewise_constant([10], [1.0, NAN]), ValueError, r"values\[1\]"),
    (lambda: piecewise_constant([10], [INF, 1.0]), ValueError, r"values\[0\]"),
    (lambda: piecewise_constant(10, [1.0, 2.0]), TypeError, "boundaries"),
    # piecewise_linear
    (lambda: piecewise_linear([0, 10], [1.0]), ValueError, "same length"),
    (lambda: piecewise_linear([], []), ValueError, "boundaries"),
    (lambda: piecewise_linear([10, 0], [1.0, 2.0]), ValueError, "strictly increasing"),
    (lambda: piecewise_linear([-5, 0], [1.0, 2.0]), ValueError, r"boundaries\[0\]"),
    (lambda: piecewise_linear([0, 10], [1.0, INF]), ValueError, r"values\[1\]"),
    # warmup_cosine
    (lambda: warmup_cosine(1.0, warmup_steps=10, total_steps=10), ValueError, "total_steps"),
    (lambda: warmup_cosine(1.0, warmup_steps=10, total_steps=5), ValueError, "total_steps"),
    (lambda: warmup_cosine(1.0, warmup_steps=-1, total_steps=5), ValueError, "warmup_steps"),
    (lambda: warmup_cosine(1.0, warmup_steps=0, total_steps=0), ValueError, "total_steps"),
    (lambda: warmup_cosine(NAN, warmup_steps=1, total_steps=5), ValueError, "peak"),
    (lambda: warmup_cosine(1.0, warmup_steps=1, total_steps=5, init=INF), ValueError, "init"),
    (lambda: warmup_cosine(1.0, warmup_steps=1, total_steps=5, end=NAN), ValueError, "end"),
    # warmup
    (lambda: warmup(C, -1), ValueError, "warmup_steps"),
    (lambda: warmup(C, 1.5), E, "warmup_steps"),
    (lambda: warmup(C, 5, start_factor=-0.5), ValueError, "start_factor"),
    (lambda: warmup(C, 5, start_factor=NAN), ValueError, "start_factor"),
    (lambda: warmup("x", 5), TypeError, "schedule"),
    # join
    (lambda: join([C, C], []), ValueError, "boundaries"),
    (lambda: join([C], [5]), ValueError, "boundaries"),
    (lambda: join([C, C, C], [5]), ValueError, "boundaries"),
    (lambda: join([], []), ValueError, "schedules"),
    (lambda: join([C, C], [-1]), ValueError, r"boundaries\[0\]"),
    (lambda: join([C, C, C], [10, 5]), ValueError, "strictly increasing"),
    (lambda: join([C, C, C], [5, 5]), ValueError, "strictly increasing"),
    (lambda: join([C, "x"], [5]), TypeError, r"schedules\[1\]"),
    (lambda: join(5, []), TypeError, "schedules"),
    # scaling
    (lambda: C * NAN, ValueError, "factor"),
    (lambda: INF * C, ValueError, "factor"),
    (lambda: C * "2", TypeError, None),
    (lambda: C * [2.0], TypeError, None),
    (lambda: C * True, TypeError, None),
    # conversion
    (lambda: as_schedule("x"), TypeError, "schedule"),
    (lambda: as_schedule(None), TypeError, "schedule"),
    (lambda: as_schedule(True), TypeError, "schedule"),
    (lambda: from_callable(3), TypeError, "callable"),
]


@pytest.mark.parametrize("make,exc,match", INVALID,
                         ids=[f"invalid-{i}" for i in range(len(INVALID))])
def test_invalid_arguments(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_invalid_message_names_function_and_value():
    with pytest.raises(ValueError, match=r"schedules\.cosine: total_steps.*-10"):
        cosine(0.1, -10)
    with pytest.raises(ValueError, match=r"schedules\.one_cycle.*phase"):
        one_cycle(1.0, 3, pct_start=0.3)
    with pytest.raises(ValueError, match=r"warmup_steps \(=10\)"):
        warmup_cosine(1.0, warmup_steps=10, total_steps=10)


STEP_ERRORS = [
    (-1, ValueError), (-(2 ** 70), ValueError), (2 ** 63, ValueError), (2 ** 64, ValueError),
    (1.5, TypeError), (2.0, TypeError), (True, TypeError), (False, TypeError),
    (np.bool_(True), TypeError), ("3", TypeError), (None, TypeError), (np.float64(3.0), TypeError),
    (np.int64(-1), ValueError),
]


@pytest.mark.parametrize("name", ["cosine", "join", "from_callable", "warmup-sf0.1"])
@pytest.mark.parametrize("t,exc", STEP_ERRORS, ids=[repr(t) for t, _ in STEP_ERRORS])
def test_step_argument(name, t, exc):
    s = ALL_FACTORIES[name]() if name in ALL_FACTORIES else CASES[name][0]()
    with pytest.raises(exc, match="step"):
        s(t)


VALUES_ERRORS = [
    ([-1], ValueError), ([0, 5, -3], ValueError), (np.array([[1, -2]]), ValueError),
    (np.array([-1.0]), ValueError), ([1.5], TypeError), (np.array([2.5, 3.0]), TypeError),
    ([True], TypeError), (np.array([np.nan]), TypeError), (np.array([np.inf]), TypeError),
    (["1"], TypeError), ([None], TypeError), (np.array([2 ** 63], dtype=np.uint64), ValueError),
    ([2 ** 64], E), ([2 ** 63], E),
    # a float step beyond int64 must be rejected, not cast to a garbage (negative) step
    (np.array([1e19]), E), (np.array([2.0 ** 63]), E),
]


@pytest.mark.parametrize("ts,exc", VALUES_ERRORS, ids=[f"values-{i}" for i in
                                                       range(len(VALUES_ERRORS))])
def test_values_argument(ts, exc):
    s = cosine(0.1, 10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)   # a failing cast must not mask it
        with pytest.raises(exc, match="steps|ts|step"):
            s.values(ts)


@pytest.mark.parametrize("t", [7, np.int64(7), np.array(7)], ids=["int", "int64", "0-d"])
def test_values_of_a_scalar_keeps_its_0d_shape(t):
    # "a float64 array of its shape": a 0-d input gives a 0-d output, as numpy ufuncs do
    s = cosine(0.1, 10)
    v = s.values(t)
    assert v.shape == () and v[()] == s(7)


def test_float_steps_that_are_integers_are_accepted():
    s = cosine(0.1, 10)
    assert s.values(np.array([0.0, 3.0, 1e6])).tolist() == [s(0), s(3), s(10 ** 6)]


# ---------------------------------------------------------------------------------------
# large t never raises; schedules hold their final value after their end
# ---------------------------------------------------------------------------------------
HOLDS = [
    # (factory, the step where the final value is reached)
    (lambda: cosine(0.1, 100, end=0.001), 100),
    (lambda: polynomial(0.1, 50, end=0.01, power=2.0), 50),
    (lambda: polynomial(0.1, 50, power=0.5), 50),
    (lambda: linear(0.1, start_factor=0.1, end_factor=0.7, total_steps=30), 30),
    (lambda: one_cycle(0.1, 100), 99),
    (lambda: one_cycle(0.1, 100, anneal="linear", three_phase=True), 99),
    (lambda: warmup_cosine(0.1, warmup_steps=10, total_steps=100, end=0.002), 100),
    (lambda: piecewise_constant([10, 20], [0.1, 0.01, 0.001]), 20),
    (lambda: piecewise_linear([10, 20], [0.1, 0.01]), 20),
    (lambda: multistep(0.1, [10, 30]), 30),
    (lambda: exponential_decay(1.0, 10, 0.5, end=0.01), 67),
    (lambda: join([linear(0.1, start_factor=0.1), cosine(0.1, 100, end=0.001)], [5]), 105),
    (lambda: warmup(cosine(0.1, 100, end=0.001), 10) * 2.0, 110),
]


@pytest.mark.parametrize("make,end_step", HOLDS, ids=[f"holds-{i}" for i in range(len(HOLDS))])
def test_holds_final_value(make, end_step):
    s = make()
    final = s(end_step)
    assert math.isfinite(final)
    far = [end_step + 1, end_step + 2, 3 * end_step, 10 ** 6] + HUGE
    assert [s(t) for t in far] == [final] * len(far)
    assert s.values(far).tolist() == [final] * len(far)
    # the value before the end differs (the schedule actually moves up to end_step)
    assert s(end_step - 1) != final


@pytest.mark.parametrize("name", list(CASES), ids=list(CASES))
def test_huge_steps_never_raise(name):
    s = CASES[name][0]()
    vals = s.values(HUGE)
    assert [s(t) for t in HUGE] == vals.tolist()
    assert not np.isnan(vals).any()


def test_cosine_holds_end_exactly():
    s = cosine(0.3, 10, end=0.05)
    assert s(10) == 0.05 and s(11) == 0.05 and s(2 ** 62) == 0.05
    assert polynomial(0.3, 10, end=0.05, power=2)(10 ** 6) == 0.05


# ---------------------------------------------------------------------------------------
# Python callables
# ---------------------------------------------------------------------------------------
def test_callables_evaluate():
    f = lambda t: 0.1 * 0.5 ** t  # noqa: E731
    s = as_schedule(f)
    assert not s.is_compiled
    assert s.values(range(6)).tolist() == [f(t) for t in range(6)]
    assert s(3) == f(3)
    w = warmup(f, 4, start_factor=0.1)
    assert not w.is_compiled
    expected = [cf_warmup(f, 4, 0.1)(t) for t in range(12)]
    np.testing.assert_allclose(w.values(range(12)), expected, rtol=RTOL)
    j = join([cosine(0.2, 5), f, constant(0.3)], [5, 9])
    assert not j.is_compiled
    expected = [cf_join([cf_cosine(0.2, 5), f, cf_constant(0.3)], [5, 9])(t) for t in range(14)]
    np.testing.assert_allclose(j.values(range(14)), expected, rtol=RTOL)
    assert (j * 2.0).values(range(14)).tolist() == [2.0 * v for v in j.values(range(14))]
    # the callable receives Python ints
    seen = []
    g = as_schedule(lambda t: seen.append(type(t)) or 1.0)
    g(3)
    g.values(np.arange(3, dtype=np.int32))
    assert set(seen) == {int}
    # numpy and int results are converted to float
    assert as_schedule(lambda t: np.float32(0.5))(0) == 0.5
    assert type(as_schedule(lambda t: 2)(0)) is float


def test_is_compiled():
    for name, (make, _, _) in CASES.items():
        assert make().is_compiled, name
    assert not from_callable(_py_fn).is_compiled
    assert not join([constant(1.0), join([constant(1.0), _py_fn], [2])], [3]).is_compiled
    assert not (as_schedule(_py_fn) * 3.0).is_compiled


def test_as_schedule():
    c = as_schedule(0.1)
    assert c.is_compiled and c == constant(0.1)
    assert c.values(range(4)).tolist() == [0.1] * 4
    assert as_schedule(3).values([0, 9]).tolist() == [3.0, 3.0]
    assert as_schedule(np.float64(0.5))(7) == 0.5
    s = cosine(0.1, 10)
    assert as_schedule(s) is s
    with pytest.raises(TypeError, match="callable"):
        as_schedule("x")


class Boom(Exception):
    pass


def _raising(t):
    if t >= 5:
        raise Boom(f"bad step {t}")
    return 0.1 * t


@pytest.mark.parametrize("wrap", [
    lambda f: as_schedule(f),
    lambda f: join([constant(1.0), f], [0]),
    lambda f: warmup(f, 0),
    lambda f: as_schedule(f) * 2.0,
    lambda f: join([join([f, constant(0.0)], [100]), cosine(1.0, 3)], [200]) * 0.5,
], ids=["plain", "join", "warmup0", "scaled", "nested"])
def test_callable_exception_propagates_and_clears(wrap):
    s = wrap(_raising)
    good = s(2)
    with pytest.raises(Boom, match="bad step"):
        s(5)
    assert s(2) == good                         # cleared: good input works again
    with pytest.raises(Boom):
        s.values(range(10))
    np.testing.assert_array_equal(s.values(range(5)), [s(t) for t in range(5)])
    with pytest.raises(Boom):
        _schedules._time_evaluations(s, 10)
    assert _schedules._time_evaluations(s, 3)[1] == sum(s(t) for t in range(3))
    assert s(4) == s.values([4])[0]


def test_callable_exception_during_warmup_ramp():
    calls = []

    def f(t):
        calls.append(t)
        raise Boom("at zero")

    s = warmup(f, 3)
    with pytest.raises(Boom):
        s(1)                    # the ramp evaluates f(0)
    with pytest.raises(Boom):
        s.values([0, 1, 2])
    assert calls and set(calls) == {0}


def test_callable_bad_return_type_raises():
    s = as_schedule(lambda t: "fast")
    with pytest.raises((TypeError, ValueError)):
        s(0)
    with pytest.raises((TypeError, ValueError)):
        s.values([0, 1])


def test_from_callable_pickles_with_module_level_function():
    s = join([from_callable(_py_fn), cosine(0.1, 5)], [3])
    r = pickle.loads(pickle.dumps(s))
    assert r == s and repr(r) == repr(s)
    np.testing.assert_array_equal(r.values(range(20)), s.values(range(20)))


def test_public_names():
    for name in S.__all__:
        assert hasattr(S, name), name

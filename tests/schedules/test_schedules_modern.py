"""The schedules of large-model training and optax's options (issue #17).

Each constructor against its closed form, written here in plain Python (``math``) from the
papers' and optax's formulas, at every boundary (t = 0, boundary - 1, boundary,
boundary + 1, the end, after it, huge steps) and densely in between; pickling, repr,
``values`` == ``s(t)``, and argument errors naming the argument.
"""

import math
import pickle

import numpy as np
import pytest

import fastlr.schedules as S
from fastlr.schedules import (
    cosine, inverse_sqrt, linear, noam, polynomial, rex, sgdr, warmup_cosine,
    warmup_exponential_decay, wsd,
)

INT64_MAX = 2 ** 63 - 1
HUGE = [10 ** 6, 10 ** 9 + 7, 2 ** 40, 2 ** 53 + 1, 2 ** 62, INT64_MAX]


def around(*points):
    """Every boundary, one before and one after."""
    return sorted({max(0, p + d) for p in points for d in (-1, 0, 1)})


# ---------------------------------------------------------------------------------------
# closed forms
# ---------------------------------------------------------------------------------------
def cf_wsd(peak, total, warmup=0, frac=0.1, decay="linear", end=0.0):
    d = round(frac * total)
    start = total - d

    def f(t):
        if t < warmup:
            return peak * t / warmup
        if t < start:
            return peak
        x = min(t - start, d) / d
        g = {"linear": 1 - x, "cosine": (1 + math.cos(math.pi * x)) / 2,
             "1-sqrt": 1 - math.sqrt(x)}[decay]
        return end + (peak - end) * g
    return f


def cf_inverse_sqrt(peak, warmup, init=0.0):
    # fairseq inverse_sqrt: linear warmup, then lr = peak * sqrt(warmup / t)
    return lambda t: init + (peak - init) * t / warmup if t < warmup else \
        peak * math.sqrt(warmup / t)


def cf_noam(d_model, warmup, factor=1.0):
    # Vaswani et al. 2017, eq. 3, with the update number n = t + 1
    return lambda t: factor * d_model ** -0.5 * min((t + 1) ** -0.5, (t + 1) * warmup ** -1.5)


def cf_rex(init, total, end=0.0):
    # Chen et al. 2022: (1 - z) / (1/2 + 1/2 (1 - z))
    def f(t):
        z = min(t, total) / total
        return end + (init - end) * (1 - z) / (0.5 + 0.5 * (1 - z))
    return f


def cf_optax_cosine(init, decay_steps, alpha=0.0, exponent=1.0):
    # optax.cosine_decay_schedule
    def f(t):
        c = min(t, decay_steps)
        cosine_decay = 0.5 * (1 + math.cos(math.pi * c / decay_steps))
        decayed = (1 - alpha) * cosine_decay ** exponent + alpha
        return init * decayed
    return f


def cf_optax_polynomial(init, end, power, transition_steps, transition_begin=0):
    # optax.polynomial_schedule
    def f(t):
        c = min(max(t - transition_begin, 0), transition_steps)
        frac = 1 - c / transition_steps
        return (init - end) * frac ** power + end
    return f


def cf_linear_factors(init, start, end, total, begin=0):
    def f(t):
        c = min(max(t - begin, 0), total)
        return init * (start + (end - start) * c / total)
    return f


def cf_staircase(form, stair, begin=0):
    # the smooth form evaluated at the start of each stair of `stair` steps after `begin`
    def f(t):
        c = max(t - begin, 0)
        return form(begin + c - c % stair) if t > begin else form(t)
    return f


def cf_optax_linear(init, end, transition_steps):
    # optax.linear_schedule = polynomial_schedule with power 1
    return cf_optax_polynomial(init, end, 1.0, transition_steps)


def cf_optax_exponential_decay(init, transition_steps, rate, begin=0, staircase=False,
                               end=None):
    # optax.exponential_decay
    def f(t):
        c = t - begin
        p = c / transition_steps
        if staircase:
            p = math.floor(p)
        try:
            v = init if c <= 0 else init * rate ** p
        except OverflowError:               # jnp / C pow give inf
            v = math.copysign(math.inf, init)
        if end is not None:
            v = max(v, end) if rate < 1 else min(v, end)
        return v
    return f


def cf_optax_join(forms, boundaries):
    # optax.join_schedules: each piece sees the steps since its boundary
    def f(t):
        i = sum(1 for b in boundaries if b <= t)
        return forms[i](t - (boundaries[i - 1] if i else 0))
    return f


def cf_optax_warmup_cosine(init, peak, warmup, decay_steps, end=0.0, exponent=1.0):
    # optax.warmup_cosine_decay_schedule: alpha = end / peak
    return cf_optax_join([cf_optax_linear(init, peak, warmup),
                          cf_optax_cosine(peak, decay_steps - warmup, end / peak, exponent)],
                         [warmup])


def cf_optax_warmup_exponential_decay(init, peak, warmup, transition_steps, rate, begin=0,
                                      staircase=False, end=None):
    return cf_optax_join([cf_optax_linear(init, peak, warmup),
                          cf_optax_exponential_decay(peak, transition_steps, rate, begin,
                                                     staircase, end)], [warmup])


def cf_optax_sgdr(cycles):
    # optax.sgdr_schedule: cycles joined at the cumulative decay_steps
    forms, boundaries, step = [], [], 0
    for c in cycles:
        forms.append(cf_optax_warmup_cosine(**c))
        step += c["decay_steps"]
        boundaries.append(step)
    return cf_optax_join(forms, boundaries[:-1])


SGDR_CYCLES = [dict(init=0.0, peak=0.1, warmup=5, decay_steps=40, end=0.001),
               dict(init=0.01, peak=0.05, warmup=0, decay_steps=30, end=0.0, exponent=2.0),
               dict(init=0.0, peak=0.02, warmup=10, decay_steps=25, end=0.002)]


def _fastlr_cycle(c):
    return dict(peak=c["peak"], warmup_steps=c["warmup"], total_steps=c["decay_steps"],
                init=c["init"], end=c["end"], exponent=c.get("exponent", 1.0))


# (id, fastlr schedule, closed form, boundaries)
CASES = [
    ("wsd-linear", lambda: wsd(0.1, 100, warmup_steps=10), cf_wsd(0.1, 100, 10), (10, 90, 100)),
    ("wsd-cosine", lambda: wsd(2e-3, 1000, warmup_steps=50, decay_fraction=0.2,
                               decay="cosine", end=1e-5),
     cf_wsd(2e-3, 1000, 50, 0.2, "cosine", 1e-5), (50, 800, 1000)),
    ("wsd-1-sqrt", lambda: wsd(1.0, 200, decay_fraction=0.25, decay="1-sqrt"),
     cf_wsd(1.0, 200, 0, 0.25, "1-sqrt"), (150, 200)),
    ("wsd-all-decay", lambda: wsd(1.0, 30, decay_fraction=1.0, decay="cosine"),
     cf_wsd(1.0, 30, 0, 1.0, "cosine"), (0, 30)),
    ("wsd-warmup-then-decay", lambda: wsd(0.5, 40, warmup_steps=20, decay_fraction=0.5),
     cf_wsd(0.5, 40, 20, 0.5), (20, 40)),
    ("wsd-one-step-decay", lambda: wsd(0.5, 7, warmup_steps=3, decay_fraction=0.1),
     cf_wsd(0.5, 7, 3, 0.1), (3, 6, 7)),
    ("inverse_sqrt", lambda: inverse_sqrt(0.1, 25), cf_inverse_sqrt(0.1, 25), (25, 100)),
    ("inverse_sqrt-init", lambda: inverse_sqrt(1e-3, 4000, init=1e-7),
     cf_inverse_sqrt(1e-3, 4000, 1e-7), (4000, 16000)),
    ("inverse_sqrt-1", lambda: inverse_sqrt(0.3, 1), cf_inverse_sqrt(0.3, 1), (1, 4)),
    ("noam", lambda: noam(512, 4000), cf_noam(512, 4000), (3999, 4000, 16000)),
    ("noam-factor", lambda: noam(16, 10, factor=2.0), cf_noam(16, 10, 2.0), (9, 10)),
    ("noam-1", lambda: noam(1, 1), cf_noam(1, 1), (0, 1)),
    ("rex", lambda: rex(0.1, 100), cf_rex(0.1, 100), (50, 100)),
    ("rex-end", lambda: rex(1.0, 7, end=0.25), cf_rex(1.0, 7, 0.25), (3, 7)),
    ("rex-1", lambda: rex(2.0, 1), cf_rex(2.0, 1), (1,)),
    ("optax-cosine-exponent", lambda: cosine(0.1, 50, end=0.1 * 0.2, exponent=2.0),
     cf_optax_cosine(0.1, 50, 0.2, 2.0), (25, 50)),
    ("optax-cosine-exponent-half", lambda: cosine(1.0, 30, exponent=0.5),
     cf_optax_cosine(1.0, 30, 0.0, 0.5), (30,)),
    ("optax-polynomial-begin", lambda: polynomial(0.1, 40, end=0.01, power=2.0,
                                                  transition_begin=15),
     cf_optax_polynomial(0.1, 0.01, 2.0, 40, 15), (15, 55)),
    ("optax-linear-schedule", lambda: polynomial(0.0, 20, end=0.3, transition_begin=5),
     cf_optax_polynomial(0.0, 0.3, 1.0, 20, 5), (5, 25)),
    ("linear-begin", lambda: linear(0.2, start_factor=0.1, end_factor=1.0, total_steps=12,
                                    transition_begin=8),
     cf_linear_factors(0.2, 0.1, 1.0, 12, 8), (8, 20)),
    ("polynomial-staircase", lambda: polynomial(0.1, 40, end=0.01, power=2.0,
                                                transition_begin=15, staircase_steps=6),
     cf_staircase(cf_optax_polynomial(0.1, 0.01, 2.0, 40, 15), 6, 15),
     (15, 21, 27, 51, 55, 57)),
    ("polynomial-staircase-divides", lambda: polynomial(1.0, 100, staircase_steps=25),
     cf_staircase(cf_optax_polynomial(1.0, 0.0, 1.0, 100), 25), (25, 50, 75, 100)),
    ("linear-staircase", lambda: linear(0.2, start_factor=0.1, end_factor=1.0,
                                        total_steps=12, transition_begin=8,
                                        staircase_steps=5),
     cf_staircase(cf_linear_factors(0.2, 0.1, 1.0, 12, 8), 5, 8), (8, 13, 18, 20, 23)),
    ("optax-warmup-cosine-exponent", lambda: warmup_cosine(0.1, warmup_steps=10,
                                                           total_steps=60, init=0.01,
                                                           end=0.005, exponent=1.5),
     cf_optax_warmup_cosine(0.01, 0.1, 10, 60, 0.005, 1.5), (10, 60)),
    ("optax-warmup-exponential-decay", lambda: warmup_exponential_decay(
        0.1, warmup_steps=10, transition_steps=7, decay_rate=0.6),
     cf_optax_warmup_exponential_decay(0.0, 0.1, 10, 7, 0.6), (10, 17)),
    ("optax-warmup-exponential-decay-all", lambda: warmup_exponential_decay(
        0.1, warmup_steps=8, transition_steps=5, decay_rate=0.5, init=0.02,
        transition_begin=6, staircase=True, end=0.01),
     cf_optax_warmup_exponential_decay(0.02, 0.1, 8, 5, 0.5, 6, True, 0.01),
     (8, 14, 19, 24, 29)),
    ("optax-warmup-exponential-growth-cap", lambda: warmup_exponential_decay(
        0.1, warmup_steps=3, transition_steps=4, decay_rate=1.5, end=0.3),
     cf_optax_warmup_exponential_decay(0.0, 0.1, 3, 4, 1.5, 0, False, 0.3), (3, 15)),
    ("optax-warmup-exponential-no-warmup", lambda: warmup_exponential_decay(
        0.1, warmup_steps=0, transition_steps=4, decay_rate=0.5, transition_begin=2),
     cf_optax_exponential_decay(0.1, 4, 0.5, 2), (0, 2)),
    ("optax-sgdr", lambda: sgdr([_fastlr_cycle(c) for c in SGDR_CYCLES]),
     cf_optax_sgdr(SGDR_CYCLES), (5, 40, 70, 80, 95)),
    ("optax-sgdr-one", lambda: sgdr([dict(peak=1.0, warmup_steps=2, total_steps=9)]),
     cf_optax_sgdr([dict(init=0.0, peak=1.0, warmup=2, decay_steps=9)]), (2, 9)),
]


def _steps(boundaries):
    end = max(boundaries)
    return sorted(set(range(0, 2 * end + 5, max(1, end // 200))) | set(around(*boundaries))
                  | {3 * end + 1}) + HUGE


@pytest.mark.parametrize("make,form,boundaries", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_closed_form_at_every_boundary(make, form, boundaries):
    s = make()
    steps = _steps(boundaries)
    expected = [form(t) for t in steps]
    scale = max(abs(v) for v in expected)
    got = s.values(steps)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-15 * scale)
    assert [s(t) for t in steps] == got.tolist()


def test_closed_forms_hit_the_textbook_values():
    # the closed forms (and the schedules) at points one can check by hand
    assert wsd(1.0, 100, warmup_steps=10)(5) == 0.5
    assert wsd(1.0, 100, warmup_steps=10).values([10, 89, 90, 95, 100, 500]).tolist() == \
        pytest.approx([1.0, 1.0, 1.0, 0.5, 0.0, 0.0], abs=1e-15)
    assert wsd(1.0, 100, decay="1-sqrt", decay_fraction=0.5)(75) == pytest.approx(
        1 - math.sqrt(0.5))
    assert wsd(1.0, 100, decay="cosine", decay_fraction=0.5)(75) == pytest.approx(0.5)
    assert inverse_sqrt(1.0, 10).values([5, 10, 40]).tolist() == [0.5, 1.0, 0.5]
    assert noam(512, 4000)(3999) == pytest.approx((512 * 4000) ** -0.5, rel=1e-15)
    assert rex(1.0, 10)(5) == pytest.approx(2 / 3, rel=1e-15)
    assert rex(1.0, 10)(10) == 0.0 and rex(1.0, 10)(0) == 1.0


def test_noam_is_inverse_sqrt_one_step_later():
    d, w = 256, 100
    peak = (d * w) ** -0.5
    n, i = noam(d, w), inverse_sqrt(peak, w)
    steps = np.arange(0, 1000)
    np.testing.assert_allclose(n.values(steps), i.values(steps + 1), rtol=1e-13)


def test_wsd_phases_are_monotone():
    for decay in S.WSD_DECAYS:
        v = wsd(1.0, 300, warmup_steps=30, decay_fraction=0.3, decay=decay,
                end=0.1).values(range(320))
        assert np.all(np.diff(v[:31]) > 0) and np.all(v[30:210] == 1.0)
        assert np.all(np.diff(v[210:301]) < 0) and np.all(v[300:] == 0.1)


def test_sgdr_holds_the_last_cycles_end_and_keeps_its_cycles():
    cycles = [dict(peak=0.1, warmup_steps=2, total_steps=10, end=0.01),
              dict(peak=0.05, warmup_steps=1, total_steps=5, end=0.003)]
    s = sgdr(cycles)
    cycles[0]["peak"] = 9.0                     # the schedule keeps its own copy
    assert s(0) == 0.0 and s(2) == 0.1 and s(10) == 0.0 and s(11) == 0.05
    assert s.values([15, 16, 10 ** 9, INT64_MAX]).tolist() == [0.003] * 4
    assert s == sgdr([dict(peak=0.1, warmup_steps=2, total_steps=10, end=0.01),
                      dict(peak=0.05, warmup_steps=1, total_steps=5, end=0.003)])


def test_exponent_one_and_begin_zero_leave_the_old_values_bitwise():
    steps = list(range(0, 70)) + HUGE
    assert cosine(0.1, 50, end=0.01, exponent=1.0).values(steps).tolist() == \
        cosine(0.1, 50, end=0.01).values(steps).tolist()
    assert cosine(0.1, 50, exponent=1.0) == cosine(0.1, 50)
    assert repr(cosine(0.1, 50, exponent=1.0)) == "cosine(0.1, 50)"
    assert repr(polynomial(0.1, 5, transition_begin=0)) == "polynomial(0.1, 5)"
    assert repr(polynomial(0.1, 5, staircase_steps=1)) == "polynomial(0.1, 5)"
    assert polynomial(0.1, 40, staircase_steps=1).values(steps).tolist() == \
        polynomial(0.1, 40).values(steps).tolist()
    # stairs of 10 over a 40-step linear decay: 4 distinct values before the end
    assert polynomial(1.0, 40, staircase_steps=10).values(range(40)).tolist() == \
        [1.0] * 10 + [0.75] * 10 + [0.5] * 10 + [0.25] * 10


@pytest.mark.parametrize("make", [c[1] for c in CASES], ids=[c[0] for c in CASES])
def test_pickle_and_repr_round_trip(make):
    s = make()
    r = pickle.loads(pickle.dumps(s))
    e = eval(repr(s), {"__builtins__": {}}, vars(S))
    steps = list(range(0, 300)) + HUGE
    for other in (r, e):
        assert other == s and repr(other) == repr(s)
        assert other.values(steps).tolist() == s.values(steps).tolist()


@pytest.mark.parametrize("text", [
    "wsd(0.1, 1000, warmup_steps=100, decay_fraction=0.2, decay='cosine', end=0.001)",
    "wsd(0.1, 1000)", "inverse_sqrt(0.001, 4000, init=1e-07)", "noam(512, 4000, factor=2.0)",
    "rex(0.1, 100, end=0.01)", "cosine(0.1, 100, exponent=2.0)",
    "polynomial(0.1, 100, transition_begin=10)", "linear(0.1, transition_begin=3)",
    "polynomial(0.1, 100, power=2.0, staircase_steps=10)",
    "linear(0.1, total_steps=20, staircase_steps=4)",
    "warmup_cosine(0.1, warmup_steps=10, total_steps=100, exponent=2.0)",
    "warmup_exponential_decay(0.1, warmup_steps=10, transition_steps=5, decay_rate=0.5, "
    "staircase=True, end=0.01)",
    "sgdr([{'peak': 0.1, 'warmup_steps': 5, 'total_steps': 50}, {'peak': 0.05, "
    "'warmup_steps': 0, 'total_steps': 20, 'end': 0.001}])",
])
def test_repr_reads_like_the_call(text):
    assert repr(eval(text, {"__builtins__": {}}, vars(S))) == text


@pytest.mark.parametrize("make,exc,match", [
    (lambda: wsd(0.1, 0), ValueError, r"fastlr.schedules.wsd: total_steps"),
    (lambda: wsd(0.1, 100.0), TypeError, "total_steps"),
    (lambda: wsd(math.nan, 100), ValueError, "peak"),
    (lambda: wsd(0.1, 100, warmup_steps=-1), ValueError, "warmup_steps"),
    (lambda: wsd(0.1, 100, decay_fraction=1.5), ValueError, "decay_fraction"),
    (lambda: wsd(0.1, 100, decay_fraction=0.0), ValueError, "decay_fraction.*rounds to 0"),
    (lambda: wsd(0.1, 10, decay_fraction=0.04), ValueError, "decay_fraction"),
    (lambda: wsd(0.1, 100, warmup_steps=95), ValueError, "do not fit in total_steps"),
    (lambda: wsd(0.1, 100, decay="sqrt"), ValueError, "decay"),
    (lambda: wsd(0.1, 100, decay=1), TypeError, "decay"),
    (lambda: wsd(0.1, 100, end="0"), TypeError, "end"),
    (lambda: inverse_sqrt(0.1, 0), ValueError, r"inverse_sqrt: warmup_steps"),
    (lambda: inverse_sqrt(0.1, 2.5), TypeError, "warmup_steps"),
    (lambda: inverse_sqrt(math.inf, 10), ValueError, "peak"),
    (lambda: inverse_sqrt(0.1, 10, init=math.nan), ValueError, "init"),
    (lambda: noam(0, 10), ValueError, r"noam: d_model"),
    (lambda: noam(512.0, 10), TypeError, "d_model"),
    (lambda: noam(512, 0), ValueError, "warmup_steps"),
    (lambda: noam(512, 10, factor=0.0), ValueError, "factor"),
    (lambda: rex(0.1, 0), ValueError, r"rex: total_steps"),
    (lambda: rex(0.1, 10, end=math.nan), ValueError, "end"),
    (lambda: rex(True, 10), TypeError, "init"),
    (lambda: cosine(0.1, 10, exponent=0.0), ValueError, r"cosine: exponent"),
    (lambda: cosine(0.1, 10, exponent="2"), TypeError, "exponent"),
    (lambda: polynomial(0.1, 10, transition_begin=-1), ValueError, "transition_begin"),
    (lambda: polynomial(0.1, 10, transition_begin=1.5), TypeError, "transition_begin"),
    (lambda: linear(0.1, transition_begin=-2), ValueError, r"linear: transition_begin"),
    (lambda: polynomial(0.1, 10, staircase_steps=0), ValueError,
     r"polynomial: staircase_steps"),
    (lambda: polynomial(0.1, 10, staircase_steps=2.0), TypeError, "staircase_steps"),
    (lambda: linear(0.1, staircase_steps=-1), ValueError, r"linear: staircase_steps"),
    (lambda: linear(0.1, staircase_steps=True), TypeError, r"linear: staircase_steps"),
    (lambda: warmup_cosine(0.1, warmup_steps=1, total_steps=5, exponent=-1.0), ValueError,
     r"warmup_cosine: exponent"),
    (lambda: warmup_exponential_decay(0.1, warmup_steps=-1, transition_steps=5,
                                      decay_rate=0.5), ValueError,
     r"warmup_exponential_decay: warmup_steps"),
    (lambda: warmup_exponential_decay(0.1, warmup_steps=1, transition_steps=0,
                                      decay_rate=0.5), ValueError,
     r"warmup_exponential_decay: transition_steps"),
    (lambda: warmup_exponential_decay(0.1, warmup_steps=1, transition_steps=5,
                                      decay_rate=0.0), ValueError, "decay_rate"),
    (lambda: warmup_exponential_decay(0.1, warmup_steps=1, transition_steps=5,
                                      decay_rate=0.5, staircase="no"), TypeError, "staircase"),
    (lambda: warmup_exponential_decay("0.1", warmup_steps=1, transition_steps=5,
                                      decay_rate=0.5), TypeError, "peak"),
    (lambda: warmup_exponential_decay(0.1, warmup_steps=1, transition_steps=5,
                                      decay_rate=0.5, init=math.nan), ValueError, "init"),
    (lambda: sgdr([]), ValueError, r"fastlr.schedules.sgdr: cycles must not be empty"),
    (lambda: sgdr(5), TypeError, r"sgdr: cycles must be a sequence"),
    (lambda: sgdr([dict(peak=1.0, warmup_steps=1, total_steps=5), 3]), TypeError,
     r"sgdr: cycles\[1\] must be a dict"),
    (lambda: sgdr([dict(peak=1.0, warmup_steps=5, total_steps=5)]), ValueError,
     r"sgdr: cycles\[0\]: .*total_steps"),
    (lambda: sgdr([dict(peak=1.0, warmup_steps=1, total_steps=5, power=2)]), TypeError,
     r"sgdr: cycles\[0\]: .*power"),
    (lambda: sgdr([dict(peak=1.0, total_steps=5)]), TypeError,
     r"sgdr: cycles\[0\]: .*warmup_steps"),
])
def test_arguments(make, exc, match):
    with pytest.raises(exc, match=match):
        make()

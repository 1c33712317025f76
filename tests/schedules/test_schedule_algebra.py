"""Schedule arithmetic and torch's compositions (issue #17).

1. ``s1 + s2``, ``s - c``, ``c - s``, ``s1 * s2``, ``s / c``, ``-s``, ``minimum``,
   ``maximum`` and ``chained`` are C nodes: each equals the same operation done in Python on
   its operands' values, bit for bit, at every step (boundaries of the operands, huge steps);
2. their repr reads like the expression (with the parentheses it needs) and evaluates to an
   equal schedule; they pickle; ``s(t)``, ``s.values(ts)`` and an optimizer's step agree;
3. Python callables as operands work and make the result need the GIL;
4. bad operands raise TypeError / ValueError naming the argument;
5. ``multiplicative``, ``constant_lr``, ``chained`` and ``lambda_lr`` against
   ``torch.optim.lr_scheduler`` (MultiplicativeLR, ConstantLR, ChainedScheduler, LambdaLR)
   for >= 100 steps, and ``multiplicative``'s running product against its definition.
"""

import math
import pickle
import random
import threading

import numpy as np
import pytest

import fastlr
import fastlr.schedules as S
from _schedule_helpers import torch_lrs
from fastlr.schedules import (
    chained, constant, constant_lr, cosine, exponential, from_callable, join, lambda_lr,
    linear, maximum, minimum, multiplicative, noam, piecewise_constant, polynomial,
    step_decay, warmup_cosine,
)

INT64_MAX = 2 ** 63 - 1
HUGE = [10 ** 6, 2 ** 40, 2 ** 62, INT64_MAX]
STEPS = list(range(0, 45)) + HUGE

A = cosine(0.1, 10, end=0.01)                   # boundaries at 0 and 10
B = exponential(0.05, 0.9)
P = piecewise_constant([5, 20], [0.3, 0.02, 0.07])   # switches at 5 and 20
W = warmup_cosine(0.2, warmup_steps=4, total_steps=30)


def _py(t):
    return 0.01 + 0.001 * (t % 3)


# (id, schedule factory, the same operation in Python on the operands' values)
EXPRESSIONS = [
    ("add", lambda: A + B, lambda t: A(t) + B(t)),
    ("add-number", lambda: A + 0.5, lambda t: A(t) + 0.5),
    ("radd-number", lambda: 0.5 + A, lambda t: 0.5 + A(t)),
    ("sub", lambda: A - B, lambda t: A(t) - B(t)),
    ("sub-number", lambda: A - 0.25, lambda t: A(t) - 0.25),
    ("rsub-number", lambda: 1.0 - A, lambda t: 1.0 - A(t)),
    ("mul", lambda: A * P, lambda t: A(t) * P(t)),
    ("mul-number", lambda: A * 3.0, lambda t: A(t) * 3.0),
    ("rmul-number", lambda: 3 * A, lambda t: 3.0 * A(t)),
    ("div-number", lambda: A / 3.0, lambda t: A(t) / 3.0),
    ("div-int", lambda: W / 7, lambda t: W(t) / 7.0),
    ("neg", lambda: -A, lambda t: -A(t)),
    ("nested", lambda: (A + B) * 2.0 - P / 4.0, lambda t: (A(t) + B(t)) * 2.0 - P(t) / 4.0),
    ("right-assoc", lambda: A - (B - P), lambda t: A(t) - (B(t) - P(t))),
    ("neg-of-sum", lambda: -(A + W), lambda t: -(A(t) + W(t))),
    ("minimum", lambda: minimum(A, B, P), lambda t: min(A(t), B(t), P(t))),
    ("minimum-number", lambda: minimum(W, 0.15), lambda t: min(W(t), 0.15)),
    ("maximum", lambda: maximum(A, P), lambda t: max(A(t), P(t))),
    ("maximum-one", lambda: maximum(A), lambda t: A(t)),
    ("chained", lambda: chained(A, B, P), lambda t: A(t) * B(t) * P(t)),
    ("clip", lambda: maximum(minimum(W * 2.0, 0.3), 0.05),
     lambda t: max(min(W(t) * 2.0, 0.3), 0.05)),
    ("add-callable", lambda: A + _py, lambda t: A(t) + _py(t)),
    ("rsub-callable", lambda: _py - A, lambda t: _py(t) - A(t)),
    ("mul-callable", lambda: A * _py, lambda t: A(t) * _py(t)),
    ("minimum-callable", lambda: minimum(_py, A), lambda t: min(_py(t), A(t))),
]


@pytest.mark.parametrize("make,form", [e[1:] for e in EXPRESSIONS],
                         ids=[e[0] for e in EXPRESSIONS])
def test_arithmetic_is_the_operation_on_the_values(make, form):
    s = make()
    expected = [form(t) for t in STEPS]
    assert s.values(STEPS).tolist() == expected
    assert [s(t) for t in STEPS] == expected


@pytest.mark.parametrize("make", [e[1] for e in EXPRESSIONS], ids=[e[0] for e in EXPRESSIONS])
def test_arithmetic_pickles_and_repr_round_trips(make):
    s = make()
    r = pickle.loads(pickle.dumps(s))
    assert r == s and repr(r) == repr(s)
    assert r.values(STEPS).tolist() == s.values(STEPS).tolist()
    if s.is_compiled:
        e = eval(repr(s), {"__builtins__": {}}, vars(S))
        assert e == s and repr(e) == repr(s)
        assert e.values(STEPS).tolist() == s.values(STEPS).tolist()


@pytest.mark.parametrize("make,text", [
    (lambda: A + B, "cosine(0.1, 10, end=0.01) + exponential(0.05, 0.9)"),
    (lambda: 0.5 - B, "0.5 - exponential(0.05, 0.9)"),
    (lambda: (B + 1) * 2, "(exponential(0.05, 0.9) + 1.0) * 2.0"),
    (lambda: B + 1 * B, "exponential(0.05, 0.9) + exponential(0.05, 0.9) * 1.0"),
    (lambda: B - (B - 1), "exponential(0.05, 0.9) - (exponential(0.05, 0.9) - 1.0)"),
    (lambda: (B - B) - 1, "exponential(0.05, 0.9) - exponential(0.05, 0.9) - 1.0"),
    (lambda: B / 2 * B, "exponential(0.05, 0.9) / 2.0 * exponential(0.05, 0.9)"),
    (lambda: -(B * B), "-(exponential(0.05, 0.9) * exponential(0.05, 0.9))"),
    (lambda: -B - 1, "-exponential(0.05, 0.9) - 1.0"),
    (lambda: B * -1, "exponential(0.05, 0.9) * -1.0"),
    (lambda: minimum(B, 0.5, -B), "minimum(exponential(0.05, 0.9), 0.5, "
                                  "-exponential(0.05, 0.9))"),
    (lambda: chained(constant_lr(0.1), B), "chained(constant_lr(0.1), exponential(0.05, 0.9))"),
])
def test_repr_reads_like_the_expression(make, text):
    s = make()
    assert repr(s) == text
    assert eval(text, {"__builtins__": {}}, vars(S)) == s


def test_operands_are_kept_distinct_in_equality():
    assert A + B != B + A and A - 0.5 != A - 0.25 and -A != A * -1.0
    assert minimum(A, B) != maximum(A, B) and chained(A, B) != A * B
    assert hash(A + B) == hash(A + B)


def test_numpy_scalars_and_0d_arrays_are_numbers():
    assert (A + np.float32(0.5)) == A + 0.5
    assert (A - np.array(0.25)) == A - 0.25
    assert minimum(A, np.int64(0)) == minimum(A, 0.0)
    # numpy scalars on the left hand the operation to the schedule
    assert np.float64(0.5) + A == 0.5 + A and np.float32(1.0) - A == 1.0 - A
    assert np.int64(3) * A == A * 3.0 and np.array(0.5) + A == 0.5 + A


def test_callable_operands_need_the_gil_and_compiled_ones_do_not():
    for s in (A + B, A - 1, minimum(A, B), chained(A, B), -A, A / 2):
        assert s.is_compiled
    for s in (A + _py, _py * A, maximum(A, _py), chained(_py, A), -(A + _py)):
        assert not s.is_compiled


class Boom(Exception):
    pass


def _boom(t):
    if t == 3:
        raise Boom("at 3")
    return 0.1


@pytest.mark.parametrize("make", [lambda: A + _boom, lambda: minimum(A, _boom),
                                  lambda: -(_boom - A), lambda: chained(A, _boom) / 2])
def test_callable_exception_propagates_through_arithmetic_and_clears(make):
    s = make()
    with pytest.raises(Boom):
        s.values(range(5))
    with pytest.raises(Boom):
        s(3)
    assert math.isfinite(s(2))              # the stored error was cleared


def test_nan_propagates_through_minimum_and_maximum():
    nan = from_callable(lambda t: math.nan)
    for s in (minimum(A, nan), minimum(nan, A), maximum(A, nan, B), maximum(nan, A)):
        assert math.isnan(s(0)) and math.isnan(s(50))


@pytest.mark.parametrize("make,exc,match", [
    (lambda: A / 0, ValueError, r"Schedule.__truediv__: the divisor must be a nonzero"),
    (lambda: A / 0.0, ValueError, "divisor"),
    (lambda: A / math.nan, ValueError, "divisor"),
    (lambda: A / math.inf, ValueError, "divisor"),
    (lambda: A / B, TypeError, "divisor must be a nonzero finite number, got Schedule"),
    (lambda: 2.0 / A, TypeError, "divisor"),
    (lambda: A / _py, TypeError, "divisor"),
    (lambda: A / "2", TypeError, None),
    (lambda: A + math.nan, ValueError, r"Schedule.__add__: other must be a finite"),
    (lambda: math.inf - A, ValueError, r"Schedule.__sub__: other"),
    (lambda: A - 2 ** 1100, ValueError, "other"),
    (lambda: A + "x", TypeError, None),
    (lambda: A + None, TypeError, None),
    (lambda: A + True, TypeError, None),
    (lambda: [1.0] - A, TypeError, None),
    (lambda: A * math.nan, ValueError, "factor"),
    (lambda: minimum(), TypeError, r"fastlr.schedules.minimum: expected at least one"),
    (lambda: maximum(), TypeError, r"fastlr.schedules.maximum"),
    (lambda: chained(), TypeError, r"fastlr.schedules.chained"),
    (lambda: minimum(A, "x"), TypeError, r"fastlr.schedules.minimum: schedules\[1\]"),
    (lambda: maximum(A, None), TypeError, r"schedules\[1\]"),
    (lambda: chained(True, A), TypeError, r"fastlr.schedules.chained: schedules\[0\]"),
    (lambda: minimum(A, math.nan), ValueError, r"fastlr.schedules.minimum: schedules\[1\]"),
    (lambda: chained(A, -math.inf), ValueError, r"schedules\[1\]"),
])
def test_bad_operands(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


@pytest.mark.parametrize("make", [lambda: (A + B) * 2.0 - P / 4.0,
                                  lambda: maximum(minimum(W * 2.0, 0.3), 0.05),
                                  lambda: A + _py, lambda: chained(A, B, P),
                                  lambda: multiplicative(0.1, linear(1.0, start_factor=0.9,
                                                                     total_steps=10))])
def test_optimizer_steps_with_the_schedules_value(make):
    s = make()
    w = np.zeros(4)
    opt = fastlr.SGD([w], lr=s)
    g = np.array([1.0, -2.0, 0.5, 4.0])
    for t in range(40):
        before = w.copy()
        opt.step([g])
        lr = s(t)
        assert opt.last_lr == [lr]
        np.testing.assert_array_equal(w, before - lr * g)


# ---------------------------------------------------------------------------------------
# multiplicative: the running product
# ---------------------------------------------------------------------------------------
def test_multiplicative_number_is_a_power():
    s = multiplicative(0.2, 0.9)
    assert s.values(range(50)).tolist() == [0.2 * math.pow(0.9, t) for t in range(50)]
    assert s(INT64_MAX) == 0.0 and s.is_compiled


def _product(init, f, t):
    v = init
    for i in range(1, t + 1):
        v = v * f(i)
    return v


@pytest.mark.parametrize("make_factor", [
    lambda: step_decay(1.0, 7, gamma=0.9), lambda: polynomial(1.0, 200),
    lambda: piecewise_constant([10, 30], [0.97, 1.0, 0.99]), lambda: (lambda t: 1 - t / 300),
], ids=["step_decay", "polynomial", "piecewise_constant", "callable"])
def test_multiplicative_is_the_product_in_order_from_any_starting_point(make_factor):
    f = make_factor()
    s = multiplicative(0.1, f)
    expected = [_product(0.1, f, t) for t in range(150)]
    assert s.values(range(150)).tolist() == expected        # forward: from the cache
    order = list(range(150))
    random.Random(4).shuffle(order)
    assert [s(t) for t in order] == [expected[t] for t in order]  # any order: the same bits
    assert s.values(order[::-1]).tolist() == [expected[t] for t in order[::-1]]
    assert s(0) == 0.1


def test_multiplicative_cache_is_safe_across_threads():
    s = multiplicative(1.0, linear(1.0, start_factor=0.99, end_factor=1.0, total_steps=500))
    expected = s.values(range(600)).tolist()
    s(5)
    results, errors = {}, []

    def work(seed):
        try:
            order = list(range(600))
            random.Random(seed).shuffle(order)
            got = s.values(order)                  # compiled: runs without the GIL
            results[seed] = all(got[i] == expected[t] for i, t in enumerate(order))
        except Exception as error:             # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors and results == {k: True for k in range(4)}


def test_multiplicative_of_callable_is_not_compiled():
    s = multiplicative(0.1, lambda t: 0.99)
    assert not s.is_compiled
    assert s.values(range(20)).tolist() == [_product(0.1, lambda t: 0.99, t) for t in range(20)]


# ---------------------------------------------------------------------------------------
# torch parity
# ---------------------------------------------------------------------------------------
def _noam_factor(d, w):
    return lambda e: d ** -0.5 * min((e + 1) ** -0.5, (e + 1) * w ** -1.5)


# (id, torch factory, base lr, n, fastlr schedule, rtol); rtol 0 means bit for bit
TORCH_CASES = [
    ("MultiplicativeLR-const", lambda L, o: L.MultiplicativeLR(o, lambda e: 0.95), 0.1, 150,
     lambda: multiplicative(0.1, 0.95), 1e-12),
    ("MultiplicativeLR-schedule", lambda L, o: L.MultiplicativeLR(o, lambda e: 1 - e / 200),
     0.1, 150, lambda: multiplicative(0.1, polynomial(1.0, 200)), 0),
    ("MultiplicativeLR-callable", lambda L, o: L.MultiplicativeLR(o, lambda e: 1 - e / 200),
     0.1, 120, lambda: multiplicative(0.1, lambda t: 1 - t / 200), 0),
    ("MultiplicativeLR-steps", lambda L, o: L.MultiplicativeLR(
        o, lambda e: 0.5 if e % 30 == 0 else 1.0), 0.1, 130,
     lambda: multiplicative(0.1, piecewise_constant(
         [30, 31, 60, 61, 90, 91, 120, 121], [1.0, 0.5] * 4 + [1.0])), 0),
    ("ConstantLR-default", lambda L, o: L.ConstantLR(o), 0.1, 100,
     lambda: constant_lr(0.1), 1e-15),
    ("ConstantLR", lambda L, o: L.ConstantLR(o, factor=0.5, total_iters=40), 0.1, 100,
     lambda: constant_lr(0.1, factor=0.5, total_steps=40), 1e-15),
    ("ConstantLR-one", lambda L, o: L.ConstantLR(o, factor=0.25, total_iters=1), 0.3, 100,
     lambda: constant_lr(0.3, 0.25, 1), 1e-15),
    ("ChainedScheduler-constant-exponential", lambda L, o: L.ChainedScheduler(
        [L.ConstantLR(o, factor=0.1, total_iters=20), L.ExponentialLR(o, gamma=0.98)]),
     0.1, 120, lambda: chained(constant_lr(0.1, factor=0.1, total_steps=20),
                               exponential(1.0, 0.98)), 1e-12),
    ("ChainedScheduler-multiplicative-step", lambda L, o: L.ChainedScheduler(
        [L.MultiplicativeLR(o, lambda e: 0.99), L.StepLR(o, step_size=25, gamma=0.5)]),
     0.1, 120, lambda: multiplicative(0.1, 0.99) * step_decay(1.0, 25, gamma=0.5), 1e-12),
    ("ChainedScheduler-three", lambda L, o: L.ChainedScheduler(
        [L.ConstantLR(o, factor=0.5, total_iters=10), L.ExponentialLR(o, gamma=0.99),
         L.MultiStepLR(o, [30, 70], gamma=0.3)]),
     0.05, 110, lambda: chained(constant_lr(0.05, 0.5, 10), exponential(1.0, 0.99),
                                S.multistep(1.0, [30, 70], gamma=0.3)), 1e-12),
    ("LambdaLR-schedule", lambda L, o: L.LambdaLR(o, lambda e: 0.95 ** e), 0.1, 120,
     lambda: lambda_lr(0.1, exponential(1.0, 0.95)), 1e-14),
    ("LambdaLR-callable", lambda L, o: L.LambdaLR(o, lambda e: 1 / (1 + e)), 0.1, 120,
     lambda: lambda_lr(0.1, lambda t: 1 / (1 + t)), 0),
    ("LambdaLR-noam", lambda L, o: L.LambdaLR(o, _noam_factor(512, 40)), 1.0, 200,
     lambda: noam(512, 40), 1e-14),
    ("LambdaLR-noam-scaled", lambda L, o: L.LambdaLR(o, _noam_factor(64, 25)), 2.0, 150,
     lambda: noam(64, 25, factor=2.0), 1e-14),
]


@pytest.mark.parametrize("name,make_torch,base_lr,n,make,rtol", TORCH_CASES,
                         ids=[c[0] for c in TORCH_CASES])
def test_torch_parity(name, make_torch, base_lr, n, make, rtol):
    expected = torch_lrs(make_torch, base_lr, n)
    got = make().values(range(n))
    if rtol == 0:
        assert got.tolist() == expected, name
    else:
        np.testing.assert_allclose(got, expected, rtol=rtol, atol=0, err_msg=name)


# ---------------------------------------------------------------------------------------
# the compositions' own closed forms, their boundaries and their arguments
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("factor,n", [(1 / 3, 5), (0.5, 1), (0.0, 3), (1.0, 7)])
def test_constant_lr_closed_form(factor, n):
    s = constant_lr(0.2, factor, n)
    for t in [0, n - 1, n, n + 1, 3 * n] + HUGE:
        assert s(t) == (0.2 * factor if t < n else 0.2)


def test_lambda_lr_is_init_times_fn():
    f = join([linear(1.0, start_factor=0.0, total_steps=10), cosine(1.0, 90)], [10])
    s = lambda_lr(0.3, f)
    assert s.values(STEPS).tolist() == [0.3 * f(t) for t in STEPS]
    assert lambda_lr(0.3, 0.5)(100) == 0.3 * 0.5


@pytest.mark.parametrize("make,exc,match", [
    (lambda: constant_lr(0.1, factor=1.5), ValueError, r"constant_lr: factor"),
    (lambda: constant_lr(0.1, factor=-0.1), ValueError, "factor"),
    (lambda: constant_lr(0.1, total_steps=0), ValueError, "total_steps"),
    (lambda: constant_lr(0.1, total_steps=2.0), TypeError, "total_steps"),
    (lambda: constant_lr("0.1"), TypeError, "init"),
    (lambda: multiplicative(math.nan, 0.9), ValueError, r"multiplicative: init"),
    (lambda: multiplicative(0.1, math.inf), ValueError, r"multiplicative: factor"),
    (lambda: multiplicative(0.1, "0.9"), TypeError, r"multiplicative: factor"),
    (lambda: multiplicative(0.1, None), TypeError, "factor"),
    (lambda: lambda_lr(0.1, "x"), TypeError, r"lambda_lr: fn"),
    (lambda: lambda_lr(math.inf, 1.0), ValueError, r"lambda_lr: init"),
])
def test_composition_arguments(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


@pytest.mark.parametrize("make", [
    lambda: constant_lr(0.1, 0.5, 3), lambda: multiplicative(0.1, 0.9),
    lambda: multiplicative(0.1, step_decay(1.0, 3, gamma=0.9)),
    lambda: lambda_lr(0.1, cosine(1.0, 10)), lambda: chained(constant(2.0), B),
])
def test_compositions_pickle_and_repr(make):
    s = make()
    assert pickle.loads(pickle.dumps(s)) == s
    e = eval(repr(s), {"__builtins__": {}}, vars(S))
    steps = list(range(45))         # (no huge steps: multiplicative's product is O(t))
    assert e == s and e.values(steps).tolist() == s.values(steps).tolist()

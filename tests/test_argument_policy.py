"""One argument policy across the public API.

For every public callable that takes hyperparameters: a wrong kind of argument (a string, a
bool where a number is expected, a float where an int is expected, None where a value is
required, an array) is a TypeError; a wrong value (negative, NaN, infinite, out of range) is
a ValueError; and the message starts with the public callable's name
(``fastlr.Adam: lr must be >= 0, got -0.5``). The rules live in fastlr._core.args.

Cases are generated from a small table per callable (the optimizer tables come from
fastlr._specs), so a new hyperparameter gets its checks by adding one row.
"""

import math

import numpy as np
import pytest

import fastlr
import fastlr.distributed
from fastlr import _specs, kernels, schedules
from fastlr._core import args
from fastlr.compat import sklearn as sk

INT63 = 2 ** 63 - 1

# ---------------------------------------------------------------------------------------
# the bad values of each kind of argument
# ---------------------------------------------------------------------------------------
REAL_KINDS = [("str", "0.5"), ("bool", True), ("npbool", np.bool_(False)), ("list", [0.5]),
              ("1d-array", np.array([0.5])), ("0d-bool", np.array(True)),
              ("0d-str", np.array("0.5")), ("complex", 1j), ("object", object())]
NONFINITE = [("nan", math.nan), ("inf", math.inf), ("-inf", -math.inf),
             ("hugeint", 2 ** 1100)]
RULE_VALUES = {"finite": [], "nonneg": [("neg", -0.5)], "positive": [("zero", 0.0),
                                                                     ("neg", -0.5)],
               "unit": [("neg", -0.1), ("one", 1.0)], "closed_unit": [("neg", -0.1),
                                                                      ("1.5", 1.5)],
               "open_unit": [("zero", 0.0), ("one", 1.0)], "above_one": [("one", 1.0),
                                                                         ("0.5", 0.5)]}
INT_KINDS = [("float", 2.0), ("float2.5", 2.5), ("npfloat", np.float64(3.0)), ("str", "2"),
             ("bool", True), ("npbool", np.bool_(True)), ("1d-array", np.array([2])),
             ("0d-float", np.array(2.0)), ("0d-bool", np.array(True))]
FLAG_KINDS = [("str", "yes"), ("float", 1.0), ("npfloat", np.float64(0.0)), ("list", [True]),
              ("0d-float", np.array(1.0)), ("1d-array", np.array([True]))]
FLAG_VALUES = [("int2", 2), ("int-1", -1), ("npint2", np.int64(2)), ("0d-int2", np.array(2))]
THREADS_KINDS = [("float", 2.0), ("bool", True), ("str", "2"), ("npfloat", np.float64(2.0)),
                 ("0d-float", np.array(2.0)), ("0d-bool", np.array(True))]
THREADS_VALUES = [("0", 0), ("-1", -1), ("4097", 4097), ("2**64", 2 ** 64),
                  ("npneg", np.int64(-3)), ("0d-neg", np.array(-3))]


def bad_values(kind):
    """[(label, value, exception)] for an argument of ``kind``:
    ("real", rule) | ("int", low, high) | ("flag",) | ("threads",) | ("choice", choices);
    a trailing "required" adds None as a wrong kind."""
    required = kind[-1] == "required"
    if required:
        kind = kind[:-1]
    out = [("None", None, TypeError)] if required else []
    if kind[0] == "real":
        out += [(lab, v, TypeError) for lab, v in REAL_KINDS]
        out += [(lab, v, ValueError) for lab, v in NONFINITE + RULE_VALUES[kind[1]]]
    elif kind[0] == "int":
        low, high = kind[1], kind[2]
        out += [(lab, v, TypeError) for lab, v in INT_KINDS]
        out += [("below", low - 1, ValueError), ("2**63", 2 ** 63, ValueError)]
        if high is not None and high < INT63:
            out.append(("above", high + 1, ValueError))
    elif kind[0] == "flag":
        out += [(lab, v, TypeError) for lab, v in FLAG_KINDS]
        out += [(lab, v, ValueError) for lab, v in FLAG_VALUES]
        if not required:
            out.append(("None", None, TypeError))
    elif kind[0] == "threads":
        out += [(lab, v, TypeError) for lab, v in THREADS_KINDS]
        out += [(lab, v, ValueError) for lab, v in THREADS_VALUES]
    elif kind[0] == "choice":
        out += [("int", 3, TypeError), ("bytes", b"x", TypeError),
                ("unknown", "nope", ValueError)]
        if None not in kind[1]:
            out.append(("None", None, TypeError))
    else:
        raise AssertionError(kind)
    return out


REAL = lambda rule: ("real", rule, "required")           # noqa: E731
OPT_REAL = lambda rule: ("real", rule)                     # noqa: E731  (None is valid)
INT = lambda low, high=None: ("int", low, high, "required")  # noqa: E731
FLAG = ("flag", "required")
THREADS = ("threads",)
CHOICE = lambda *c: ("choice", c)                          # noqa: E731


# ---------------------------------------------------------------------------------------
# the callables: (public name, make(**override) -> zero-argument call, {arg: kind})
# ---------------------------------------------------------------------------------------
def _f32(n=8, fill=0.5):
    return np.full(n, fill, dtype=np.float32)


def _kernel_call(name, fixed=None):
    def make(**override):
        p, g = _f32(), _f32(fill=0.1)
        state = kernels.make_state(name, p) if name in _specs.kernels() else {}
        kw = dict(fixed or {})
        kw.update(override)
        return lambda: getattr(kernels, name)(p, g, **state, **kw)
    return make


def kernel_table():
    rows = []
    for o in _specs.OPTIMIZERS.values():
        if o.kernel in [r[0].rsplit(".", 1)[1] for r in rows]:
            continue
        fam = _specs.FAMILIES[o.family]
        keywords = fam.kernel_keywords or tuple(h.name for h in fam.hypers)
        spec, fixed = {}, {"lr": 0.01} if "lr" in keywords else {}   # Rprop's has no lr
        if fam.uses_step:
            spec["step"] = INT(1)
            fixed["step"] = 1
        for name, init in fam.scalar_state:     # NAdam's mu_product, ASGD's eta
            spec[name] = REAL(fam.scalar_check)
            fixed[name] = init
        for h in fam.hypers:
            if h.name in o.fixed or h.name not in keywords:
                continue
            spec[h.name] = FLAG if h.check == "flag" else REAL(h.check)
        spec["n_threads"] = THREADS
        rows.append((f"fastlr.kernels.{o.kernel}", _kernel_call(o.kernel, fixed), spec))

    def sk_call(name, fixed):
        def make(**override):
            p, g = _f32(), _f32(fill=0.1)
            bufs = [np.zeros_like(p) for _ in range(1 if name == "sgd_sklearn" else 2)]
            kw = dict(fixed, **override)
            return lambda: getattr(kernels, name)(p, g, *bufs, **kw)
        return make

    rows.append(("fastlr.kernels.sgd_sklearn",
                 sk_call("sgd_sklearn", dict(lr=0.1, momentum=0.9, nesterov=False)),
                 {"lr": REAL("nonneg"), "momentum": REAL("closed_unit"), "nesterov": FLAG,
                  "n_threads": THREADS}))
    rows.append(("fastlr.kernels.adam_sklearn",
                 sk_call("adam_sklearn", dict(step=1, lr=1e-3, beta1=0.9, beta2=0.999,
                                              eps=1e-8)),
                 {"step": INT(1), "lr": REAL("nonneg"), "beta1": REAL("unit"),
                  "beta2": REAL("unit"), "eps": REAL("nonneg"), "n_threads": THREADS}))

    def ema_call(name, fixed):
        def make(**override):
            a, b = _f32(), _f32(fill=0.1)
            return lambda: getattr(kernels, name)(a, b, **dict(fixed, **override))
        return make

    rows.append(("fastlr.kernels.ema_update", ema_call("ema_update", {"decay": 0.9}),
                 {"decay": REAL("closed_unit"), "n_threads": THREADS}))
    rows.append(("fastlr.kernels.swap_buffers", ema_call("swap_buffers", {}),
                 {"n_threads": THREADS}))

    def make_state_call(kernel):
        def make(**override):
            return lambda: kernels.make_state(kernel, _f32(), **override)
        return make

    rows.append(("fastlr.kernels.make_state", make_state_call("sgd"),
                 {"momentum": ("real", "nonneg")}))
    rows.append(("fastlr.kernels.make_state", make_state_call("rmsprop"),
                 {"centered": ("flag",)}))
    rows.append(("fastlr.kernels.make_state", make_state_call("adam"),
                 {"amsgrad": ("flag",)}))
    rows.append(("fastlr.kernels.make_state", make_state_call("adagrad"),
                 {"initial_accumulator_value": ("real", "nonneg")}))
    rows.append(("fastlr.set_num_threads",
                 lambda n_threads=None: lambda: fastlr.set_num_threads(n_threads),
                 {"n_threads": THREADS}))
    return rows


def optimizer_table():
    rows = []
    for o in _specs.OPTIMIZERS.values():
        cls = getattr(fastlr, o.cls)
        fam = _specs.FAMILIES[o.family]
        spec, betas = {}, {}            # betas: every pair (betas, etas, ...) by its name
        for h in fam.hypers:
            if h.name in o.fixed:
                continue
            if h.pair:
                betas.setdefault(h.pair, {})[h.name] = h.default
            kind = FLAG if h.check == "flag" else REAL(h.check)
            spec[f"{h.pair}.{h.name}" if h.pair else h.name] = kind
        for name, default in o.options:
            spec[name] = FLAG if isinstance(default, bool) else REAL("nonneg")
        spec.update(n_threads=THREADS, max_grad_norm=OPT_REAL("positive"),
                    skip_nonfinite=FLAG)

        def make(cls=cls, betas=betas, **override):
            kw = {}
            for key, value in override.items():
                if "." in key:
                    name, member = key.split(".")
                    pair = dict(betas[name], **{member: value})
                    kw[name] = tuple(pair.values())
                else:
                    kw[key] = value
            return lambda: cls([_f32()], **kw)
        rows.append((f"fastlr.{o.cls}", make, spec))

        def make_group(cls=cls, **override):
            group = {k.rsplit(".", 1)[-1]: v for k, v in override.items()}
            return lambda: cls([dict({"params": [_f32()]}, **group)])
        rows.append((f"fastlr.{o.cls}", make_group, {"param_groups[0].lr": REAL("nonneg")}))
    return rows


def _sched(name, *a, **k):
    def make(**override):
        kw = dict(k)
        pos = list(a)
        for key, value in override.items():
            if isinstance(key, str) and key.startswith("#"):
                pos[int(key[1:])] = value
            else:
                kw[key] = value
        return lambda: getattr(schedules, name)(*pos, **kw)
    return make


def _items(name, position, make_seq):
    """An argument that is a sequence: the bad value goes in as its only/second item."""
    def make(**override):
        (key, value), = override.items()
        return _sched(name, *make_seq(value))()
    return make


def schedule_table():
    S = lambda n: f"fastlr.schedules.{n}"                  # noqa: E731
    C = schedules.constant(1.0)
    rows = [
        (S("constant"), _sched("constant", 1.0), {"#0": REAL("finite")}),
        (S("step_decay"), _sched("step_decay", 1.0, 10),
         {"#0": REAL("finite"), "#1": INT(1), "gamma": REAL("nonneg")}),
        (S("multistep"), _sched("multistep", 1.0, [10]),
         {"#0": REAL("finite"), "gamma": REAL("nonneg")}),
        (S("exponential"), _sched("exponential", 1.0, 0.9),
         {"#0": REAL("finite"), "#1": REAL("nonneg")}),
        (S("exponential_decay"), _sched("exponential_decay", 1.0, 10, 0.5),
         {"#0": REAL("finite"), "#1": INT(1), "#2": REAL("positive"), "staircase": FLAG,
          "transition_begin": INT(0), "end": OPT_REAL("finite")}),
        (S("inverse_time"), _sched("inverse_time", 1.0, 10, 0.5),
         {"#0": REAL("finite"), "#1": INT(1), "#2": REAL("nonneg"), "staircase": FLAG}),
        (S("polynomial"), _sched("polynomial", 1.0, 10),
         {"#0": REAL("finite"), "#1": INT(1), "end": REAL("finite"),
          "power": REAL("nonneg"), "transition_begin": INT(0)}),
        (S("linear"), _sched("linear", 1.0),
         {"#0": REAL("finite"), "start_factor": REAL("nonneg"), "end_factor": REAL("nonneg"),
          "total_steps": INT(1), "transition_begin": INT(0)}),
        (S("cosine"), _sched("cosine", 1.0, 10), {"#0": REAL("finite"), "#1": INT(1),
                                                   "end": REAL("finite"),
                                                   "exponent": REAL("positive")}),
        (S("cosine_restarts"), _sched("cosine_restarts", 1.0, 10),
         {"#0": REAL("finite"), "#1": INT(1), "period_mult": INT(1), "end": REAL("finite"),
          "decay": REAL("nonneg")}),
        (S("cyclic"), _sched("cyclic", 0.1, 1.0),
         {"#0": REAL("finite"), "#1": REAL("finite"), "step_size_up": INT(1),
          "step_size_down": ("int", 0, None), "mode": CHOICE(*schedules.CYCLIC_MODES),
          "gamma": REAL("positive")}),
        (S("one_cycle"), _sched("one_cycle", 1.0, 100),
         {"#0": REAL("finite"), "#1": INT(2), "pct_start": REAL("finite"),
          "anneal": CHOICE(*schedules.ONE_CYCLE_ANNEALS), "div_factor": REAL("positive"),
          "final_div_factor": REAL("positive"), "three_phase": FLAG}),
        (S("warmup_cosine"), _sched("warmup_cosine", 1.0, warmup_steps=5, total_steps=50),
         {"#0": REAL("finite"), "warmup_steps": INT(0), "total_steps": INT(1),
          "init": REAL("finite"), "end": REAL("finite"), "exponent": REAL("positive")}),
        (S("warmup_exponential_decay"), _sched("warmup_exponential_decay", 1.0,
                                               warmup_steps=5, transition_steps=10,
                                               decay_rate=0.5),
         {"#0": REAL("finite"), "warmup_steps": INT(0), "transition_steps": INT(1),
          "decay_rate": REAL("positive"), "init": REAL("finite"), "transition_begin": INT(0),
          "staircase": FLAG, "end": OPT_REAL("finite")}),
        (S("warmup"), _sched("warmup", C, 5),
         {"#1": INT(0), "start_factor": REAL("nonneg")}),
        (S("constant_lr"), _sched("constant_lr", 1.0),
         {"#0": REAL("finite"), "factor": REAL("closed_unit"), "total_steps": INT(1)}),
        (S("multiplicative"), _sched("multiplicative", 1.0, 0.9), {"#0": REAL("finite")}),
        (S("lambda_lr"), _sched("lambda_lr", 1.0, C), {"#0": REAL("finite")}),
        (S("wsd"), _sched("wsd", 1.0, 100),
         {"#0": REAL("finite"), "#1": INT(1), "warmup_steps": INT(0),
          "decay_fraction": REAL("closed_unit"), "decay": CHOICE(*schedules.WSD_DECAYS),
          "end": REAL("finite")}),
        (S("inverse_sqrt"), _sched("inverse_sqrt", 1.0, 10),
         {"#0": REAL("finite"), "#1": INT(1), "init": REAL("finite")}),
        (S("noam"), _sched("noam", 512, 10),
         {"#0": INT(1), "#1": INT(1), "factor": REAL("positive")}),
        (S("rex"), _sched("rex", 1.0, 10),
         {"#0": REAL("finite"), "#1": INT(1), "end": REAL("finite")}),
        # sequences: each item obeys the rule of its kind
        (S("multistep"), _items("multistep", 1, lambda v: (1.0, [v])),
         {"milestones[0]": ("int", 0, None)}),
        (S("piecewise_constant"), _items("piecewise_constant", 0, lambda v: ([v], [1.0, 2.0])),
         {"boundaries[0]": ("int", 0, None)}),
        (S("piecewise_constant"), _items("piecewise_constant", 1, lambda v: ([5], [1.0, v])),
         {"values[1]": REAL("finite")}),
        (S("piecewise_linear"), _items("piecewise_linear", 1, lambda v: ([0, 5], [v, 1.0])),
         {"values[0]": REAL("finite")}),
        (S("join"), _items("join", 1, lambda v: ([C, C], [v])),
         {"boundaries[0]": ("int", 0, None)}),
    ]
    return rows


def _opt():
    return fastlr.SGD([_f32()], lr=0.1)


def misc_table():
    def ema(**override):
        return lambda: fastlr.EMA([_f32()], **override)

    def decay_at(step):
        e = fastlr.EMA([_f32()])
        return lambda: e.decay_at(step)

    def plateau(**override):
        return lambda: fastlr.ReduceLROnPlateau(_opt(), **override)

    def clip(**override):
        kw = dict({"max_norm": 1.0}, **override)
        return lambda: fastlr.clip_grad_norm([_f32()], **kw)

    def find_lr(**override):
        opt = _opt()
        kw = dict({"num_steps": 3}, **override)
        return lambda: fastlr.find_lr(opt, lambda i: (1.0, [_f32()]), **kw)

    def sk_opt(cls):
        def make(**override):
            return lambda: cls([_f32()], **override)
        return make

    def iteration_ends(time_step):
        o = sk.SGDOptimizer([_f32()])
        return lambda: o.iteration_ends(time_step)

    def flat_buffer(dim):
        return lambda: fastlr.flat_buffer([(2, dim)])

    def shard_bounds(**override):
        kw = dict({"total": 10, "world_size": 3}, **override)
        return lambda: fastlr.distributed.shard_bounds(**kw)

    def schedule_call(step):
        s = schedules.cosine(1.0, 10)
        return lambda: s(step)

    return [
        ("fastlr.EMA", ema,
         {"decay": REAL("closed_unit"), "warmup": CHOICE(None, "tf", "timm"),
          "warmup_gamma": REAL("positive"), "warmup_power": REAL("positive"),
          "min_decay": REAL("closed_unit"), "n_threads": THREADS}),
        ("fastlr.EMA.decay_at", decay_at, {"step": INT(0)}),
        ("fastlr.ReduceLROnPlateau", plateau,
         {"mode": CHOICE("min", "max"), "factor": REAL("unit"), "patience": INT(0),
          "threshold": REAL("nonneg"), "threshold_mode": CHOICE("rel", "abs"),
          "cooldown": INT(0), "min_lr": REAL("nonneg"), "eps": REAL("nonneg")}),
        ("fastlr.clip_grad_norm", clip,
         {"max_norm": REAL("positive"), "error_if_nonfinite": FLAG, "n_threads": THREADS}),
        ("fastlr.find_lr", find_lr,
         {"start_lr": REAL("positive"), "end_lr": REAL("finite"), "num_steps": INT(2),
          "mode": CHOICE("exp", "linear"), "smooth": REAL("unit"),
          "diverge_factor": REAL("finite"), "restore": FLAG}),
        ("fastlr.compat.sklearn.SGDOptimizer", sk_opt(sk.SGDOptimizer),
         {"learning_rate_init": REAL("positive"),
          "lr_schedule": CHOICE("constant", "invscaling", "adaptive"),
          "momentum": REAL("closed_unit"), "nesterov": FLAG, "power_t": REAL("nonneg"),
          "n_threads": THREADS}),
        ("fastlr.compat.sklearn.AdamOptimizer", sk_opt(sk.AdamOptimizer),
         {"learning_rate_init": REAL("positive"), "beta_1": REAL("unit"),
          "beta_2": REAL("unit"), "epsilon": REAL("positive"), "n_threads": THREADS}),
        ("fastlr.compat.sklearn.SGDOptimizer.iteration_ends", iteration_ends,
         {"time_step": REAL("nonneg")}),
        ("fastlr.flat_buffer", flat_buffer, {"dim": ("int", 0, None)}),
        ("fastlr.distributed.shard_bounds", shard_bounds,
         {"total": INT(0), "world_size": INT(1)}),
        ("fastlr.schedules.Schedule", schedule_call, {"step": INT(0)}),
    ]


# Extra value rules a table kind cannot say.
EXTRA = [
    ("fastlr.schedules.one_cycle", _sched("one_cycle", 1.0, 100), "pct_start", "0", 0.0,
     ValueError),
    ("fastlr.schedules.one_cycle", _sched("one_cycle", 1.0, 100), "pct_start", "1", 1.0,
     ValueError),
    ("fastlr.find_lr", None, "diverge_factor", "1", 1.0, ValueError),
    ("fastlr.find_lr", None, "end_lr", "below-start", 1e-9, ValueError),
    ("fastlr.EMA", None, "min_decay", "above-decay", 0.99999, ValueError),
    ("fastlr.ReduceLROnPlateau", None, "min_lr", "list-str", ["0"], TypeError),
    ("fastlr.ReduceLROnPlateau", None, "min_lr", "list-neg", [-1.0], ValueError),
    ("fastlr.ReduceLROnPlateau", None, "min_lr", "list-nan", [math.nan], ValueError),
]

# (name, argument, label) that a table kind gets wrong: the value is valid there
VALID = {("fastlr.ReduceLROnPlateau", "min_lr", "list")}


def _cases():
    out = []
    tables = kernel_table() + optimizer_table() + schedule_table() + misc_table()
    seen = set()
    for name, make, spec in tables:
        for arg, kind in spec.items():
            for label, value, exc in bad_values(kind):
                case_id = f"{name}-{arg}-{label}"
                if case_id in seen or (name, arg, label) in VALID:
                    continue
                seen.add(case_id)
                out.append(pytest.param(name, make, arg, value, exc, id=case_id))
    makers = {name: make for name, make, _ in tables}
    for name, make, arg, label, value, exc in EXTRA:
        out.append(pytest.param(name, make or makers[name], arg, value, exc,
                                id=f"{name}-{arg}-{label}"))
    return out


@pytest.mark.parametrize("name,make,arg,value,exc", _cases())
def test_wrong_argument(name, make, arg, value, exc):
    call = make(**{arg: value})
    try:
        with pytest.raises((TypeError, ValueError)) as info:
            call()
    finally:
        if name == "fastlr.set_num_threads":
            fastlr.set_num_threads(None)
    assert info.type is exc, f"{info.type.__name__} ({info.value}), expected {exc.__name__}"
    message = str(info.value)
    assert message.startswith(f"{name}: "), message
    key = arg.split(".")[-1].split("[")[0].lstrip("#") if "." in arg else \
        arg.split("[")[0].lstrip("#")
    if not key.isdigit() and key != "dim":
        assert key in message, message


# ---------------------------------------------------------------------------------------
# a 0-d array is a number wherever a number is taken (lr=np.array(0.1)), across the API
# ---------------------------------------------------------------------------------------
def _valid_plain(kind):
    """Plain Python values of ``kind`` to try, most likely valid first."""
    if kind[0] == "real":
        return [0.5, 0.9, 1.0, 2.0, 10.0, 0.0, 1e-3]
    if kind[0] == "int":
        return [max(kind[1], 1) + k for k in (0, 1, 4, 9)] + [kind[1]]
    if kind[0] == "threads":
        return [1, 2]
    if kind[0] == "flag":
        return [True, False]
    return []


def _zero_d_cases():
    out, seen = [], set()
    tables = kernel_table() + optimizer_table() + schedule_table() + misc_table()
    for name, make, spec in tables:
        for arg, kind in spec.items():
            candidates = _valid_plain(kind)
            if not candidates or "[" in arg and kind[0] != "real" and kind[0] != "int":
                continue
            case_id = f"{name}-{arg}"
            if case_id in seen:
                continue
            seen.add(case_id)
            out.append(pytest.param(name, make, arg, candidates, id=case_id))
    return out


@pytest.mark.parametrize("name,make,arg,candidates", _zero_d_cases())
def test_zero_d_array_is_a_number(name, make, arg, candidates):
    for value in candidates:                # the first plain value the callable accepts
        try:
            make(**{arg: value})()
        except (TypeError, ValueError):
            continue
        finally:
            if name == "fastlr.set_num_threads":
                fastlr.set_num_threads(None)
        break
    else:
        pytest.skip(f"no plain value of {candidates} accepted")
    try:
        make(**{arg: np.array(value)})()    # the same value as a 0-d array
    finally:
        if name == "fastlr.set_num_threads":
            fastlr.set_num_threads(None)


@pytest.mark.parametrize("value,expected", [(np.array(0.5), 0.5), (np.array(3), 3.0),
                                            (np.array(0.25, dtype=np.float32), 0.25),
                                            (np.array(1, dtype=np.uint8), 1.0)], ids=repr)
def test_zero_d_real_is_its_element(value, expected):
    v = args.checked_real("f", "x", value, args.CLOSED_UNIT if expected <= 1 else args.FINITE)
    assert type(v) is float and v == expected


def test_zero_d_int_flag_threads_step():
    assert args.int_arg("f", "k", np.array(3), 0, args.INT_MAX) == 3
    assert args.int_arg("f", "k", np.array(3, dtype=np.uint16), 0, args.INT_MAX) == 3
    assert args.step_arg("f", np.array(7)) == 7
    assert args.threads_arg("f", np.array(2)) == 2
    assert args.flag_arg("f", "b", np.array(True)) is True
    assert args.flag_arg("f", "b", np.array(0)) is False
    with pytest.raises(ValueError, match=r"^f: k must be >= 1, got 0$"):
        args.int_arg("f", "k", np.array(0), 1, args.INT_MAX)


@pytest.mark.parametrize("value", [np.array(True), np.array(False),
                                   np.array(True, dtype=object)], ids=repr)
def test_zero_d_bool_is_not_a_number(value):
    # a bool 0-d array is refused where a bool is, and the message shows the array
    with pytest.raises(TypeError, match=r"^f: x must be a real number, got ndarray array\("):
        args.real_arg("f", "x", value)
    with pytest.raises(TypeError, match=r"^f: k must be an int >= 0, got ndarray array\("):
        args.int_arg("f", "k", value, 0, args.INT_MAX)
    with pytest.raises(TypeError, match=r"^f: n_threads must be an int >= 1 or None"):
        args.threads_arg("f", value)


@pytest.mark.parametrize("value", [np.array([0.5]), np.zeros((1, 1)), np.array("0.5"),
                                   np.array(None, dtype=object), np.array(1 + 0j)], ids=repr)
def test_other_arrays_are_not_numbers(value):
    with pytest.raises(TypeError, match=r"^f: x must be a real number, got ndarray array"):
        args.real_arg("f", "x", value)


def test_zero_d_nan_is_a_value_error():
    with pytest.raises(ValueError, match=r"^f: x must be a finite number, got array\(nan\)$"):
        args.real_arg("f", "x", np.array(math.nan))
    with pytest.raises(ValueError, match=r"^f: x must be >= 0, got array\(-0.5\)$"):
        args.checked_real("f", "x", np.array(-0.5), args.NONNEG)


# ---------------------------------------------------------------------------------------
# the valid kinds are accepted (and turned into plain numbers)
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [0.5, 1, np.float32(0.5), np.float64(0.5), np.int64(0),
                                   np.uint8(1)], ids=repr)
def test_real_kinds_accepted(value):
    v = args.checked_real("f", "x", value, args.CLOSED_UNIT)
    assert type(v) is float and v == float(value)


def test_fraction_is_a_real():
    from fractions import Fraction
    assert args.real_arg("f", "x", Fraction(1, 4)) == 0.25


@pytest.mark.parametrize("value", [3, np.int8(3), np.uint64(3), np.int64(3)], ids=repr)
def test_int_kinds_accepted(value):
    v = args.int_arg("f", "k", value, 0, args.INT_MAX)
    assert type(v) is int and v == 3


@pytest.mark.parametrize("value", [True, False, np.bool_(True), np.bool_(False), 0, 1,
                                   np.int8(1), np.uint64(0)], ids=repr)
def test_flag_kinds_accepted(value):
    assert args.flag_arg("f", "b", value) is bool(value)


def _flag_calls():
    p = lambda: [_f32()]                                   # noqa: E731
    yield "kernels.adam", lambda v: kernels.adam(
        _f32(), _f32(), *kernels.make_state("adam", _f32()).values(), step=1, lr=0.1,
        maximize=v)
    yield "kernels.sgd_sklearn", lambda v: kernels.sgd_sklearn(
        _f32(), _f32(), _f32(), lr=0.1, momentum=0.9, nesterov=v)
    yield "schedules.exponential_decay", lambda v: schedules.exponential_decay(
        1.0, 10, 0.5, staircase=v)
    yield "schedules.one_cycle", lambda v: schedules.one_cycle(1.0, 100, three_phase=v)
    yield "compat.sklearn.SGDOptimizer", lambda v: sk.SGDOptimizer(p(), nesterov=v)
    yield "find_lr", lambda v: fastlr.find_lr(_opt(), lambda i: (1.0, [_f32()]),
                                              num_steps=2, restore=v)
    for o in _specs.OPTIMIZERS.values():
        yield f"{o.cls}", (lambda cls: lambda v: cls(p(), maximize=v))(
            getattr(fastlr, o.cls))
    yield "SGD skip_nonfinite", lambda v: fastlr.SGD(p(), skip_nonfinite=v)
    yield "clip_grad_norm", lambda v: fastlr.clip_grad_norm([_f32()], 1.0,
                                                             error_if_nonfinite=v)


@pytest.mark.parametrize("value", [0, 1, np.int32(1)], ids=repr)
@pytest.mark.parametrize("call", [pytest.param(c, id=label) for label, c in _flag_calls()])
def test_flags_take_zero_and_one(call, value):
    call(value)


def test_threads_default_and_bounds():
    assert args.threads_arg("f", None) == fastlr.get_num_threads()
    assert args.threads_arg("f", 1) == 1
    assert args.threads_arg("f", np.int16(args.MAX_THREADS)) == args.MAX_THREADS
    fastlr.set_num_threads(3)
    try:
        assert args.threads_arg("f", None) == 3
    finally:
        fastlr.set_num_threads(None)


def test_int_bounds_and_step():
    assert args.int_arg("f", "k", INT63, 0, args.INT_MAX) == INT63
    assert args.int_arg("f", "k", 5, 5, 5) == 5
    with pytest.raises(ValueError, match=r"^f: k must be <= 5, got 6$"):
        args.int_arg("f", "k", 6, 0, 5)
    with pytest.raises(ValueError, match=r"^f: k must be >= 1, got 0$"):
        args.int_arg("f", "k", 0, 1, args.INT_MAX)
    with pytest.raises(TypeError, match=r"^f: k must be an int >= 1, got float 2.0$"):
        args.int_arg("f", "k", 2.0, 1, args.INT_MAX)
    assert args.step_arg("f", 1) == 1 and args.step_arg("f", np.int64(INT63)) == INT63
    with pytest.raises(ValueError, match=r"^f: step must be >= 1"):
        args.step_arg("f", 0)


def test_rules_match_the_specs_table():
    assert set(args.RULES) == {k for k in _specs.CHECKS if k != "flag"} | {"positive"}
    for name, (low, high, closed, _text, low_closed) in ((k, v) for k, v in
                                                         _specs.CHECKS.items() if v):
        rule = args.RULES[name]
        if low is not None:
            with pytest.raises(ValueError):
                args.checked_real("f", "x", low - 0.5, rule)
            if low_closed:
                args.checked_real("f", "x", low, rule)
            else:
                with pytest.raises(ValueError):
                    args.checked_real("f", "x", low, rule)
        if high is not None:
            if closed:
                args.checked_real("f", "x", high, rule)
            else:
                with pytest.raises(ValueError):
                    args.checked_real("f", "x", high, rule)


def test_choice():
    assert args.choice_arg("f", "m", "max", ("min", "max")) == 1
    assert args.choice_arg("f", "w", None, (None, "tf")) == 0
    with pytest.raises(TypeError, match=r"^f: m must be one of 'min', 'max', got bool True$"):
        args.choice_arg("f", "m", True, ("min", "max"))
    with pytest.raises(ValueError, match=r"^f: m must be one of 'min', 'max', got 'x'$"):
        args.choice_arg("f", "m", "x", ("min", "max"))


def test_long_values_are_shortened_in_messages():
    with pytest.raises(TypeError) as info:
        args.real_arg("f", "x", "y" * 1000)
    assert len(str(info.value)) < 200

"""The optimizer table: one row per optimizer, the single source of what repeats per optimizer.

Everything that used to be written once per optimizer is derived from :data:`OPTIMIZERS`:

* at build time (``setup.py`` renders the Tempita templates with :func:`template_namespace`):
  the C API's hyperparameter structs and per-dtype functions (``adam_f32``,
  ``adam_f64_parallel``, ...), the per-dtype core adapters and the core table, the engine's
  per-family dispatch, and the validated Python kernels;
* at import time: :func:`fastlr.kernels.state_names` / ``make_state``, the optimizer classes'
  signatures and checks, the ``fastlr bench`` rows, the ``fastlr.compat.torch`` classes;
* in the tests: the parametrization, and the coverage test that names whatever a row lacks.

The maths is not here: each family's coefficient function and fused core loop are written by
hand, once, in ``fastlr/_core/loops.pxd``; its NumPy twin in ``fastlr/reference``.

Vocabulary
----------
family
    A C kernel family (``sgd``, ``rmsprop``, ``adam``, ...): one hyperparameter struct, one
    coefficient function, one core loop, per-dtype C functions. ``AdamW`` is the ``adam``
    family with ``decoupled_weight_decay`` fixed to true.
hyper
    A hyperparameter as the Python API takes it. ``check`` names its rule (see
    :data:`CHECKS`); ``schedulable`` ones take a schedule (evaluated in C each step);
    ``betas`` pairs appear as ``beta1`` / ``beta2`` with ``pair="betas"``.
c_fields
    The hyperparameter struct of the C API, field by field, in ABI order. It never changes
    for an existing family (new fields would go at the end, in a major release).
state
    The per-element state buffers, in the order the C functions take them, each with the
    condition under which it exists (``when``: a Python expression over the group's
    hyperparameters, or None for always) and its fill value.
"""

from dataclasses import dataclass, field

__all__ = ["Hyper", "State", "Family", "Optimizer", "FAMILIES", "OPTIMIZERS", "CHECKS",
           "family", "optimizer", "template_namespace"]

#: Range rules: name -> (low, high, high_inclusive, text). ``None`` bounds are open; every
#: rule also requires a finite real number (``flag`` is a bool instead).
CHECKS = {
    "nonneg": (0.0, None, False, "a finite number >= 0"),
    "unit": (0.0, 1.0, False, "in [0, 1)"),
    "closed_unit": (0.0, 1.0, True, "in [0, 1]"),
    "finite": (None, None, False, "a finite number"),
    "flag": None,
}


@dataclass(frozen=True)
class Hyper:
    name: str                     # Python keyword of the kernels / group key
    default: object               # the class constructor's default (None: required)
    check: str                    # a key of CHECKS
    schedulable: bool = False     # takes a schedule in the optimizer classes
    doc: str = ""
    pair: str = ""                # "betas": the class takes (beta1, beta2) as betas


@dataclass(frozen=True)
class State:
    name: str
    when: str = ""                # "" always; else a Python expression over the hyperparameters
    fill: str = ""                # "" zeros; else the hyperparameter whose value fills it
    lazy: bool = False            # torch creates it at the first update that uses it


@dataclass(frozen=True)
class Family:
    name: str                     # kernel family, e.g. "adam"
    struct: str                   # C API hyperparameter struct, e.g. "AdamHyper"
    c_fields: tuple               # ((ctype, name, comment), ...) in ABI order
    state: tuple                  # State rows, in C argument order
    hypers: tuple                 # Hyper rows, in the kernel's keyword order
    kernel_doc: str               # a line for the C API's comment
    uses_step: bool = True        # the kernel takes the 1-based step
    scalar_state: tuple = ()      # per-param scalars carried between steps: ((name, init),)


@dataclass(frozen=True)
class Optimizer:
    cls: str                      # class name in fastlr, e.g. "AdamW"
    family: str                   # a key of FAMILIES
    kernel: str                   # the name in fastlr.kernels / fastlr.reference
    follows: str                  # the class whose semantics it follows
    doc: str                      # one line
    defaults: dict = field(default_factory=dict)   # class defaults differing from the family's
    fixed: dict = field(default_factory=dict)      # hyperparameters the class fixes
    torch: str = ""               # torch.optim class name, "" when torch has none
    options: tuple = ()           # class-only options (not hyperparameters of the kernel)
    torch_state: dict = field(default_factory=dict)  # state name -> torch's key where they
    #                               differ; "step": "" when torch keeps no step count


def _h(name, default, check, schedulable=False, doc="", pair=""):
    return Hyper(name, default, check, schedulable, doc, pair)


_LR = _h("lr", None, "nonneg", True, "learning rate (parameter units per gradient unit)")
_WD = _h("weight_decay", 0.0, "nonneg", True, "weight decay")
_MAX = _h("maximize", False, "flag", doc="ascend instead of descend")
_EPS = lambda d: _h("eps", d, "nonneg", doc="added to the denominator")    # noqa: E731
_B1 = lambda d, c="unit": _h("beta1", d, c, True, "first-moment decay", "betas")  # noqa: E731
_B2 = lambda d, c="unit": _h("beta2", d, c, False, "second-moment decay", "betas")  # noqa: E731
_DWD = _h("decoupled_weight_decay", False, "flag", doc="p *= 1 - lr*wd (AdamW) instead of L2")

_D, _I64, _INT = "double", "int64_t", "int"

FAMILIES = {f.name: f for f in (
    Family(
        "sgd", "SGDHyper",
        ((_D, "lr", ""), (_D, "momentum", ""), (_D, "dampening", ""), (_D, "weight_decay", ""),
         (_I64, "step", "1-based update number; step == 1 initialises the momentum buffer"),
         (_INT, "nesterov", "0 or 1"), (_INT, "maximize", "0 or 1")),
        (State("momentum_buffer", "momentum != 0", lazy=True),),
        (_LR, _h("momentum", 0.0, "nonneg", True, "momentum factor"),
         _h("dampening", 0.0, "finite", doc="dampening of the momentum"), _WD,
         _h("nesterov", False, "flag", doc="Nesterov momentum"), _MAX),
        "SGD (momentum, dampening, Nesterov, L2 weight decay, maximize)"),
    Family(
        "rmsprop", "RMSpropHyper",
        ((_D, "lr", ""), (_D, "alpha", ""), (_D, "eps", ""), (_D, "weight_decay", ""),
         (_D, "momentum", ""), (_INT, "maximize", "")),
        (State("square_avg"), State("momentum_buffer", "momentum > 0"),
         State("grad_avg", "centered")),
        (_LR, _h("alpha", 0.99, "nonneg", doc="smoothing constant"), _EPS(1e-8), _WD,
         _h("momentum", 0.0, "nonneg", True, "momentum factor"), _MAX),
        "RMSprop (centered, momentum, L2 weight decay, maximize)", uses_step=False),
    Family(
        "adam", "AdamHyper",
        ((_D, "lr", ""), (_D, "beta1", ""), (_D, "beta2", ""), (_D, "eps", ""),
         (_D, "weight_decay", ""),
         (_I64, "step", "1-based update number, drives the bias corrections"),
         (_INT, "decoupled_weight_decay", "1: p *= 1 - lr*wd (AdamW); 0: g += wd*p (L2)"),
         (_INT, "maximize", "")),
        (State("exp_avg"), State("exp_avg_sq"), State("max_exp_avg_sq", "amsgrad")),
        (_LR, _B1(0.9), _B2(0.999), _EPS(1e-8), _WD, _DWD, _MAX),
        "Adam / AdamW (bias correction, AMSGrad, L2 or decoupled weight decay, maximize)"),
    Family(
        "adagrad", "AdagradHyper",
        ((_D, "lr", ""), (_D, "lr_decay", ""), (_D, "weight_decay", ""), (_D, "eps", ""),
         (_I64, "step", "1-based update number: lr / (1 + (step - 1) * lr_decay)"),
         (_INT, "maximize", "")),
        (State("state_sum", fill="initial_accumulator_value"),),
        (_LR, _h("lr_decay", 0.0, "nonneg", doc="lr / (1 + (step - 1) * lr_decay)"), _WD,
         _EPS(1e-10), _MAX),
        "Adagrad (lr_decay, L2 weight decay, maximize); state_sum starts at "
        "initial_accumulator_value"),
    Family(
        "adadelta", "AdadeltaHyper",
        ((_D, "lr", ""), (_D, "rho", ""), (_D, "eps", ""), (_D, "weight_decay", ""),
         (_INT, "maximize", "")),
        (State("square_avg"), State("acc_delta")),
        (_h("lr", 1.0, "nonneg", True, "learning rate (scales the delta)"),
         _h("rho", 0.9, "closed_unit", doc="decay of the running averages"), _EPS(1e-6), _WD,
         _MAX),
        "Adadelta (L2 weight decay, maximize)", uses_step=False),
    Family(
        "adamax", "AdamaxHyper",
        ((_D, "lr", ""), (_D, "beta1", ""), (_D, "beta2", ""), (_D, "eps", ""),
         (_D, "weight_decay", ""),
         (_I64, "step", "1-based update number, drives the bias correction"),
         (_INT, "maximize", "")),
        (State("exp_avg"), State("exp_inf")),
        (_LR, _B1(0.9), _B2(0.999), _EPS(1e-8), _WD, _MAX),
        "Adamax (bias correction, L2 weight decay, maximize)"),
    Family(
        "nadam", "NAdamHyper",
        ((_D, "lr", ""), (_D, "beta1", ""), (_D, "beta2", ""), (_D, "eps", ""),
         (_D, "weight_decay", ""), (_D, "momentum_decay", ""),
         (_D, "mu_product", "product of mu_1 .. mu_(step-1) (1.0 before the first update)"),
         (_I64, "step", ""), (_INT, "decoupled_weight_decay", ""), (_INT, "maximize", "")),
        (State("exp_avg"), State("exp_avg_sq")),
        (_LR, _B1(0.9), _B2(0.999), _EPS(1e-8), _WD,
         _h("momentum_decay", 4e-3, "nonneg", doc="mu_t = beta1 (1 - 0.5 0.96^(t psi))"),
         _DWD, _MAX),
        "NAdam (momentum decay, L2 or decoupled weight decay, maximize); the caller keeps "
        "mu_product", scalar_state=(("mu_product", 1.0),)),
    Family(
        "radam", "RAdamHyper",
        ((_D, "lr", ""), (_D, "beta1", ""), (_D, "beta2", ""), (_D, "eps", ""),
         (_D, "weight_decay", ""), (_I64, "step", ""), (_INT, "decoupled_weight_decay", ""),
         (_INT, "maximize", "")),
        (State("exp_avg"), State("exp_avg_sq")),
        (_LR, _B1(0.9), _B2(0.999), _EPS(1e-8), _WD, _DWD, _MAX),
        "RAdam (rectification, L2 or decoupled weight decay, maximize)"),
    Family(
        "lion", "LionHyper",
        ((_D, "lr", ""), (_D, "beta1", "interpolation of the update direction"),
         (_D, "beta2", "decay of the momentum"),
         (_D, "weight_decay", "decoupled: p -= lr * wd * p (optax's add_decayed_weights)"),
         (_INT, "maximize", "")),
        (State("exp_avg"),),
        (_LR, _B1(0.9, "closed_unit"), _B2(0.99, "closed_unit"),
         _h("weight_decay", 1e-3, "nonneg", True, "decoupled weight decay"), _MAX),
        "Lion (optax's definition: sign of the interpolated momentum, decoupled decay)",
        uses_step=False),
)}

OPTIMIZERS = {o.cls: o for o in (
    Optimizer("SGD", "sgd", "sgd", "torch.optim.SGD",
              "SGD with momentum, dampening, Nesterov and L2 weight decay",
              defaults={"lr": 1e-3}, torch="SGD", torch_state={"step": ""}),
    Optimizer("RMSprop", "rmsprop", "rmsprop", "torch.optim.RMSprop",
              "RMSprop, optionally centered and with momentum",
              defaults={"lr": 1e-2}, torch="RMSprop", options=(("centered", False),)),
    Optimizer("Adam", "adam", "adam", "torch.optim.Adam",
              "Adam with AMSGrad and L2 or decoupled weight decay",
              defaults={"lr": 1e-3}, torch="Adam", options=(("amsgrad", False),)),
    Optimizer("AdamW", "adam", "adamw", "torch.optim.AdamW",
              "AdamW: Adam with decoupled weight decay",
              defaults={"lr": 1e-3, "weight_decay": 1e-2},
              fixed={"decoupled_weight_decay": True}, torch="AdamW",
              options=(("amsgrad", False),)),
    Optimizer("Adagrad", "adagrad", "adagrad", "torch.optim.Adagrad",
              "Adagrad with lr decay and L2 weight decay",
              defaults={"lr": 1e-2}, torch="Adagrad",
              options=(("initial_accumulator_value", 0.0),),
              torch_state={"state_sum": "sum"}),
    Optimizer("Adadelta", "adadelta", "adadelta", "torch.optim.Adadelta",
              "Adadelta with L2 weight decay", defaults={"lr": 1.0}, torch="Adadelta"),
    Optimizer("Adamax", "adamax", "adamax", "torch.optim.Adamax",
              "Adamax, Adam with an infinity norm", defaults={"lr": 2e-3}, torch="Adamax"),
    Optimizer("NAdam", "nadam", "nadam", "torch.optim.NAdam",
              "NAdam, Adam with Nesterov momentum and momentum decay",
              defaults={"lr": 2e-3}, torch="NAdam"),
    Optimizer("RAdam", "radam", "radam", "torch.optim.RAdam", "RAdam, rectified Adam",
              defaults={"lr": 1e-3}, torch="RAdam"),
    Optimizer("Lion", "lion", "lion", "optax.lion",
              "Lion, the sign of interpolated momentum (optax's definition)",
              defaults={"lr": 1e-4}),
)}


def family(name):
    """The :class:`Family` row ``name`` (a ValueError naming the known ones otherwise)."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown optimizer family {name!r}; expected one of "
                         f"{', '.join(FAMILIES)}") from None


def optimizer(cls_name):
    """The :class:`Optimizer` row of the class named ``cls_name``."""
    try:
        return OPTIMIZERS[cls_name]
    except KeyError:
        raise ValueError(f"unknown optimizer {cls_name!r}; expected one of "
                         f"{', '.join(OPTIMIZERS)}") from None


def kernels():
    """The validated kernels' names, in table order: every family, plus fixed variants
    (``adamw``)."""
    return tuple(dict.fromkeys(o.kernel for o in OPTIMIZERS.values()))


def template_namespace():
    """What the build-time templates see: the families (in table order) and helpers."""
    return {"FAMILIES": list(FAMILIES.values()), "OPTIMIZERS": list(OPTIMIZERS.values()),
            "CHECKS": CHECKS}


# ---- derived views of the table (used by fastlr.kernels, fastlr.optim, compat, bench) ----

class _Unknown:
    """A hyperparameter whose value is not a number (a schedule): every condition on it
    holds, so the buffers it may need exist."""

    def __bool__(self):
        return True

    def _cmp(self, other):
        return True

    __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = _cmp
    __hash__ = object.__hash__


UNKNOWN = _Unknown()

_WHEN_CODE = {}


def _when_code(expr):
    code = _WHEN_CODE.get(expr)
    if code is None:
        code = _WHEN_CODE[expr] = compile(expr, f"<State.when {expr!r}>", "eval")
    return code


def when_names(expr):
    """The names a ``State.when`` condition reads."""
    return tuple(_when_code(expr).co_names) if expr else ()


def state_options(family_name):
    """The options (hyperparameters or class options) a family's state conditions read."""
    return tuple(dict.fromkeys(n for s in family(family_name).state for n in when_names(s.when)))


def state_names(family_name, values):
    """The family's state buffers that exist for ``values`` (a mapping of the names the
    conditions read; :data:`UNKNOWN` for a scheduled one), in C argument order."""
    out = []
    for s in family(family_name).state:
        if not s.when or eval(_when_code(s.when), {"__builtins__": {}}, values):
            out.append(s.name)
    return tuple(out)


def fill_options():
    """The options that fill a state buffer (``State.fill``), e.g. initial_accumulator_value."""
    return tuple(dict.fromkeys(s.fill for f in FAMILIES.values() for s in f.state if s.fill))


def fill_owner(option):
    """The first class (in table order) whose family fills a buffer with ``option``."""
    for o in OPTIMIZERS.values():
        if any(s.fill == option for s in FAMILIES[o.family].state):
            return o.cls
    return None

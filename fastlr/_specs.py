"""The optimizer table: one row per optimizer, the single source of what repeats per optimizer.

Everything that used to be written once per optimizer is derived from :data:`OPTIMIZERS`:

* at build time (``setup.py`` renders every ``fastlr/**/*.tp`` Tempita template with
  :func:`template_namespace`, through :func:`render_templates`): the C API's hyperparameter
  structs and per-dtype functions (``adam_f32``, ``adam_f64_parallel``, ...; ``_kernels.pxd``
  and ``_kernels_api.pxi``), the family numbers, per-dtype core adapters and the core table
  (``_core/families.pxd``), the engine's per-family dispatch (``_core/engine_families.pxi``),
  and the validated Python kernels with their stubs (``_kernels_api.pxi``,
  ``_kernels.pyi``; docstrings from :data:`KERNEL_DOCS`);
* at import time: :func:`fastlr.kernels.state_names` / ``make_state``, the optimizer classes'
  signatures and checks, the ``fastlr bench`` rows, the ``fastlr.compat.torch`` classes;
* in the tests: the parametrization, and the coverage test that names whatever a row lacks.

The maths is not here: each family's coefficient function and fused core loop are written by
hand, once, in ``fastlr/_core/loops.pxd``; its NumPy twin in ``fastlr/reference``.

A new family ``x`` on the compiled side: its row here (:data:`FAMILIES`, :data:`OPTIMIZERS`,
:data:`KERNEL_DOCS`), and in ``loops.pxd`` its ``XCoef`` struct (with a ``double sign``),
``x_coef(const XHyper*, XCoef*)`` and ``x_core(param, grad, <state in table order>, n,
const XCoef*)``. Rows may not reorder or change an existing family's ``c_fields`` (the ABI).

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

import re
import textwrap
from dataclasses import dataclass, field

__all__ = ["Hyper", "State", "Family", "Optimizer", "FAMILIES", "OPTIMIZERS", "CHECKS",
           "KERNEL_DOCS", "family", "optimizer", "template_namespace",
           "render_templates"]

#: Range rules: name -> (low, high, high_inclusive, text, low_inclusive). ``None`` bounds
#: are open; every rule also requires a finite real number (``flag`` is a bool instead).
CHECKS = {
    "nonneg": (0.0, None, False, "a finite number >= 0", True),
    "unit": (0.0, 1.0, False, "in [0, 1)", True),
    "closed_unit": (0.0, 1.0, True, "in [0, 1]", True),
    "finite": (None, None, False, "a finite number", True),
    "open_unit": (0.0, 1.0, False, "in (0, 1)", False),
    "above_one": (1.0, None, False, "a finite number > 1", False),
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
    scalar_check: str = "closed_unit"   # the CHECKS rule of the per-param scalar
    scalar_doc: str = ""          # a sentence more on it for the class docstring
    kernel_keywords: tuple = ()   # the validated kernel's keyword order, when not ``hypers``'
    first_use_step: str = ""      # a state buffer: ``step`` is 1 on its first use, else 2
                                  # (torch's "buffer is None"); "" : the update count


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
    kernel_defaults: dict = field(default_factory=dict)  # the kernel's defaults differing
                                                         # from the family's (adamw)
    torch_state: dict = field(default_factory=dict)  # state name -> torch's key where they
    #                               differ; "step": "" when torch keeps no step count


def _h(name, default, check, schedulable=False, doc="", pair=""):
    return Hyper(name, default, check, schedulable, doc, pair)


_LR = _h("lr", None, "nonneg", True, "learning rate (parameter units per gradient unit)")
_WD = _h("weight_decay", 0.0, "nonneg", True, "weight decay")
_MAX = _h("maximize", False, "flag", doc="ascend instead of descend")
_EPS = lambda d: _h("eps", d, "nonneg", True, "added to the denominator")    # noqa: E731
_B1 = lambda d, c="unit": _h("beta1", d, c, True, "first-moment decay", "betas")  # noqa: E731
_B2 = lambda d, c="unit": _h("beta2", d, c, True, "second-moment decay", "betas")  # noqa: E731
_DWD = _h("decoupled_weight_decay", False, "flag",
         doc="``p *= 1 - lr * wd`` (AdamW) instead of L2")

_D, _I64, _INT = "double", "int64_t", "int"

FAMILIES = {f.name: f for f in (
    Family(
        "sgd", "SGDHyper",
        ((_D, "lr", ""), (_D, "momentum", ""), (_D, "dampening", ""), (_D, "weight_decay", ""),
         (_I64, "step", "1-based update number; step == 1 initialises the momentum buffer"),
         (_INT, "nesterov", "0 or 1"), (_INT, "maximize", "0 or 1")),
        (State("momentum_buffer", "momentum != 0", lazy=True),),
        (_LR, _h("momentum", 0.0, "nonneg", True, "momentum factor"),
         _h("dampening", 0.0, "finite", True, "dampening of the momentum"), _WD,
         _h("nesterov", False, "flag", doc="Nesterov momentum"), _MAX),
        "SGD (momentum, dampening, Nesterov, L2 weight decay, maximize)",
        kernel_keywords=("lr", "momentum", "dampening", "nesterov", "weight_decay", "maximize"),
        first_use_step="momentum_buffer"),
    Family(
        "rmsprop", "RMSpropHyper",
        ((_D, "lr", ""), (_D, "alpha", ""), (_D, "eps", ""), (_D, "weight_decay", ""),
         (_D, "momentum", ""), (_INT, "maximize", "")),
        (State("square_avg"), State("momentum_buffer", "momentum > 0"),
         State("grad_avg", "centered")),
        (_LR, _h("alpha", 0.99, "nonneg", True, "smoothing constant"), _EPS(1e-8), _WD,
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
        (_LR, _h("lr_decay", 0.0, "nonneg", True, "lr / (1 + (step - 1) * lr_decay)"), _WD,
         _EPS(1e-10), _MAX),
        "Adagrad (lr_decay, L2 weight decay, maximize); state_sum starts at "
        "initial_accumulator_value"),
    Family(
        "adadelta", "AdadeltaHyper",
        ((_D, "lr", ""), (_D, "rho", ""), (_D, "eps", ""), (_D, "weight_decay", ""),
         (_INT, "maximize", "")),
        (State("square_avg"), State("acc_delta")),
        (_h("lr", 1.0, "nonneg", True, "learning rate (scales the delta)"),
         _h("rho", 0.9, "closed_unit", True, "decay of the running averages"), _EPS(1e-6), _WD,
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
         _h("momentum_decay", 4e-3, "nonneg", True, "mu_t = beta1 (1 - 0.5 0.96^(t psi))"),
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
    Family(
        "rprop", "RpropHyper",
        ((_D, "etaminus", "step-size decrease factor, in (0, 1)"),
         (_D, "etaplus", "step-size increase factor, > 1"),
         (_D, "step_size_min", ""), (_D, "step_size_max", ""), (_INT, "maximize", "")),
        (State("prev"), State("step_size", fill="lr")),
        (_h("lr", 1e-2, "nonneg",
            doc="initial step size (fills step_size; the update itself does not read lr)"),
         _h("etaminus", 0.5, "open_unit", True, "step-size decrease factor", "etas"),
         _h("etaplus", 1.2, "above_one", True, "step-size increase factor", "etas"),
         _h("step_size_min", 1e-6, "nonneg", True, "smallest step size", "step_sizes"),
         _h("step_size_max", 50.0, "nonneg", True, "largest step size", "step_sizes"),
         _MAX),
        "Rprop (per-element step sizes from the signs of successive grads, maximize); "
        "step_size starts at lr",
        uses_step=False,
        kernel_keywords=("etaminus", "etaplus", "step_size_min", "step_size_max", "maximize")),
    Family(
        "asgd", "ASGDHyper",
        ((_D, "lr", ""), (_D, "lambd", "decay term"), (_D, "alpha", "power for eta update"),
         (_D, "t0", "point at which to start averaging"), (_D, "weight_decay", ""),
         (_D, "eta", "this update's step size (the caller keeps it; step == 1 uses lr)"),
         (_I64, "step", "1-based update number; mu = 1 / max(1, step - 1 - t0)"),
         (_INT, "maximize", "")),
        (State("ax"),),
        (_LR, _h("lambd", 1e-4, "nonneg", True, "decay term"),
         _h("alpha", 0.75, "finite", True, "power for the eta update"),
         _h("t0", 1e6, "finite", doc="point at which to start averaging"), _WD, _MAX),
        "ASGD (averaged SGD: the ax average, eta decay, L2 weight decay, maximize); the "
        "caller keeps eta", scalar_state=(("eta", 1e-2),), scalar_check="nonneg",
        scalar_doc=" A param's first update uses ``lr`` instead (torch's eta starts at lr). "
                   "torch's other scalar, ``mu``, is derived from the step and ``t0``, so "
                   "``t0`` takes no schedule."),
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
              options=(("amsgrad", False),), kernel_defaults={"weight_decay": 1e-2}),
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
    Optimizer("Rprop", "rprop", "rprop", "torch.optim.Rprop",
              "Rprop, resilient backpropagation: per-element step sizes",
              torch="Rprop"),
    Optimizer("ASGD", "asgd", "asgd", "torch.optim.ASGD",
              "ASGD, averaged SGD: SGD with a decaying step size and the average ax",
              defaults={"lr": 1e-2}, torch="ASGD"),
)}


#: The validated kernels' docstrings (the formula each implements), by kernel name.
KERNEL_DOCS = {
    "sgd": """SGD with momentum, dampening, Nesterov and L2 weight decay, in place (torch.optim.SGD).

With ``g = -grad if maximize else grad``::

    g   = g + weight_decay * param                       (if weight_decay != 0)
    buf = g                                  (step == 1: the buffer starts as g)
    buf = momentum * buf + (1 - dampening) * g           (step > 1)
    g   = g + momentum * buf if nesterov else buf         (if momentum != 0)
    param = param - lr * g

``param`` (and ``momentum_buffer``, required exactly when ``momentum != 0``) are updated
in place; ``grad`` is only read. ``step`` is the 1-based update number of these
buffers. ``lr`` is in parameter units per gradient unit. ``n_threads=None`` uses
:func:`fastlr.get_num_threads`. Returns None.
""",
    "rmsprop": """RMSprop, optionally centered and with momentum, in place (torch.optim.RMSprop).

With ``g = -grad if maximize else grad`` and ``g = g + weight_decay * param``::

    square_avg = alpha * square_avg + (1 - alpha) * g**2
    grad_avg   = grad_avg + (1 - alpha) * (g - grad_avg)  (centered: grad_avg given)
    avg        = sqrt(square_avg - grad_avg**2) + eps      (centered)
               = sqrt(square_avg) + eps                    (otherwise; eps outside sqrt)
    buf   = momentum * buf + g / avg;  param = param - lr * buf   (momentum > 0)
    param = param - lr * g / avg                                  (momentum == 0)

No bias correction. ``momentum_buffer`` is required exactly when ``momentum > 0`` (it
starts at zeros); passing ``grad_avg`` selects the centered variant. Returns None.
""",
    "adam": """Adam, with AMSGrad and L2 or decoupled weight decay, in place (torch.optim.Adam).

With ``g = -grad if maximize else grad`` and ``t = step`` (1-based)::

    param = param * (1 - lr * weight_decay)     (decoupled_weight_decay, i.e. AdamW)
    g     = g + weight_decay * param            (otherwise, if weight_decay != 0)
    exp_avg    = exp_avg + (1 - beta1) * (g - exp_avg)
    exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * g**2
    v = max(max_exp_avg_sq, exp_avg_sq) -> max_exp_avg_sq   (AMSGrad: buffer given)
    v = exp_avg_sq                                            (otherwise)
    param = param - lr / (1 - beta1**t) * exp_avg / (sqrt(v) / sqrt(1 - beta2**t) + eps)

eps is added after the bias correction of sqrt(v), as torch does. Passing
``max_exp_avg_sq`` selects AMSGrad (the max is over the raw second moment). Returns None.
""",
    "adamw": """AdamW: :func:`adam` with decoupled weight decay (torch.optim.AdamW).

``param = param * (1 - lr * weight_decay)`` before the Adam update; the decay uses the
current lr, so a scheduled lr scales it too. Default ``weight_decay=1e-2``. Returns None.
""",
    "adagrad": """Adagrad with lr decay and L2 weight decay, in place (torch.optim.Adagrad).

With ``g = -grad if maximize else grad`` and ``t = step`` (1-based)::

    g         = g + weight_decay * param                  (if weight_decay != 0)
    clr       = lr / (1 + (t - 1) * lr_decay)
    state_sum = state_sum + g**2
    param     = param - clr * g / (sqrt(state_sum) + eps)

``state_sum`` starts at ``initial_accumulator_value`` (torch's default 0;
:func:`fastlr.kernels.make_state` fills it). ``lr`` is in parameter units per
normalised gradient. Returns None.
""",
    "adadelta": """Adadelta with L2 weight decay, in place (torch.optim.Adadelta).

With ``g = -grad if maximize else grad`` and ``g = g + weight_decay * param``::

    square_avg = rho * square_avg + (1 - rho) * g**2
    delta      = sqrt(acc_delta + eps) / sqrt(square_avg + eps) * g
    acc_delta  = rho * acc_delta + (1 - rho) * delta**2
    param      = param - lr * delta

eps sits inside both square roots; both buffers start at zeros; no step count is
needed. Returns None.
""",
    "adamax": """Adamax (Adam with an infinity norm), in place (torch.optim.Adamax).

With ``g = -grad if maximize else grad``, ``g = g + weight_decay * param`` and
``t = step`` (1-based)::

    exp_avg = exp_avg + (1 - beta1) * (g - exp_avg)
    exp_inf = maximum(beta2 * exp_inf, |g| + eps)       (NaN in either gives NaN)
    param   = param - lr / (1 - beta1**t) * exp_avg / exp_inf

Both buffers start at zeros. Returns None.
""",
    "nadam": """NAdam (Adam with Nesterov momentum), in place (torch.optim.NAdam). Returns the new
``mu_product``: pass it to the next call (start with 1.0).

With ``g = -grad if maximize else grad``, ``t = step`` (1-based) and
``mu(t) = beta1 * (1 - 0.5 * 0.96**(t * momentum_decay))``::

    param = param * (1 - lr * weight_decay)    (decoupled_weight_decay)
    g     = g + weight_decay * param           (otherwise, if weight_decay != 0)
    P     = mu_product * mu(t)                 (the returned mu_product)
    exp_avg    = exp_avg + (1 - beta1) * (g - exp_avg)
    exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * g**2
    denom = sqrt(exp_avg_sq / (1 - beta2**t)) + eps
    param = param - lr * (1 - mu(t)) / (1 - P) * g / denom
    param = param - lr * mu(t+1) / (1 - P * mu(t+1)) * exp_avg / denom

``mu_product`` is the product mu(1)...mu(t-1), a float in [0, 1]; torch keeps it in
each parameter's state (as fastlr.NAdam does). Both buffers start at zeros.
""",
    "radam": """RAdam (rectified Adam), in place (torch.optim.RAdam).

With ``g = -grad if maximize else grad``, ``t = step`` (1-based), weight decay as in
:func:`nadam`, ``rho_inf = 2 / (1 - beta2) - 1`` and
``rho_t = rho_inf - 2 t beta2**t / (1 - beta2**t)``::

    exp_avg    = exp_avg + (1 - beta1) * (g - exp_avg)
    exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * g**2
    m_hat = exp_avg / (1 - beta1**t)
    r     = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))
    param = param - m_hat * lr * sqrt(1 - beta2**t) / (sqrt(exp_avg_sq) + eps) * r
                                                          (rho_t > 5)
    param = param - m_hat * lr                             (otherwise: the first steps)

eps is added to the uncorrected sqrt(exp_avg_sq), as torch does. Returns None.
""",
    "lion": """Lion (evolved sign momentum), in place, as optax.lion defines it.

With ``g = -grad if maximize else grad``::

    u       = sign((1 - beta1) * g + beta1 * exp_avg)     (sign(0) = 0, NaN stays NaN)
    exp_avg = (1 - beta2) * g + beta2 * exp_avg
    param   = param - lr * (u + weight_decay * param)

The decay is decoupled and scaled by lr (optax's add_decayed_weights before
scale_by_learning_rate). ``exp_avg`` (optax's ``mu``) starts at zeros. Default
``weight_decay=1e-3`` as optax. Returns None.
""",
    "rprop": """Rprop (resilient backpropagation), in place (torch.optim.Rprop).

With ``g = -grad if maximize else grad`` and ``s = sign(g * prev)``::

    f = etaplus if s > 0, etaminus if s < 0, 1 otherwise (s == 0, or NaN: torch's sign)
    step_size = clamp(step_size * f, step_size_min, step_size_max)
    g     = 0 where f == etaminus                  (the sign flipped: no move, forget g)
    param = param - sign(g) * step_size           (sign(NaN) = 0, as torch.sign)
    prev  = g

``step_size`` starts at ``lr`` (:func:`fastlr.kernels.make_state` fills it: pass
``lr=``), ``prev`` at zeros; the arithmetic runs in the buffers' dtype (``f`` and the
bounds rounded to it), as torch. Returns None.
""",
    "asgd": """ASGD (averaged SGD), in place (torch.optim.ASGD). Returns the next update's
``eta``: pass it to the next call.

With ``g = -grad if maximize else grad``, ``t = step`` (1-based),
``eta = lr if t == 1 else eta`` (torch's state starts at lr) and
``mu = 1 if t == 1 else 1 / max(1, t - 1 - t0)``::

    g     = g + weight_decay * param                 (if weight_decay != 0)
    param = param * (1 - lambd * eta)
    param = param - eta * g
    ax    = ax + (param - ax) * mu                   (mu != 1)
    ax    = param                                    (mu == 1)
    returns lr / (1 + lambd * lr * t) ** alpha       (the next eta)

``eta`` is a float >= 0 (ignored at ``step == 1``); torch keeps it and ``mu`` in each
parameter's state (fastlr.ASGD keeps ``eta``; ``mu`` follows from the step and ``t0``).
``ax`` starts at zeros.
""",
}

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


# ---------------------------------------------------------------------------------------
# Build time: what the Tempita templates (fastlr/**/*.tp) see, and the renderer setup.py runs
# ---------------------------------------------------------------------------------------
_IDENT = re.compile(r"[A-Za-z_][A-Za-z_0-9]*")
_C_DTYPES = {"f32": "float", "f64": "double"}


def _enum(fam):
    """The family's number in the compiled tables: ``K_ADAM``."""
    return "K_" + fam.name.upper()


def _coef_struct(fam):
    """The family's coefficient struct in fastlr/_core/loops.pxd: ``AdamCoef``."""
    return fam.struct[:-len("Hyper")] + "Coef"


def _when_hypers(fam, st):
    """The hyperparameters a state's ``when`` reads, or None when it reads something else
    (a class option such as ``amsgrad``: then the buffer's presence selects the variant)."""
    if not st.when:
        return None
    names = [w for w in _IDENT.findall(st.when) if not w.isdigit()]
    hyper_names = {h.name for h in fam.hypers}
    return names if names and all(n in hyper_names for n in names) else None


def _when_c(fam, st, prefix):
    """The state's ``when`` as a C expression over ``prefix + hyper`` (hyper-only conditions)."""
    names = _when_hypers(fam, st)
    return _IDENT.sub(lambda m: prefix(m.group(0)) if m.group(0) in names else m.group(0),
                      st.when)


def _c_args(fam, dt):
    """The C API's pointer arguments: param, grad, then the state buffers in table order."""
    t = _C_DTYPES[dt]
    return ([f"{t}* param", f"const {t}* grad"] + [f"{t}* {st.name}" for st in fam.state])


def _decl(fam, dt, parallel, tail=""):
    """``cdef void adam_f32(...) noexcept nogil`` (wrapped at 96 columns) + tail."""
    head = f"cdef void {fam.name}_{dt}{'_parallel' if parallel else ''}("
    args = _c_args(fam, dt) + ["Py_ssize_t n", f"const {fam.struct}* h"]
    if parallel:
        args.append("int n_threads")
    lines, line = [], head
    for k, a in enumerate(args):
        piece = a + (", " if k < len(args) - 1 else ")")
        if len(line) + len(piece.rstrip()) > 92 and line.strip() != head.strip():
            lines.append(line.rstrip())
            line = " " * len(head) + piece
        else:
            line += piece
    lines.append(line + " noexcept nogil" + tail)
    return "\n".join(lines)


def _literal(value):
    """A default as the kernels' signatures spell it: ``1e-8``, ``4e-3``, ``0.99``."""
    if isinstance(value, float) and 0.0 < abs(value) < 0.1:
        mantissa, exponent = f"{value:e}".split("e")
        mantissa = mantissa.rstrip("0").rstrip(".")
        text = f"{mantissa}e{int(exponent)}"
        if float(text) == value:
            return text
    return repr(value)


@dataclass(frozen=True)
class _Keyword:
    name: str
    default: object               # _REQUIRED: keyword without default
    check: str                    # a key of CHECKS (scalar state: "closed_unit")
    field: bool                   # also a field of the family's C struct


_REQUIRED = object()


@dataclass(frozen=True)
class _Kernel:
    name: str                     # fastlr.kernels.<name>
    fam: Family
    keywords: tuple               # _Keyword rows, in signature order (after ``*``)
    fixed: dict                   # C field -> value (AdamW's decoupled_weight_decay)
    doc: str

    def signature(self):
        """The Python signature (without ``def name``), as the kernels take it."""
        pos = ["param", "grad"] + [st.name if not st.when else f"{st.name}=None"
                                   for st in self.fam.state]
        kw = [k.name if k.default is _REQUIRED else f"{k.name}={_literal(k.default)}"
              for k in self.keywords]
        return ", ".join(pos + ["*"] + kw + ["n_threads=None"])

    def stub(self):
        """The kernel's type stub (fastlr/_kernels.pyi)."""
        def row(text, comment=""):
            line = f"    {text},"
            return line if not comment else f"{line.ljust(38)}  # {comment}"
        rows = [row("param: _Float", "IN/OUT"), row("grad: _Float", "IN (may be read-only)")]
        for st in self.fam.state:
            rows.append(row(f"{st.name}: _Float", "IN/OUT") if not st.when else
                        row(f"{st.name}: Optional[_Float] = None",
                            f"IN/OUT, exactly when {st.when}"))
        rows.append("    *,")
        for k in self.keywords:
            kind = ("int" if k.check == "step" else "bool" if k.check == "flag" else "float")
            rows.append(row(f"{k.name}: {kind}" if k.default is _REQUIRED
                            else f"{k.name}: {kind} = {_literal(k.default)}"))
        rows.append(row("n_threads: Optional[int] = None"))
        ret = "float" if self.fam.scalar_state else "None"
        return "\n".join([f"def {self.name}("] + [r.rstrip() for r in rows]
                         + [f") -> {ret}: ..."])

    def def_line(self):
        """``def name(...):`` wrapped at 96 columns."""
        head = f"def {self.name}("
        lines, line = [], head
        for piece in (self.signature() + "):").split(" "):
            if len(line) + 1 + len(piece) > 96 and line.strip():
                lines.append(line.rstrip())
                line = " " * len(head) + piece
            else:
                line += ("" if line.endswith("(") or not line.strip() else " ") + piece
        lines.append(line)
        return "\n".join(lines)


def _kernels(families, optimizers, docs):
    """The validated kernels, in table order, with their keywords and fixed fields."""
    out = []
    for kernel in dict.fromkeys(o.kernel for o in optimizers.values()):
        opt = next(o for o in optimizers.values() if o.kernel == kernel)
        fam = families[opt.family]
        kws = [_Keyword("step", _REQUIRED, "step", True)] if fam.uses_step else []
        kws += [_Keyword(name, _REQUIRED, fam.scalar_check, True)
                for name, _ in fam.scalar_state]
        hypers = {h.name: h for h in fam.hypers}
        order = fam.kernel_keywords or tuple(hypers)
        fixed = dict(opt.fixed) if kernel != fam.name else {}
        for name in order:
            if name in fixed:
                continue
            h = hypers[name]
            default = opt.kernel_defaults.get(name, h.default) if kernel != fam.name \
                else h.default
            kws.append(_Keyword(name, _REQUIRED if default is None else default, h.check,
                                name in {f[1] for f in fam.c_fields}))
        missing = {f[1] for f in fam.c_fields} - {k.name for k in kws} - set(fixed)
        if missing:
            raise ValueError(f"kernel {kernel}: no keyword sets the C field(s) {sorted(missing)}")
        out.append(_Kernel(kernel, fam, tuple(kws), fixed, docs[kernel]))
    return out


def _hidx(fam, name):
    """The index of hyperparameter ``name`` in the family's order (the engine's GroupC.h)."""
    return [h.name for h in fam.hypers].index(name)


def _hyper_value(fam, ctype, name):
    """The engine's C expression for hyperparameter ``name`` as a struct field of ``ctype``."""
    v = f"g.h[{_hidx(fam, name)}].value"
    return v if ctype == "double" else f"<{ctype}>{v}"


def _display(fam, h):
    """A hyperparameter as a param group names it: ``betas[0]`` for a pair's first."""
    if not h.pair:
        return h.name
    return f"{h.pair}[{[x.name for x in fam.hypers if x.pair == h.pair].index(h.name)}]"


def _adapter_args(fam, ctype):
    """The state pointers an adapter passes its core: ``<float*>b[2], <float*>b[3], ``."""
    return "".join(f"<{ctype}*>b[{2 + k}], " for k in range(len(fam.state)))


def _job_states(fam):
    """The state arguments of run_job: the family's buffers, then NULL up to 3."""
    return ", ".join([st.name for st in fam.state] + ["NULL"] * (3 - len(fam.state)))


def _state_names(fam):
    return "".join(f', "{st.name}"' for st in fam.state)


def _state_args(fam):
    return "".join(f", {st.name}" for st in fam.state)


def _n_required(fam):
    """Arrays a kernel requires: param, grad and the state buffers that always exist."""
    return 2 + len([st for st in fam.state if not st.when])


def _why(fam, st):
    """The f-string text naming the values a state's ``when`` reads: ``momentum={momentum!r}``."""
    return ", ".join(f"{n}={{{n}!r}}" for n in _when_hypers(fam, st))


def _dropped(fam):
    """(slot, C condition over the engine's GroupC ``g``, state) for every state buffer
    whose ``when`` reads hyperparameters (checked each step: they may be scheduled)."""
    return [(k, _when_c(fam, st, lambda n: f"g.h[{_hidx(fam, n)}].value"), st)
            for k, st in enumerate(fam.state) if _when_hypers(fam, st)]


def _checks(fam):
    """(check number, hyper index, Hyper) for the schedulable hyperparameters (the engine
    checks their values each step)."""
    rows = [(i, h) for i, h in enumerate(fam.hypers) if h.schedulable]
    return [(j, i, h) for j, (i, h) in enumerate(rows)]


def _check_c(rule, v):
    """A CHECKS rule as a C condition on ``v`` (NaN fails every comparison)."""
    low, high, inclusive, _, low_inclusive = CHECKS[rule]
    conds = [] if low is not None and high is not None else [f"isfinite({v})"]
    if low is not None:
        conds.append(f"{v} {'>=' if low_inclusive else '>'} {low!r}")
    if high is not None:
        conds.append(f"{v} {'<=' if inclusive else '<'} {high!r}")
    return " and ".join(conds)


def _check_text(fam):
    """Per schedulable hyperparameter (the engine's check order): the name a message shows
    and its rule's text."""
    return tuple((_display(fam, h), CHECKS[h.check][3]) for h in fam.hypers if h.schedulable)


def _used(fam, name):
    return _hidx(fam, name) if name in [h.name for h in fam.hypers] else -1


def _indent(text, n):
    pad = " " * n
    return "\n".join(pad + line if line.strip() else line for line in text.split("\n"))


def _check_table(families):
    for fam in families.values():
        # lr first (the engine's h[0]); schedulable, unless it only fills a state buffer
        # at its creation (Rprop's step_size): then a schedule would mean nothing
        if fam.hypers[0].name != "lr" or not (
                fam.hypers[0].schedulable or any(st.fill == "lr" for st in fam.state)):
            raise ValueError(f"{fam.name}: the first hyperparameter must be lr, schedulable "
                             f"unless it only fills a state buffer")
        if len(fam.state) > 3:
            raise ValueError(f"{fam.name}: at most 3 state buffers (the cores take 5 pointers)")
        if len(fam.scalar_state) > 1:
            raise ValueError(f"{fam.name}: the engine carries one per-param scalar")
        opt = [st.name for st in fam.state if st.when]
        if [st.name for st in fam.state][len(fam.state) - len(opt):] != opt:
            raise ValueError(f"{fam.name}: optional state buffers must come last")


def template_namespace(families=None, optimizers=None, kernel_docs=None):
    """What the build-time templates see: the families (in table order) and helpers. The
    arguments replace the table's FAMILIES / OPTIMIZERS / KERNEL_DOCS (the tests render a
    table with an extra row)."""
    families = FAMILIES if families is None else families
    optimizers = OPTIMIZERS if optimizers is None else optimizers
    docs = KERNEL_DOCS if kernel_docs is None else kernel_docs
    _check_table(families)
    return {"FAMILIES": list(families.values()), "OPTIMIZERS": list(optimizers.values()),
            "CHECKS": CHECKS, "KERNELS": _kernels(families, optimizers, docs),
            "REQUIRED": _REQUIRED, "MAX_STATE": 3,
            "MAX_HYPERS": max(len(f.hypers) for f in families.values()),
            "enum": _enum, "coef_struct": _coef_struct, "c_args": _c_args, "decl": _decl,
            "when_hypers": _when_hypers, "when_c": _when_c, "indent": _indent,
            "hidx": _hidx, "hyper_value": _hyper_value, "display": _display, "check_text": _check_text,
            "USED": ("lr", "momentum", "beta1", "weight_decay"), "used": _used,
            "adapter_args": _adapter_args, "job_states": _job_states,
            "state_names": _state_names, "state_args": _state_args, "n_required": _n_required,
            "why": _why, "dropped": _dropped, "checks": _checks, "check_c": _check_c,
            "repr": repr, "len": len, "enumerate": enumerate}


def render_templates(root, namespace=None, write=True):
    """Render every ``*.tp`` under ``root`` to the same path without ``.tp``, with a header
    naming its template; write a file only when its content changed (keeps rebuilds
    incremental). Returns {output path: rendered text}. Needs Cython (its Tempita)."""
    import os

    from Cython import Tempita

    ns = template_namespace() if namespace is None else namespace
    out = {}
    for dirpath, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            if not name.endswith(".tp"):
                continue
            src = os.path.join(dirpath, name)
            dst = src[:-len(".tp")]
            with open(src, encoding="utf-8") as f:
                template = Tempita.Template(f.read(), name=src)
            # the namespace as the templates' globals too, so comprehensions see it
            template.default_namespace = dict(Tempita.Template.default_namespace, **ns)
            rel = os.path.relpath(src, os.path.dirname(root)).replace(os.sep, "/")
            text = (f"# generated from {rel} by setup.py from fastlr/_specs.py; do not edit\n"
                    + template.substitute(ns))
            out[dst] = text
            if write:
                old = None
                if os.path.exists(dst):
                    with open(dst, encoding="utf-8") as f:
                        old = f.read()
                if old != text:
                    with open(dst, "w", encoding="utf-8") as f:
                        f.write(text)
    return out


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


# ---- the validated kernels' numpydoc Parameters sections, generated from the table ----
_ARRAY_LAYOUT = "param's dtype, shape and memory layout"


def _kernel_parameters(k):
    """The ``Parameters`` section of validated kernel ``k`` (a :class:`_Kernel`)."""
    fam = k.fam
    hypers = {h.name: h for h in fam.hypers}
    lines = ["Parameters", "----------",
             "param : numpy.ndarray",
             "    The parameter, float32 or float64, C- or F-contiguous and writeable; updated "
             "in place.",
             "grad : numpy.ndarray",
             f"    Its gradient, with {_ARRAY_LAYOUT}; only read (it may be read-only)."]
    for st in fam.state:
        start = f"``{st.fill}``" if st.fill else "zeros"
        if not st.when:
            lines += [f"{st.name} : numpy.ndarray",
                      f"    State with {_ARRAY_LAYOUT}, updated in place; starts at {start}."]
        elif _when_hypers(fam, st):
            lines += [f"{st.name} : numpy.ndarray, optional",
                      f"    State with {_ARRAY_LAYOUT}, updated in place; required exactly "
                      f"when ``{st.when}`` (None otherwise); starts at {start}."]
        else:
            lines += [f"{st.name} : numpy.ndarray, optional",
                      f"    State with {_ARRAY_LAYOUT}, updated in place; passing it selects "
                      f"the ``{st.when}`` variant; starts at {start}."]
    for kw in k.keywords:
        if kw.check == "step":
            lines += ["step : int", "    The 1-based update number of these buffers, >= 1."]
            continue
        h = hypers.get(kw.name)
        if h is None:                     # per-param scalar state (nadam's mu_product)
            init = dict(fam.scalar_state)[kw.name]
            lines += [f"{kw.name} : float",
                      f"    Carried between calls ({init!r} before the first update), "
                      f"{CHECKS[fam.scalar_check][3]}; the call returns the new value."]
            continue
        kind = "bool" if h.check == "flag" else "float"
        default = "" if kw.default is _REQUIRED else f", default {_literal(kw.default)}"
        rule = "" if h.check == "flag" else f", {CHECKS[h.check][3]}"
        lines += [f"{kw.name} : {kind}{default}", f"    {h.doc}{rule}."]
    lines += ["n_threads : int, optional",
              "    OpenMP threads for a large array; None uses :func:`fastlr.get_num_threads`."]
    out = []
    for line in lines:               # descriptions wrapped at 88 columns
        out += textwrap.wrap(line, 88, subsequent_indent="    ") if line.startswith("    ") \
            else [line]
    return "\n".join(out) + "\n"


KERNEL_DOCS.update({k.name: k.doc.rstrip("\n") + "\n\n" + _kernel_parameters(k)
                    for k in _kernels(FAMILIES, OPTIMIZERS, KERNEL_DOCS)})

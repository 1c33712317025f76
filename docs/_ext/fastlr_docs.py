"""Sphinx extension of fastlr's docs: pages generated from the code at every build.

* ``generated/optimizers/<family>.rst``: one page per kernel family of the optimizer table
  (``fastlr._specs``): its classes and their signatures, the update formula
  (``KERNEL_DOCS``), every constructor argument with its default, accepted values and
  meaning, the state buffers, the validated kernel and the C API struct. An argument the
  table does not describe and this file does not know fails the build.
* ``generated/schedules/<name>.png`` and ``generated/schedules_gallery.inc``: a picture of
  every schedule constructor in ``fastlr.schedules.__all__`` (matplotlib, Agg), drawn from
  ``SCHEDULE_EXAMPLES``; a constructor without an example fails the build.
* ``generated/_kernels.pxd``: a copy of the C API header of the fastlr being documented.
* the ``torch-only`` directive: its content when torch imports, a note otherwise.
"""

import inspect
import os
import shutil

from docutils import nodes
from docutils.parsers.rst import Directive
from sphinx.errors import ExtensionError

#: Constructor arguments that are not rows of the table (the Optimizer base class's).
COMMON_ARGS = {
    "params": ("(required)", "an array, a list of arrays or a list of param-group dicts",
               "the arrays to optimize, updated in place; a group dict may override any "
               "hyperparameter for its arrays, as in torch"),
    "n_threads": ("None", "None or an int >= 1",
                  "OpenMP threads for the update; None uses :func:`fastlr.get_num_threads`"),
    "max_grad_norm": ("None", "None or a finite number > 0",
                      "clip by the global L2 norm of all grads, fused into the step "
                      "(``torch.nn.utils.clip_grad_norm_``'s factor)"),
    "skip_nonfinite": ("False", "True or False",
                       "skip the whole step (no change anywhere) when a grad holds NaN or "
                       "Inf; ``step`` then returns False"),
    "state_dtype": ("'float32'", "'float32', or 'bfloat16' for Adam and AdamW (float32 params)",
                    "how the state buffers are stored: in the params' dtype, or as bfloat16 "
                    "(half the memory; see :doc:`/lowprecision`)"),
    "master_weights": ("None", "None, True or False",
                       "float16 / bfloat16 params are kept as float32 master weights "
                       "(None or True; False is refused: see :doc:`/lowprecision`)"),
}

#: Class options (``Optimizer.options`` in the table): what they do.
OPTION_DOCS = {
    "centered": "normalise by an estimate of the variance (keeps ``grad_avg``)",
    "amsgrad": "use the maximum of past second moments (keeps ``max_exp_avg_sq``)",
    "initial_accumulator_value": "the value ``state_sum`` starts at; a param group's own "
                                 "value applies to that group's params (torch 2.13 ignores "
                                 "a group's value: every param starts at the constructor's)",
}

#: One example call per schedule constructor, and the steps its picture covers.
SCHEDULE_EXAMPLES = {
    "constant": ("constant(0.1)", 100),
    "step_decay": ("step_decay(0.1, step_size=30, gamma=0.5)", 120),
    "multistep": ("multistep(0.1, milestones=[30, 80], gamma=0.1)", 120),
    "exponential": ("exponential(0.1, gamma=0.97)", 120),
    "exponential_decay": ("exponential_decay(0.1, transition_steps=20, decay_rate=0.5, "
                          "staircase=True, transition_begin=10)", 120),
    "inverse_time": ("inverse_time(0.1, decay_steps=10, decay_rate=0.5)", 120),
    "polynomial": ("polynomial(0.1, total_steps=100, power=2.0)", 120),
    "linear": ("linear(0.1, start_factor=0.1, end_factor=1.0, total_steps=60)", 120),
    "cosine": ("cosine(0.1, total_steps=100, end=0.01)", 120),
    "cosine_restarts": ("cosine_restarts(0.1, period=20, period_mult=2, decay=0.8)", 150),
    "cyclic": ("cyclic(0.01, 0.1, step_size_up=20, mode='triangular2')", 160),
    "one_cycle": ("one_cycle(0.1, total_steps=120)", 130),
    "piecewise_constant": ("piecewise_constant([40, 80], [0.1, 0.05, 0.01])", 120),
    "piecewise_linear": ("piecewise_linear([0, 20, 80, 100], [0.0, 0.1, 0.02, 0.0])", 120),
    "warmup_cosine": ("warmup_cosine(0.1, warmup_steps=20, total_steps=100)", 120),
    "warmup": ("warmup(exponential(0.1, gamma=0.97), warmup_steps=20)", 120),
    "join": ("join([constant(0.05), cosine(0.1, total_steps=60)], boundaries=[40])", 120),
    "minimum": ("minimum(linear(0.1, start_factor=0.0, total_steps=40), "
                "cosine(0.15, total_steps=100))", 120),
    "maximum": ("maximum(exponential(0.1, gamma=0.95), 0.02)", 120),
    "chained": ("chained(constant_lr(0.1, factor=0.5, total_steps=20), "
                "exponential(1.0, gamma=0.98))", 120),
    "multiplicative": ("multiplicative(0.1, factor=piecewise_constant([50], [0.99, 1.0]))",
                       120),
    "constant_lr": ("constant_lr(0.1, factor=0.25, total_steps=30)", 120),
    "lambda_lr": ("lambda_lr(0.1, cosine_restarts(1.0, period=40))", 120),
    "wsd": ("wsd(0.1, total_steps=100, warmup_steps=10, decay_fraction=0.2, "
            "decay='1-sqrt')", 120),
    "inverse_sqrt": ("inverse_sqrt(0.1, warmup_steps=20)", 120),
    "noam": ("noam(512, warmup_steps=20)", 120),
    "rex": ("rex(0.1, total_steps=100)", 120),
    "warmup_exponential_decay": ("warmup_exponential_decay(0.1, warmup_steps=10, "
                                 "transition_steps=20, decay_rate=0.5, transition_begin=10, "
                                 "staircase=True, end=0.01)", 120),
    "sgdr": ("sgdr([{'peak': 0.1, 'warmup_steps': 5, 'total_steps': 40}, "
             "{'peak': 0.05, 'warmup_steps': 5, 'total_steps': 60, 'end': 0.005}])", 120),
}
#: Names in fastlr.schedules.__all__ that are not constructors of a curve.
NOT_DRAWN = ("Schedule", "as_schedule", "from_callable")


def _write(path, text):
    """Write ``text`` unless the file already holds it (keeps incremental builds quiet)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            if f.read() == text:
                return
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def _title(text, char):
    return [text, char * len(text), ""]


def _literal_default(value):
    return "(required)" if value is inspect.Parameter.empty else repr(value)


def _indent(text, n=3):
    pad = " " * n
    return [pad + line if line.strip() else "" for line in text.splitlines()]


def _table(header, rows, widths):
    out = [".. list-table::", "   :header-rows: 1", f"   :widths: {' '.join(map(str, widths))}",
           ""]
    for row in [header] + rows:
        out.append(f"   * - {row[0]}")
        out += [f"     - {cell}" for cell in row[1:]]
    return out + [""]


def _accepted(specs, h):
    if h.check == "flag":
        return "True or False"
    text = specs.CHECKS[h.check][3]
    return text + (", or a schedule" if h.schedulable else "")


def _argument_rows(specs, row, fam, cls):
    """[name, default, accepted, meaning] for every argument of ``cls``'s constructor."""
    hypers = {}
    for h in fam.hypers:
        hypers.setdefault(h.pair or h.name, []).append(h)
    options = dict(row.options)
    rows = []
    for name, p in inspect.signature(cls).parameters.items():
        default = _literal_default(p.default)
        if name in COMMON_ARGS:
            d, accepted, meaning = COMMON_ARGS[name]
            rows.append([f"``{name}``", f"``{default}``" if name != "params" else d, accepted,
                         meaning])
        elif name in hypers:
            hs = hypers[name]
            if len(hs) == 1:
                h = hs[0]
                accepted, meaning = _accepted(specs, h), h.doc
                if name == "lr" and h.schedulable:
                    accepted = "a finite number >= 0, a schedule or a callable step -> float"
            else:
                accepted = "a pair: " + "; ".join(
                    f"``{name}[{k}]`` ({h.name}) {_accepted(specs, h)}"
                    for k, h in enumerate(hs))
                meaning = " and ".join(h.doc for h in hs)
            rows.append([f"``{name}``", f"``{default}``", accepted, meaning])
        elif name in options:
            if name not in OPTION_DOCS:
                raise ExtensionError(f"fastlr_docs: {row.cls}'s option {name!r} has no entry "
                                     f"in OPTION_DOCS (docs/_ext/fastlr_docs.py)")
            accepted = ("True or False" if isinstance(options[name], bool)
                        else "a finite number >= 0")
            rows.append([f"``{name}``", f"``{default}``", accepted, OPTION_DOCS[name]])
        else:
            raise ExtensionError(f"fastlr_docs: {row.cls}.__init__ takes {name!r}, which "
                                 f"neither the optimizer table nor COMMON_ARGS describes")
    return rows


def _wrapped_call(name, signature, width=84):
    """``name(signature)`` as code-block lines, wrapped after commas at ``width`` columns."""
    pad = " " * (len(name) + 1)
    lines, line = [], name + "("
    for piece in [p + "," for p in signature[1:-1].split(", ")]:
        if len(line) + 1 + len(piece) > width and line.strip() and not line.endswith("("):
            lines.append(line)
            line = pad + piece
        else:
            line += ("" if line.endswith("(") else " ") + piece
    lines.append(line[:-1] + ")")
    return ["   " + x for x in lines]


def _formula_text(specs, kernel):
    """A kernel's docstring without its Parameters section (the page has its own tables)."""
    return specs.KERNEL_DOCS[kernel].split("\nParameters\n----------\n")[0].strip()


def optimizer_page(specs, fastlr, fam, rows, kernels):
    names = [r.cls for r in rows]
    title = " and ".join(names)
    out = [f".. _optimizer-{fam.name}:", ""] + _title(title, "=")
    out += [".. currentmodule:: fastlr", ""]
    for r in rows:
        torch = f"``torch.optim.{r.torch}``" if r.torch else f"``{r.follows}`` (torch has none)"
        out += [f"* :class:`fastlr.{r.cls}`: {r.doc}; follows {torch}."]
    out += ["", f"Kernel family ``{fam.name}``: {fam.kernel_doc}.", ""]

    out += _title("Update", "-")
    out += [f"The update that :func:`fastlr.kernels.{fam.name}` and the optimizer step apply "
            "to each parameter array, element by element:", ""]
    out += [".. rst-class:: fastlr-formula", ""]
    out += _formula_text(specs, fam.name).splitlines() + [""]
    for r in rows:
        if r.kernel != fam.name:
            out += [f"``{r.kernel}``: " + _formula_text(specs, r.kernel), ""]

    for r in rows:
        cls = getattr(fastlr, r.cls)
        sig = str(inspect.signature(cls))
        out += _title(f"{r.cls} arguments", "-")
        out += [".. code-block:: python", ""] + _wrapped_call(f"fastlr.{r.cls}", sig) + [""]
        if r.fixed:
            out += ["Fixed by the class: " + ", ".join(f"``{k}={v!r}``"
                                                      for k, v in r.fixed.items()) + ".", ""]
        out += _table(["argument", "default", "accepted values", "meaning"],
                      _argument_rows(specs, r, fam, cls), [21, 11, 28, 40])
        sched = [(h.pair + "[0]") if h.pair else h.name for h in fam.hypers
                 if h.schedulable and h.name not in r.fixed]
        out += [f"Take a schedule: {', '.join(f'``{s}``' for s in sched)} (evaluated in C "
                "at each step; a Python callable works too, evaluated in Python). Arguments "
                "after ``lr`` are keyword-only. Invalid values raise a ``ValueError`` or "
                "``TypeError`` naming the argument, before anything is changed.", ""]

    out += _title("State", "-")
    state_rows = []
    for st in fam.state:
        cond = f"when ``{st.when}``" if st.when else "always"
        start = f"``{st.fill}``" if st.fill else "zeros"
        extra = "; created at its first use, as torch does" if st.lazy else ""
        state_rows.append([f"``{st.name}``", cond + extra, start])
    for name, init in fam.scalar_state:
        state_rows.append([f"``{name}``", "always (a float per param)", f"``{init!r}``"])
    out += ["Per parameter array, in ``opt.state[i]`` and the checkpoints, with the "
            "parameter's shape, dtype and memory layout:", ""]
    out += _table(["buffer", "exists", "starts at"], state_rows, [25, 50, 25])

    out += _title("Kernel and C API", "-")
    for k in kernels:
        out += [".. code-block:: python", ""]
        out += _wrapped_call(f"fastlr.kernels.{k.name}", f"({k.signature()})") + [""]
    out += [f"The NumPy twin with the same signature is ``fastlr.reference.{fam.name}``. "
            f"From Cython (:doc:`/embedding`): ``cimport`` ``{fam.struct}`` and "
            f"``{fam.name}_f32`` / ``{fam.name}_f64`` (and their ``_parallel`` variants) "
            "from ``fastlr._kernels``. The struct's fields, in ABI order:", ""]
    out += _table(["C type", "field", "note"],
                  [[f"``{t}``", f"``{n}``", f"``{c}``" if c else "\\ "]
                   for t, n, c in fam.c_fields],
                  [15, 30, 55])
    return "\n".join(out) + "\n"


def generate_optimizers(outdir):
    import fastlr
    from fastlr import _specs as specs

    kernels = specs.template_namespace()["KERNELS"]
    toc = [".. toctree::", "   :maxdepth: 1", ""]
    summary = []
    for fam in specs.FAMILIES.values():
        rows = [r for r in specs.OPTIMIZERS.values() if r.family == fam.name]
        if not rows:
            continue
        fam_kernels = [k for k in kernels if k.fam.name == fam.name]
        _write(os.path.join(outdir, "optimizers", f"{fam.name}.rst"),
               optimizer_page(specs, fastlr, fam, rows, fam_kernels))
        toc.append(f"   generated/optimizers/{fam.name}")
        for r in rows:
            lr = inspect.signature(getattr(fastlr, r.cls)).parameters["lr"].default
            summary.append([f":class:`fastlr.{r.cls}`", f":ref:`optimizer-{fam.name}`",
                            f"``{lr!r}``", r.doc, f"``{r.follows}``"])
    text = _table(["class", "page", "default lr", "what", "follows"], summary,
                  [12, 18, 10, 40, 20])
    _write(os.path.join(outdir, "optimizers_toc.inc"), "\n".join(text + toc) + "\n")


def generate_schedules(outdir):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from fastlr import schedules

    names = [n for n in schedules.__all__ if n not in NOT_DRAWN]
    missing = [n for n in names if n not in SCHEDULE_EXAMPLES]
    if missing:
        raise ExtensionError(f"fastlr_docs: schedule(s) {missing} have no example in "
                             "SCHEDULE_EXAMPLES (docs/_ext/fastlr_docs.py)")
    ns = {n: getattr(schedules, n) for n in schedules.__all__}
    out = []
    for name in names:
        call, steps = SCHEDULE_EXAMPLES[name]
        s = eval(call, {"__builtins__": {}}, ns)
        ts = np.arange(steps + 1)
        ys = s.values(ts)
        fig, ax = plt.subplots(figsize=(6.4, 2.4), dpi=100)
        ax.plot(ts, ys, color="#1f6fb4", linewidth=1.8, drawstyle="steps-post")
        ax.set_xlabel("step t (completed steps)")
        ax.set_ylabel("s(t)")
        ax.set_xlim(0, steps)
        ax.set_ylim(bottom=min(0.0, float(ys.min())))
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        png = os.path.join(outdir, "schedules", f"{name}.png")
        os.makedirs(os.path.dirname(png), exist_ok=True)
        fig.savefig(png, metadata={"Software": None})
        plt.close(fig)
        doc = inspect.getdoc(getattr(schedules, name)) or ""
        first = doc.split("\n\n")[0].replace("\n", " ")
        out += [f".. _schedule-{name}:", ""] + _title(name, "-")
        out += [f":func:`fastlr.schedules.{name}`: {first}", ""]
        out += [".. code-block:: python", "", f"   s = schedules.{call}", ""]
        out += [f".. figure:: /generated/schedules/{name}.png",
                f"   :alt: the curve of schedules.{call}", "   :width: 640px", "",
                f"   ``s(t)`` for ``t`` in 0..{steps}; ``repr(s)`` is ``{s!r}``.", ""]
    _write(os.path.join(outdir, "schedules_gallery.inc"), "\n".join(out) + "\n")


def copy_pxd(outdir):
    import fastlr

    src = os.path.join(os.path.dirname(fastlr.__file__), "_kernels.pxd")
    if not os.path.exists(src):
        raise ExtensionError(f"fastlr_docs: {src} is missing (it is rendered at build time: "
                             "python setup.py build_ext --inplace, or pip install .)")
    os.makedirs(outdir, exist_ok=True)
    dst = os.path.join(outdir, "_kernels.pxd")
    with open(src, encoding="utf-8") as f:
        text = f.read()
    _write(dst, text)
    shutil.copymode(src, dst)


def generate(app):
    outdir = os.path.join(app.srcdir, "generated")
    generate_optimizers(outdir)
    generate_schedules(outdir)
    copy_pxd(outdir)


def have_torch():
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


class TorchOnly(Directive):
    """Its content when torch imports; otherwise a note that this build lacked torch."""

    has_content = True

    def run(self):
        if have_torch():
            node = nodes.container()
            self.state.nested_parse(self.content, self.content_offset, node)
            return node.children
        para = nodes.note()
        para += nodes.paragraph(text="This build of the documentation ran without PyTorch, "
                                     "so fastlr.compat.torch (which needs it) is not "
                                     "listed here.")
        return [para]


def setup(app):
    app.connect("builder-inited", generate)
    app.add_directive("torch-only", TorchOnly)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}

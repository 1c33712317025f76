"""The optimizer families beyond SGD/RMSprop/Adam (Adagrad, Adadelta, Adamax, NAdam,
RAdam, Lion, Rprop) and the fused clipping / non-finite scan, side by side.

``TimeFamilyStep``: one in-place step of each family's kernel (``fastlr.kernels``, 1 thread)
against its pure-NumPy twin (``fastlr.reference``) and torch's single-tensor for-loop (its
default CPU path; Lion has no torch version), at an in-cache (64K) and a memory-bound (16M)
float32 size.

``TimeClipping``: one Adam optimizer step over 10 arrays with no clipping, with the fused
``max_grad_norm`` (one extra read pass over the grads, the factor applied inside the
update), with ``skip_nonfinite`` (an integer scan of the grads), and the unfused way: the
functional ``fastlr.clip_grad_norm`` (which writes the grads) followed by a plain step.
The fused form should cost about the grads' read traffic (4 of Adam's 28 bytes per float32
element) over the plain step.
"""

import numpy as np

from fastlr import _specs, kernels, reference

from .common import optional, steady_state_malloc

# the table's rows beyond SGD / RMSprop / Adam / AdamW (those have their own benchmarks)
_ROWS = {o.kernel: o for o in _specs.OPTIMIZERS.values() if o.family not in
         ("sgd", "rmsprop", "adam")}
_FAMILY = {k: _specs.family(o.family) for k, o in _ROWS.items()}
_STATE = {k: kernels.state_names(k) for k in _ROWS}
_STEPS = tuple(k for k in _ROWS if _FAMILY[k].uses_step)        # kernels that take step=
_TORCH = {k: o.torch for k, o in _ROWS.items() if o.torch}


def _data(n, dtype, names, seed=7):
    # one staggered block (as fastlr's optimizers allocate state): same-size arrays
    # allocated back to back conflict in the memory system on some CPUs (1.5-2.5x slower)
    rng = np.random.default_rng([seed, n])
    arrays = kernels.zeros_like_many(2 + len(names), (n,), dtype)
    out = dict(zip(("param", "grad") + tuple(names), arrays))
    out["param"][...] = rng.standard_normal(n)
    out["grad"][...] = rng.normal(0.0, 1e-2, n)
    for name in names:
        out[name][...] = np.abs(rng.normal(0.0, 1e-2, n)) + 1e-6
    return out


class TimeFamilyStep:
    """Seconds per in-place step, float32, 1 thread."""

    params = [["fastlr", "reference", "torch-forloop"],
              list(_ROWS), [65536, 16777216]]
    param_names = ["impl", "optimizer", "n"]
    timeout = 120

    def setup(self, impl, optimizer, n):
        steady_state_malloc()
        d = _data(n, np.float32, _STATE[optimizer])
        if impl == "torch-forloop":
            if optimizer not in _TORCH:
                raise NotImplementedError(f"torch has no {_ROWS[optimizer].cls}")
            torch = optional("torch")
            p = torch.nn.Parameter(torch.from_numpy(d["param"]))
            p.grad = torch.from_numpy(d["grad"])
            opt = getattr(torch.optim, _TORCH[optimizer])([p], foreach=False)
            opt.step()
            self.step = opt.step
            return
        fn = getattr(kernels if impl == "fastlr" else reference, optimizer)
        fam = _FAMILY[optimizer]
        kw = {"lr": 1e-3} if not fam.kernel_keywords or "lr" in fam.kernel_keywords else {}
        if optimizer in _STEPS:
            kw["step"] = 10
        kw.update({name: 0.5 for name, _ in _FAMILY[optimizer].scalar_state})  # mu_product
        if impl == "fastlr":
            kw["n_threads"] = 1
        args = [d["param"], d["grad"]] + [d[name] for name in _STATE[optimizer]]

        def step():
            fn(*args, **kw)

        self.step = step

    def time_step(self, impl, optimizer, n):
        self.step()


class TimeClipping:
    """Seconds per Adam step over 10 float32 arrays (n elements in all), 1 thread."""

    params = [["plain", "fused-clip", "skip-scan", "clip_grad_norm+step"], [65536, 16777216]]
    param_names = ["mode", "n"]
    timeout = 120

    def setup(self, mode, n):
        import fastlr

        steady_state_malloc()
        rng = np.random.default_rng(3)
        sizes = [n // 10] * 9 + [n - 9 * (n // 10)]
        params = [rng.standard_normal(k).astype(np.float32) for k in sizes]
        grads = [rng.normal(0.0, 1e-2, k).astype(np.float32) for k in sizes]
        opt = fastlr.Adam(params, lr=1e-3, n_threads=1,
                          max_grad_norm=1e-3 if mode == "fused-clip" else None,
                          skip_nonfinite=mode == "skip-scan")
        opt.step(grads)
        if mode == "clip_grad_norm+step":
            def step():
                fastlr.clip_grad_norm(grads, 1e-3, n_threads=1)
                opt.step(grads)
            self.step = step
        else:
            self.step = lambda: opt.step(grads)

    def time_adam_step(self, mode, n):
        self.step()

"""fastlr.compat.torch.SGDScheduleFree / AdamWScheduleFree / RAdamScheduleFree: the
``schedulefree`` package's optimizers whose step, train and eval run fastlr's kernels.

Each bridge is compared with the package's class of the same name (both of its paths,
``foreach`` False and True) on the same grads, with the tolerances of docs/design.md
(``max|bridge - package| <= rtol * max(1, max|package|)``, rtol 1e-10 in float64, 1e-4 in
float32): 100-step trajectories in train mode and after switches to eval mode, with weight
decay, warmup, two groups, a torch LR scheduler, params in C and F order and a param whose
grad is sometimes None; state dicts moved both ways mid-run; a swapped ``p.data``; and every
refused input, which must raise before anything is written.
"""

import copy
import inspect
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch not installed")
schedulefree = pytest.importorskip("schedulefree", reason="schedulefree not installed")

import fastlr.compat.torch as ft  # noqa: E402
from fastlr.compat import _torch_schedulefree  # noqa: E402

N_STEPS = 100
RTOL = {torch.float64: 1e-10, torch.float32: 1e-4}
NAMES = ["SGDScheduleFree", "AdamWScheduleFree", "RAdamScheduleFree"]
#: options per class: each with weight decay; warmup where the class has it
CASES = {
    "SGDScheduleFree": [dict(lr=0.05, weight_decay=0.01, warmup_steps=10),
                        dict(lr=0.1, momentum=0.8, r=1.0, weight_lr_power=1.0)],
    "AdamWScheduleFree": [dict(lr=0.01, weight_decay=0.05, warmup_steps=10),
                          dict(lr=0.02, betas=(0.8, 0.99), eps=1e-6, r=0.5)],
    "RAdamScheduleFree": [dict(lr=0.01, weight_decay=0.05),
                          dict(lr=0.02, betas=(0.85, 0.99), silent_sgd_phase=False,
                               weight_lr_power=0.0)],
}
PARAMS = [(n, kw) for n in NAMES for kw in CASES[n]]


def _params(dtype, seed=0):
    """Params of several shapes and layouts: C, F-ordered (a transposed tensor), 1-D, 0-d."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(5, 3, generator=gen, dtype=dtype)
    b = torch.randn(6, 4, generator=gen, dtype=dtype).t()        # F-ordered (4, 6)
    c = torch.randn(7, generator=gen, dtype=dtype)
    d = torch.randn((), generator=gen, dtype=dtype)
    return [a, b, c, d]


def _pair(name, kw, dtype, foreach=False, groups=True):
    """(package optimizer, bridge) on equal copies of the same params."""
    out = []
    for cls in (getattr(schedulefree, name), getattr(ft, name)):
        ps = [torch.nn.Parameter(t.clone().t().contiguous().t() if t.dim() == 2 and
                                 not t.is_contiguous() else t.clone())
              for t in _params(dtype)]
        if groups:
            spec = [{"params": ps[:2]},
                    {"params": ps[2:], "weight_decay": 0.0,
                     "lr": kw.get("lr", 0.01) * 0.5}]
        else:
            spec = ps
        extra = {"foreach": foreach} if cls.__module__.startswith("schedulefree") else {}
        out.append((cls(spec, **kw, **extra), ps))
    assert not out[1][1][1].is_contiguous()           # the F-ordered param stays F-ordered
    return out


def _set_grads(ps, step, skip_none=True):
    """The same grads on both sides: a pull towards 0 plus a step-seeded perturbation; the
    last param has no grad every third step."""
    gen = torch.Generator().manual_seed(1000 + step)
    for i, p in enumerate(ps):
        noise = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype)
        if skip_none and i == len(ps) - 1 and step % 3 == 2:
            p.grad = None
            continue
        g = torch.empty_like(p, memory_format=torch.preserve_format)
        g.copy_(0.5 * p.detach() + noise)
        p.grad = g


def _close(ref_ps, ps, dtype, what):
    for i, (a, b) in enumerate(zip(ref_ps, ps)):
        scale = max(1.0, a.detach().abs().max().item())
        err = (a.detach() - b.detach()).abs().max().item()
        assert err <= RTOL[dtype] * scale, f"{what}: param {i} differs by {err:.3g}"


def _state_close(ref, opt, ref_ps, ps, dtype):
    for a, b in zip(ref_ps, ps):
        sa, sb = ref.state.get(a, {}), opt.state.get(b, {})
        assert sorted(sa) == sorted(sb)
        for key in sa:
            err = (sa[key] - sb[key]).abs().max().item()
            assert err <= RTOL[dtype] * max(1.0, sa[key].abs().max().item()), key
    for ga, gb in zip(ref.param_groups, opt.param_groups):
        for key in ("k", "train_mode", "weight_sum", "lr_max", "scheduled_lr"):
            assert ga[key] == pytest.approx(gb[key], rel=1e-12, abs=0), key


def _steps(pairs, start, stop, dtype, schedulers=()):
    for step in range(start, stop):
        for opt, ps in pairs:
            _set_grads(ps, step)
            opt.step()
        for s in schedulers:
            s.step()
        _close(pairs[0][1], pairs[1][1], dtype, f"step {step + 1}")


# ---------------------------------------------------------------------------------------
# agreement with the package
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("foreach", [False, True], ids=["package-foreach-False",
                                                        "package-foreach-True"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name,kw", PARAMS)
def test_trajectory_matches_the_package_in_train_and_eval_mode(name, kw, dtype, foreach):
    pairs = _pair(name, kw, dtype, foreach)
    for opt, _ in pairs:
        opt.train()
    _steps(pairs, 0, 40, dtype)
    for opt, _ in pairs:            # evaluate at x, then resume
        opt.eval()
    _close(pairs[0][1], pairs[1][1], dtype, "eval after 40 steps")
    for opt, _ in pairs:
        opt.train()
    _close(pairs[0][1], pairs[1][1], dtype, "train after 40 steps")
    _steps(pairs, 40, N_STEPS, dtype)
    _state_close(pairs[0][0], pairs[1][0], pairs[0][1], pairs[1][1], dtype)
    for opt, _ in pairs:
        opt.eval()
    _close(pairs[0][1], pairs[1][1], dtype, f"eval after {N_STEPS} steps")
    assert pairs[1][0].param_groups[0]["k"] == N_STEPS
    assert not pairs[1][0].param_groups[1]["train_mode"]


@pytest.mark.parametrize("name,kw", [(n, CASES[n][0]) for n in NAMES])
def test_an_lr_scheduler_drives_the_bridge_as_the_package(name, kw):
    pairs = _pair(name, kw, torch.float64)
    scheds = []
    for opt, _ in pairs:
        opt.train()
        scheds.append(torch.optim.lr_scheduler.LambdaLR(
            opt, lambda t: 1.0 / (1.0 + 0.05 * t)))
    _steps(pairs, 0, N_STEPS, torch.float64, scheds)
    assert pairs[1][0].param_groups[0]["lr"] == pairs[0][0].param_groups[0]["lr"] < kw["lr"]
    for opt, _ in pairs:
        opt.eval()
    _close(pairs[0][1], pairs[1][1], torch.float64, "eval")


@pytest.mark.parametrize("name", NAMES)
def test_step_runs_fastlrs_kernel_not_the_packages(name, monkeypatch):
    calls = []
    real = _torch_schedulefree._kernels

    class Spy:
        def __getattr__(self, attr):
            fn = getattr(real, attr)

            def spy(*a, **k):
                calls.append(attr)
                return fn(*a, **k)
            return spy

    monkeypatch.setattr(_torch_schedulefree, "_kernels", Spy())
    monkeypatch.setattr(getattr(schedulefree, name), "step",
                        lambda *a, **k: pytest.fail("the package's step ran"))
    monkeypatch.setattr(torch.Tensor, "lerp_",
                        lambda *a, **k: pytest.fail("the package's lerp_ ran"), raising=False)
    (_, _), (opt, ps) = _pair(name, CASES[name][0], torch.float64)
    opt.train()
    _set_grads(ps, 0, skip_none=False)
    opt.step()
    opt.eval()
    opt.train()
    kernel = "sgd_step" if name == "SGDScheduleFree" else "adam_step"
    assert calls == [kernel, kernel, "switch", "switch", "switch", "switch"]


# ---------------------------------------------------------------------------------------
# checkpoints and swapped tensors
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("direction", ["package-to-bridge", "bridge-to-package"])
@pytest.mark.parametrize("name,kw", [(n, CASES[n][0]) for n in NAMES])
def test_state_dicts_move_both_ways_mid_run(name, kw, direction):
    pairs = _pair(name, kw, torch.float64)
    for opt, _ in pairs:
        opt.train()
    _steps(pairs, 0, 30, torch.float64)
    src = 0 if direction == "package-to-bridge" else 1
    (src_opt, src_ps) = pairs[src]
    # a fresh optimizer of the other kind, on copies of the params at this moment
    cls = getattr(ft if src == 0 else schedulefree, name)
    ps = [torch.nn.Parameter(p.detach().clone(memory_format=torch.preserve_format))
          for p in src_ps]
    fresh = cls([{"params": ps[:2]}, {"params": ps[2:]}], **kw)
    fresh.load_state_dict(copy.deepcopy(src_opt.state_dict()))
    assert fresh.param_groups[0]["k"] == 30 and fresh.param_groups[0]["train_mode"]
    new_pairs = [(src_opt, src_ps), (fresh, ps)] if src == 0 else [(fresh, ps), (src_opt, src_ps)]
    _steps(new_pairs, 30, 60, torch.float64)
    for opt, _ in new_pairs:
        opt.eval()
    _close(new_pairs[0][1], new_pairs[1][1], torch.float64, "eval after the load")
    # and the bridge's state dict has the package's keys
    sd = pairs[1][0].state_dict()
    assert sorted(sd["state"][0]) == sorted(pairs[0][0].state_dict()["state"][0])


def test_loaded_state_in_another_layout_is_copied_into_the_params_layout():
    name, kw = "AdamWScheduleFree", CASES["AdamWScheduleFree"][0]
    pairs = _pair(name, kw, torch.float64)
    for opt, _ in pairs:
        opt.train()
    _steps(pairs, 0, 10, torch.float64)
    sd = copy.deepcopy(pairs[0][0].state_dict())
    for key in ("z", "exp_avg_sq"):             # the F-ordered param's state in C order
        sd["state"][1][key] = sd["state"][1][key].contiguous()
    opt, ps = pairs[1]
    opt.load_state_dict(sd)
    assert opt.state[ps[1]]["z"].stride() == ps[1].stride()
    _steps(pairs, 10, 20, torch.float64)


def test_a_swapped_p_data_is_updated():
    pairs = _pair("AdamWScheduleFree", CASES["AdamWScheduleFree"][0], torch.float64)
    for opt, _ in pairs:
        opt.train()
    _steps(pairs, 0, 10, torch.float64)
    opt, ps = pairs[1]
    old = ps[0].data
    before = old.clone()
    for _, qs in pairs:
        qs[0].data = qs[0].data.clone()         # new storage, same values
    _steps(pairs, 10, 20, torch.float64)
    assert torch.equal(old, before)             # the old storage was left alone
    assert not torch.equal(ps[0].data, before)  # the new one moved (and matched the package)
    for _, qs in pairs:
        qs[0].data = qs[0].data * 1.5           # a changed value is read afresh too
    _steps(pairs, 20, 30, torch.float64)


def test_params_without_grad_are_skipped_and_the_version_counter_moves():
    (_, _), (opt, ps) = _pair("SGDScheduleFree", CASES["SGDScheduleFree"][0], torch.float64)
    opt.train()
    _set_grads(ps, 0, skip_none=False)
    ps[3].grad = None
    before = [p._version for p in ps]
    frozen = ps[3].detach().clone()
    opt.step()
    assert ps[3] not in opt.state and torch.equal(ps[3].detach(), frozen)
    assert [p._version > v for p, v in zip(ps, before)] == [True, True, True, False]


def test_tensor_lr_is_accepted():
    pairs = _pair("SGDScheduleFree", dict(lr=0.05), torch.float64, groups=False)
    for opt, ps in pairs:
        opt.param_groups[0]["lr"] = torch.tensor(0.05, dtype=torch.float64)
        opt.train()
    _steps(pairs, 0, 10, torch.float64)


# ---------------------------------------------------------------------------------------
# the package's interface
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_signature_defaults_and_class_are_the_packages(name):
    ref, cls = getattr(schedulefree, name), getattr(ft, name)
    assert issubclass(cls, ref) and name in ft.__all__
    a = inspect.signature(ref.__init__).parameters
    b = inspect.signature(cls.__init__).parameters
    assert list(a) == list(b)
    assert [p.default for p in a.values()] == [p.default for p in b.values()]
    p = torch.nn.Parameter(torch.zeros(3))
    assert ref([p]).defaults == cls([torch.nn.Parameter(torch.zeros(3))]).defaults


def test_the_packages_constructor_checks_run():
    with pytest.raises(ValueError, match="Momentum"):
        ft.SGDScheduleFree([torch.nn.Parameter(torch.zeros(2))], momentum=1.0)
    with pytest.raises(ValueError, match="learning rate"):
        ft.SGDScheduleFree([torch.nn.Parameter(torch.zeros(2))], lr=-1.0)


@pytest.mark.parametrize("name", NAMES)
def test_foreach_of_another_type_is_refused(name):
    with pytest.raises(TypeError, match=rf"fastlr\.compat\.torch\.{name}: foreach must be"):
        getattr(ft, name)([torch.nn.Parameter(torch.zeros(2))], foreach="yes")
    opt = getattr(ft, name)([torch.nn.Parameter(torch.zeros(2))])
    with pytest.raises(TypeError, match="add_param_group: foreach"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))], "foreach": 1})
    assert len(opt.param_groups) == 1


def test_names_are_absent_without_the_package():
    code = ("import sys; sys.modules['schedulefree'] = None\n"
            "import fastlr.compat.torch as t\n"
            "names = ['SGDScheduleFree', 'AdamWScheduleFree', 'RAdamScheduleFree']\n"
            "assert not any(hasattr(t, n) or n in t.__all__ for n in names)\n"
            "assert hasattr(t, 'Adam')\n")
    # cwd="/": the fastlr under test (installed, or PYTHONPATH), never an unbuilt tree in cwd
    subprocess.run([sys.executable, "-c", code], check=True, cwd="/")


# ---------------------------------------------------------------------------------------
# refused input: raised before anything is written
# ---------------------------------------------------------------------------------------
def _snapshot(opt, ps):
    return ([p.detach().clone() for p in ps],
            {i: {k: v.clone() for k, v in opt.state[p].items()} for i, p in enumerate(ps)
             if p in opt.state},
            [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups])


def _unchanged(opt, ps, snap):
    params, state, groups = snap
    assert all(torch.equal(p.detach(), q) for p, q in zip(ps, params))
    assert {i: sorted(opt.state[p]) for i, p in enumerate(ps) if p in opt.state} == \
        {i: sorted(s) for i, s in state.items()}
    for i, s in state.items():
        for k, v in s.items():
            assert torch.equal(opt.state[ps[i]][k], v)
    assert [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups] == groups


def _bad(kind, opt, ps):
    """Spoil the last param of the last group (or its group) in one way."""
    p = ps[-1]
    if kind == "sparse-grad":
        p.data = torch.zeros(4, dtype=torch.float64)
        p.grad = torch.zeros(4, dtype=torch.float64).to_sparse()
        return TypeError, "sparse gradient"
    if kind == "non-cpu":                       # a last param on another device
        q = torch.nn.Parameter(torch.empty(3, dtype=torch.float64, device="meta"))
        q.grad = torch.empty(3, dtype=torch.float64, device="meta")
        opt.param_groups[-1]["params"].append(q)
        return TypeError, "device meta"
    if kind == "float16":
        p.data = p.data.to(torch.float16)
        p.grad = torch.zeros_like(p.data)
        return TypeError, "float16"
    if kind == "grad-dtype":
        p.grad_dtype = None                     # (torch refuses the assignment otherwise)
        p.grad = p.grad.to(torch.float32)
        return TypeError, "its gradient has dtype"
    if kind == "grad-layout":
        ps[1].grad = ps[1].grad.contiguous()    # C-ordered grad of the F-ordered param
        return ValueError, "gradient must have the parameter's layout"
    if kind == "non-contiguous":
        p.data = torch.zeros(8, dtype=torch.float64)[::2]
        p.grad = torch.zeros(4, dtype=torch.float64)
        return ValueError, "not contiguous"
    if kind == "state-shape":
        opt.state[ps[0]]["z"] = torch.zeros(2, dtype=torch.float64)
        return ValueError, r"state\['z'\] has shape"
    if kind == "state-shared":
        opt.state[ps[0]]["z"] = ps[0].data
        return ValueError, "shares memory"
    if kind == "lr":
        opt.param_groups[-1]["lr"] = -1.0
        return ValueError, r"param_groups\[1\]\['lr'\]"
    if kind == "weight_decay":
        opt.param_groups[-1]["weight_decay"] = "x"
        return TypeError, r"param_groups\[1\]\['weight_decay'\]"
    if kind == "k":
        opt.param_groups[-1]["k"] = 1.5
        return TypeError, r"param_groups\[1\]\['k'\]"
    if kind == "beta1":
        key = "momentum" if isinstance(opt, ft.SGDScheduleFree) else "betas"
        opt.param_groups[-1][key] = 1.0 if key == "momentum" else (1.0, 0.999)
        return ValueError, rf"param_groups\[1\]\['{key}'\]"
    raise AssertionError(kind)


KINDS = ["sparse-grad", "non-cpu", "float16", "grad-dtype", "grad-layout", "non-contiguous",
         "state-shape", "state-shared", "lr", "weight_decay", "k", "beta1"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", NAMES)
def test_refused_input_changes_nothing(name, kind):
    (_, _), (opt, ps) = _pair(name, CASES[name][0], torch.float64)
    opt.train()
    _set_grads(ps, 0, skip_none=False)
    opt.step()
    _set_grads(ps, 1, skip_none=False)
    error, match = _bad(kind, opt, ps)
    snap = _snapshot(opt, ps)
    with pytest.raises(error, match=match) as info:
        opt.step()
    assert str(info.value).startswith(f"fastlr.compat.torch.{name}")
    _unchanged(opt, ps, snap)


@pytest.mark.parametrize("name", NAMES)
def test_step_in_eval_mode_is_refused(name):
    (_, _), (opt, ps) = _pair(name, CASES[name][0], torch.float64)
    _set_grads(ps, 0, skip_none=False)
    snap = _snapshot(opt, ps)
    with pytest.raises(RuntimeError, match=rf"{name}\.step: the optimizer is in eval mode"):
        opt.step()
    _unchanged(opt, ps, snap)


@pytest.mark.parametrize("switch", ["train", "eval"])
def test_a_bad_param_refuses_the_mode_switch_for_every_group(switch):
    (_, _), (opt, ps) = _pair("AdamWScheduleFree", CASES["AdamWScheduleFree"][0],
                              torch.float64)
    opt.train()
    _set_grads(ps, 0, skip_none=False)
    opt.step()
    if switch == "train":
        opt.eval()
    opt.state[ps[-1]]["z"] = torch.zeros(3, dtype=torch.float64)
    snap = _snapshot(opt, ps)
    with pytest.raises(ValueError, match=rf"AdamWScheduleFree\.{switch}: parameter 3 .* "
                                         r"state\['z'\] has shape"):
        getattr(opt, switch)()
    _unchanged(opt, ps, snap)


def test_closure_and_step_hooks_are_torchs():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1).double()
    opt = ft.AdamWScheduleFree(model.parameters(), lr=0.01)
    seen = []
    opt.register_step_pre_hook(lambda o, a, k: seen.append("pre"))
    opt.register_step_post_hook(lambda o, a, k: seen.append("post"))
    x = torch.randn(8, 4, dtype=torch.float64)

    def closure():
        opt.zero_grad()
        loss = model(x).square().mean()
        loss.backward()             # needs grad mode: step() runs the closure with it
        return loss

    opt.train()
    losses = [opt.step(closure).item() for _ in range(20)]
    assert seen == ["pre", "post"] * 20
    assert losses[-1] < losses[0]

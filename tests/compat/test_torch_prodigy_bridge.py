"""fastlr.compat.torch.Prodigy: ``prodigyopt.Prodigy`` (1.1.2) whose step runs fastlr's
compiled two-pass Prodigy step.

Compared with the package on the same grads: 100-step trajectories (float64 within 1e-8
relative, float32 within 1e-4: the package sums in the params' dtype, fastlr in double, and
``d``'s jumps amplify the difference in float32, see docs/lrfree.rst), every option, two
groups (one with lr 0 in a case of its own), a torch LR scheduler, params in C and F order,
an all-zero param (the package's 0-d ``p0``) and a param whose grad is sometimes None; the
estimate (``d``, ``d_max``, ``d_numerator``, ...) kept in ``param_groups`` as the package
keeps it; state dicts moved both ways mid-run; a swapped ``p.data``; and refused input,
raised before anything is written.
"""

import copy
import inspect
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch", reason="torch not installed")
prodigyopt = pytest.importorskip("prodigyopt", reason="prodigyopt not installed")

import fastlr.compat.torch as ft  # noqa: E402
from fastlr.compat import _torch_prodigy  # noqa: E402

N_STEPS = 100
RTOL = {torch.float64: 1e-8, torch.float32: 1e-4}
ESTIMATE = ("d", "d_max", "d_numerator", "d_denom", "d_hat", "k")
CASES = {
    "decoupled-decay": dict(weight_decay=0.01),
    "bias-correction-safeguard": dict(use_bias_correction=True, safeguard_warmup=True,
                                      beta3=0.9),
    "no-first-moment-coupled-slice": dict(betas=(0.0, 0.99), decouple=False,
                                          weight_decay=0.01, slice_p=3),
    "growth-d0-coef": dict(d0=1e-3, growth_rate=1.05, d_coef=0.5, eps=1e-6),
}


def _params(dtype):
    """C-ordered, F-ordered (a transposed tensor), 1-D and all-zero params."""
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(5, 3, generator=gen, dtype=dtype),
            torch.randn(6, 4, generator=gen, dtype=dtype).t(),
            torch.randn(7, generator=gen, dtype=dtype),
            torch.zeros(3, dtype=dtype)]


def _copy(t):
    return torch.nn.Parameter(t.clone(memory_format=torch.preserve_format))


def _pair(kw, dtype, second_group=None):
    out = []
    for cls in (prodigyopt.Prodigy, ft.Prodigy):
        ps = [_copy(t) for t in _params(dtype)]
        spec = [{"params": ps[:2]}, {"params": ps[2:], **(second_group or {"eps": 1e-7})}]
        out.append((cls(spec, **kw), ps))
    assert not out[1][1][1].is_contiguous()
    return out


def _set_grads(ps, step):
    """The same grads on both sides: a pull towards 1 plus a step-seeded perturbation; the
    third param has no grad every fourth step."""
    gen = torch.Generator().manual_seed(2000 + step)
    for i, p in enumerate(ps):
        noise = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype)
        if i == 2 and step % 4 == 3:
            p.grad = None
            continue
        g = torch.empty_like(p, memory_format=torch.preserve_format)
        g.copy_(p.detach() - 1 + 0.1 * noise)
        p.grad = g


def _close(pairs, dtype, what):
    (ref, ref_ps), (opt, ps) = pairs
    for i, (a, b) in enumerate(zip(ref_ps, ps)):
        scale = max(1.0, a.detach().abs().max().item())
        err = (a.detach() - b.detach()).abs().max().item()
        assert err <= RTOL[dtype] * scale, f"{what}: param {i} differs by {err:.3g}"
    for g, (ga, gb) in enumerate(zip(ref.param_groups, opt.param_groups)):
        for key in ESTIMATE:
            if key in ga:
                assert gb[key] == pytest.approx(ga[key], rel=RTOL[dtype]), (what, g, key)
            else:
                assert key not in gb


def _steps(pairs, start, stop, dtype, schedulers=()):
    for step in range(start, stop):
        for opt, ps in pairs:
            _set_grads(ps, step)
            opt.step()
        for s in schedulers:
            s.step()
        _close(pairs, dtype, f"step {step + 1}")


@pytest.fixture(autouse=True)
def _quiet(capsys):
    # prodigyopt prints "Using decoupled weight decay" from its constructor
    yield
    capsys.readouterr()


# ---------------------------------------------------------------------------------------
# agreement with the package
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", list(CASES))
def test_trajectory_matches_prodigyopt(case, dtype):
    pairs = _pair(CASES[case], dtype)
    _steps(pairs, 0, N_STEPS, dtype)
    (ref, ref_ps), (opt, ps) = pairs
    d0 = CASES[case].get("d0", 1e-6)
    assert opt.param_groups[0]["d"] > 10 * d0          # the estimate moved: a real test
    assert opt.param_groups[1]["k"] == N_STEPS
    for a, b in zip(ref_ps, ps):                      # state: the package's layout and values
        sa, sb = ref.state[a], opt.state[b]
        assert sorted(sa) == sorted(sb) and sa["step"] == sb["step"]
        for key in sa:
            if key != "step":
                assert sa[key].shape == sb[key].shape and sa[key].stride() == sb[key].stride()
                scale = max(1.0, sa[key].abs().max().item())
                assert (sa[key] - sb[key]).abs().max().item() <= RTOL[dtype] * scale, key
    assert opt.state[ps[3]]["p0"].dim() == 0           # the all-zero param's p0, as prodigyopt


def test_a_group_with_lr_0_and_an_lr_scheduler():
    pairs = _pair({}, torch.float64, second_group={"lr": 0.0})
    scheds = [torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 / (1.0 + 0.02 * t))
              for opt, _ in pairs]
    _steps(pairs, 0, N_STEPS, torch.float64, scheds)
    assert pairs[1][0].param_groups[0]["lr"] < 1.0 and pairs[1][0].param_groups[1]["lr"] == 0


def test_zero_grads_at_the_start_make_state_but_no_step_as_prodigyopt():
    pairs = _pair({}, torch.float64)
    for opt, ps in pairs:
        for p in ps:
            p.grad = torch.zeros_like(p, memory_format=torch.preserve_format)
        opt.step()
    _close(pairs, torch.float64, "zero grads")
    opt, ps = pairs[1]
    assert opt.param_groups[0]["k"] == 0 and "d_denom" not in opt.param_groups[0]
    assert all(opt.state[p]["step"] == 0 for p in ps)
    _steps(pairs, 1, 20, torch.float64)


def test_step_runs_fastlrs_kernel_once_and_not_the_packages(monkeypatch):
    calls = []
    real = _torch_prodigy.prodigy_step
    monkeypatch.setattr(_torch_prodigy, "prodigy_step",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(prodigyopt.Prodigy, "step",
                        lambda *a, **k: pytest.fail("the package's step ran"))
    (_, _), (opt, ps) = _pair({}, torch.float64)
    _set_grads(ps, 0)
    opt.step()
    assert calls == [1]


def test_n_threads_gives_the_same_bits():
    results = []
    for n in (1, 2):
        ps = [_copy(t) for t in _params(torch.float64)]
        opt = ft.Prodigy(ps, n_threads=n)
        for step in range(5):
            _set_grads(ps, step)
            opt.step()
        results.append([p.detach().clone() for p in ps])
    assert all(torch.equal(a, b) for a, b in zip(*results))
    assert copy.deepcopy(ft.Prodigy([_copy(torch.zeros(2))], n_threads=2)).n_threads == 2
    with pytest.raises(ValueError, match=r"fastlr\.compat\.torch\.Prodigy.*n_threads"):
        ft.Prodigy([_copy(torch.zeros(2))], n_threads=-3)


# ---------------------------------------------------------------------------------------
# checkpoints and swapped tensors
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("direction", ["package-to-bridge", "bridge-to-package"])
def test_state_dicts_move_both_ways_mid_run(direction):
    kw = CASES["decoupled-decay"]
    pairs = _pair(kw, torch.float64)
    _steps(pairs, 0, 30, torch.float64)
    src = 0 if direction == "package-to-bridge" else 1
    src_opt, src_ps = pairs[src]
    ps = [_copy(p.detach()) for p in src_ps]
    cls = ft.Prodigy if src == 0 else prodigyopt.Prodigy
    fresh = cls([{"params": ps[:2]}, {"params": ps[2:], "eps": 1e-7}], **kw)
    fresh.load_state_dict(copy.deepcopy(src_opt.state_dict()))
    assert fresh.param_groups[0]["d"] == src_opt.param_groups[0]["d"]
    new = [(src_opt, src_ps), (fresh, ps)] if src == 0 else [(fresh, ps), (src_opt, src_ps)]
    _steps(new, 30, 60, torch.float64)


def test_a_swapped_p_data_is_updated():
    pairs = _pair({}, torch.float64)
    _steps(pairs, 0, 10, torch.float64)
    opt, ps = pairs[1]
    old = ps[0].data
    before = old.clone()
    for _, qs in pairs:
        qs[0].data = qs[0].data.clone()
    _steps(pairs, 10, 20, torch.float64)
    assert torch.equal(old, before) and not torch.equal(ps[0].data, before)


# ---------------------------------------------------------------------------------------
# the package's interface
# ---------------------------------------------------------------------------------------
def test_signature_defaults_and_class_are_the_packages():
    assert issubclass(ft.Prodigy, prodigyopt.Prodigy) and "Prodigy" in ft.__all__
    a = inspect.signature(prodigyopt.Prodigy.__init__).parameters
    b = inspect.signature(ft.Prodigy.__init__).parameters
    assert list(b) == list(a) + ["n_threads"]
    assert [p.default for p in a.values()] == [b[k].default for k in a]
    assert prodigyopt.Prodigy([_copy(torch.zeros(2))]).defaults == \
        ft.Prodigy([_copy(torch.zeros(2))]).defaults
    with pytest.raises(ValueError, match="Invalid d0"):
        ft.Prodigy([_copy(torch.zeros(2))], d0=0.0)


def test_the_name_is_absent_without_the_package():
    code = ("import sys; sys.modules['prodigyopt'] = None\n"
            "import fastlr.compat.torch as t\n"
            "assert not hasattr(t, 'Prodigy') and 'Prodigy' not in t.__all__\n"
            "assert hasattr(t, 'Adam')\n")
    # cwd="/": the fastlr under test (installed, or PYTHONPATH), never an unbuilt tree in cwd
    subprocess.run([sys.executable, "-c", code], check=True, cwd="/")


# ---------------------------------------------------------------------------------------
# refused input: raised before anything is written
# ---------------------------------------------------------------------------------------
def _snapshot(opt, ps):
    state = {i: {k: (v.clone() if isinstance(v, torch.Tensor) else v)
                 for k, v in opt.state[p].items()} for i, p in enumerate(ps) if p in opt.state}
    return ([p.detach().clone() for p in ps], state,
            [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups])


def _unchanged(opt, ps, snap):
    params, state, groups = snap
    assert all(torch.equal(p.detach(), q) for p, q in zip(ps, params))
    assert sorted(i for i, p in enumerate(ps) if p in opt.state) == sorted(state)
    for i, s in state.items():
        assert sorted(opt.state[ps[i]]) == sorted(s)
        for k, v in s.items():
            w = opt.state[ps[i]][k]
            assert torch.equal(w, v) if isinstance(v, torch.Tensor) else w == v
    assert [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups] == groups


def _meta_param(opt, ps):
    q = torch.nn.Parameter(torch.empty(3, dtype=torch.float64, device="meta"))
    q.grad = torch.empty(3, dtype=torch.float64, device="meta")
    opt.param_groups[-1]["params"].append(q)


def _retype(p, dtype):
    p.data = p.data.to(dtype)
    p.grad = torch.zeros_like(p.data)


def _fresh_then_sparse(opt, ps):
    """A fresh param (its state still to be made) first, a sparse grad later."""
    q = _copy(torch.ones(2, dtype=torch.float64))
    q.grad = torch.ones(2, dtype=torch.float64)
    opt.param_groups[0]["params"].insert(0, q)
    ps[2].grad = ps[2].grad.to_sparse()


def _set(container, key, value):
    container[key] = value


#: kind -> (spoil(opt, ps), the error, its message); ps[2] is in the last group
BAD = {
    "sparse-grad": (lambda o, ps: setattr(ps[2], "grad", ps[2].grad.to_sparse()),
                    TypeError, "sparse gradient"),
    "non-cpu": (_meta_param, TypeError, "device meta"),
    "complex": (lambda o, ps: _retype(ps[2], torch.complex128), TypeError, "complex128"),
    "non-contiguous": (lambda o, ps: setattr(ps[2], "data",
                                             torch.zeros(14, dtype=torch.float64)[::2]),
                       ValueError, "not contiguous"),
    "state-s": (lambda o, ps: _set(o.state[ps[0]], "s", torch.zeros(4, dtype=torch.float64)),
                ValueError, r"state\['s'\] must be a contiguous flat tensor of 15"),
    "state-shared": (lambda o, ps: _set(o.state[ps[0]], "exp_avg", o.state[ps[0]]["exp_avg_sq"]),
                     ValueError, "shares memory"),
    "state-dtype": (lambda o, ps: _set(o.state[ps[0]], "p0", o.state[ps[0]]["p0"].float()),
                    TypeError, r"state\['p0'\] must be a plain CPU tensor"),
    "lr-rule": (lambda o, ps: _set(o.param_groups[-1], "lr", 0.5),
                RuntimeError, r"param_groups\[1\]\['lr'\] is 0.5"),
    "eps": (lambda o, ps: _set(o.param_groups[-1], "eps", 0.0),
            ValueError, r"param_groups\[1\]\['eps'\]"),
    "betas": (lambda o, ps: _set(o.param_groups[0], "betas", (0.9, 1.0)),
              ValueError, r"param_groups\[0\]\['betas'\]\[1\]"),
    "fsdp": (lambda o, ps: _set(o.param_groups[0], "fsdp_in_use", True),
             ValueError, "fsdp_in_use"),
    "new-state-then-error": (_fresh_then_sparse, TypeError, "sparse gradient"),
}


@pytest.mark.parametrize("kind", list(BAD))
def test_refused_input_changes_nothing(kind):
    (_, _), (opt, ps) = _pair({}, torch.float64)
    _set_grads(ps, 0)
    opt.step()
    _set_grads(ps, 1)
    spoil, error, match = BAD[kind]
    spoil(opt, ps)
    snap = _snapshot(opt, ps)
    with pytest.raises(error, match=match) as info:
        opt.step()
    assert str(info.value).startswith("fastlr.compat.torch.Prodigy")
    _unchanged(opt, ps, snap)
    extra = [p for g in opt.param_groups for p in g["params"] if all(p is not q for q in ps)]
    assert not any(p in opt.state for p in extra)     # no new state either



def test_closure_and_step_hooks_are_torchs():
    (_, _), (opt, ps) = _pair({}, torch.float64)
    calls = []
    for when in ("pre", "post"):
        getattr(opt, f"register_step_{when}_hook")(lambda o, a, k, w=when: calls.append(w))
    target = [torch.full_like(p, 2.0) for p in ps]

    def closure():                  # grads from a real backward pass
        opt.zero_grad()
        loss = sum(((p - t) ** 2).sum() for p, t in zip(ps, target))
        loss.backward()
        return loss

    losses = [opt.step(closure).item() for _ in range(40)]
    assert calls == ["pre", "post"] * 40
    assert losses[-1] < 0.5 * losses[0]

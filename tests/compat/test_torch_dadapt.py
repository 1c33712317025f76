"""fastlr.compat.torch.DAdaptAdam / DAdaptSGD / DAdaptAdaGrad against the dadaptation 3.2
package: the same params, estimate and state after 60 steps (float64 <= 1e-8 relative,
float32 1e-4), with groups, weight decay, momentum, a group without grads and an LR
scheduler; state dicts interchange both ways; errors leave everything as it was.
"""

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
dadaptation = pytest.importorskip("dadaptation")

from fastlr.compat import torch as fct  # noqa: E402

N_STEPS = 60
SHAPES = [(3, 4), (7,), (2, 3, 5), (9000,)]

CASES = {
    "DAdaptAdam": [{}, {"weight_decay": 0.05, "decouple": True},
                   {"weight_decay": 0.05, "use_bias_correction": True, "betas": (0.8, 0.99)}],
    "DAdaptSGD": [{}, {"momentum": 0.9, "weight_decay": 0.01, "growth_rate": 1.1}],
    "DAdaptAdaGrad": [{}, {"momentum": 0.5, "weight_decay": 0.01, "eps": 1e-4}],
}
PARAMS = [(cls, i) for cls, kws in CASES.items() for i in range(len(kws))]


def _params(dtype):
    return [torch.tensor(np.random.default_rng(i).standard_normal(s), dtype=dtype)
            for i, s in enumerate(SHAPES)]


def _run(opt_cls, kw, dtype, scheduled, replay=None):
    """Run 60 steps; the grads are computed from the params (recorded), or ``replay``'s
    (the same grads on both sides: float32 rounding then does not feed back through them)."""
    ps = _params(dtype)
    groups = [{"params": ps[:2]}, {"params": ps[2:]}]
    if opt_cls.__name__ == "DAdaptAdam":
        groups[1]["layer_scale"] = 0.5
    opt = opt_cls(groups, **kw)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1.0 / (1 + 0.05 * k)) \
        if scheduled else None
    grads = []
    for t in range(N_STEPS):
        grads.append([])
        for i, p in enumerate(ps):
            if i == 1 and t % 3 == 0 and t > 0:
                p.grad = None           # a param without a grad this step: skipped
            elif replay is not None:
                p.grad = replay[t][i].clone()
            else:
                noise = torch.tensor(np.random.default_rng(100 * t + i).standard_normal(
                    p.shape), dtype=dtype)
                p.grad = (p.detach() - 0.5) + 0.3 * noise
            grads[-1].append(None if p.grad is None else p.grad.clone())
        opt.step()
        if sched is not None:
            sched.step()
    return ps, opt, grads


@pytest.mark.parametrize("scheduled", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("cls,case", PARAMS)
def test_bridge_matches_package(cls, case, dtype, scheduled):
    kw = CASES[cls][case]
    want_ps, want, grads = _run(getattr(dadaptation, cls), kw, dtype, scheduled)
    got_ps, got, _ = _run(getattr(fct, cls), kw, dtype, scheduled, replay=grads)
    assert isinstance(got, getattr(dadaptation, cls))
    tol = 1e-8 if dtype == torch.float64 else 1e-4
    for a, b in zip(got_ps, want_ps):
        err = (a - b).abs().max().item() / max(1.0, b.abs().max().item())
        assert err <= tol
    for ga, gb in zip(got.param_groups, want.param_groups):
        assert ga["k"] == gb["k"] == N_STEPS
        assert abs(ga["d"] - gb["d"]) <= tol * gb["d"] and ga["d"] > 1e-6
    for pa, pb in zip(got_ps, want_ps):
        sa, sb = got.state[pa], want.state[pb]
        assert set(sa) == set(sb)
        for key, value in sb.items():
            if isinstance(value, torch.Tensor):
                scale = max(1.0, value.abs().max().item())
                assert (sa[key] - value).abs().max().item() <= tol * scale, key
            else:
                assert sa[key] == value, key


@pytest.mark.parametrize("cls", list(CASES))
def test_state_dicts_interchange(cls):
    ps, pkg, _ = _run(getattr(dadaptation, cls), {}, torch.float64, False)
    qs = [p.detach().clone() for p in ps]
    bridge = getattr(fct, cls)([{"params": qs[:2]}, {"params": qs[2:]}])
    if cls == "DAdaptAdam":
        bridge.param_groups[1]["layer_scale"] = 0.5
    bridge.load_state_dict(copy.deepcopy(pkg.state_dict()))    # (torch's shares tensors)
    for t in range(3):
        for p, q in zip(ps, qs):
            g = torch.tensor(np.random.default_rng(7 + t).standard_normal(p.shape))
            p.grad, q.grad = g.clone(), g.clone()
        pkg.step()
        bridge.step()
    for p, q in zip(ps, qs):
        assert torch.allclose(p, q, rtol=1e-10, atol=1e-12)
    assert abs(bridge.param_groups[0]["d"] - pkg.param_groups[0]["d"]) <= \
        1e-10 * pkg.param_groups[0]["d"]
    # and back: the bridge's state dict into a new package optimizer
    rs = [q.detach().clone() for q in qs]
    back = getattr(dadaptation, cls)([{"params": rs[:2]}, {"params": rs[2:]}])
    back.load_state_dict(copy.deepcopy(bridge.state_dict()))
    for q, r in zip(qs, rs):
        g = torch.tensor(np.random.default_rng(11).standard_normal(q.shape))
        q.grad, r.grad = g.clone(), g.clone()
    bridge.step()
    back.step()
    for q, r in zip(qs, rs):
        assert torch.allclose(q, r, rtol=1e-10, atol=1e-12)


def test_errors_change_nothing():
    p = torch.ones(3, dtype=torch.float64)
    opt = fct.DAdaptAdam([p], fsdp_in_use=True)
    p.grad = torch.ones(3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"^fastlr\.compat\.torch\.DAdaptAdam: fsdp_in_use"):
        opt.step()
    q = torch.ones(3, dtype=torch.float64)
    opt = fct.DAdaptAdam([{"params": [p]}, {"params": [q], "lr": 0.5}])
    q.grad = torch.ones(3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"^fastlr\.compat\.torch\.DAdaptAdam\.step: lr\[1\]"):
        opt.step()
    assert torch.equal(p, torch.ones(3, dtype=torch.float64)) and not opt.state
    opt = fct.DAdaptSGD([p])
    p.grad = torch.zeros(3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"^fastlr\.compat\.torch\.DAdaptSGD\.step: .*zero"):
        opt.step()
    assert not opt.state and opt.param_groups[0]["k"] == 0
    emb = torch.ones(4, 2, dtype=torch.float64, requires_grad=True)
    opt = fct.DAdaptAdaGrad([emb])
    emb.grad = torch.sparse_coo_tensor([[1]], torch.ones(1, 2, dtype=torch.float64), (4, 2),
                                       check_invariants=True)
    with pytest.raises(TypeError, match=r"sparse gradient"):
        opt.step()
    assert not opt.state


def test_exported():
    for name in CASES:
        assert name in fct.__all__ and issubclass(getattr(fct, name), getattr(dadaptation, name))


FIRST_KEYS = {"DAdaptAdam": ("exp_avg", "exp_avg_sq"), "DAdaptSGD": ("s", "x0"),
              "DAdaptAdaGrad": ("alphak", "sk"), "Adam": ("exp_avg", "exp_avg_sq")}


def _state_error(cls, bad):
    """Two groups of two params, stepped; then the first param has no grad and the last
    one's state is bad (``bad``: "shape" or "shared"): the step's error message, after
    checking that nothing was written."""
    ps = [torch.nn.Parameter(torch.randn(3, dtype=torch.float64)) for _ in range(4)]
    opt = getattr(fct, cls)([{"params": ps[:2]}, {"params": ps[2:]}])
    for p in ps:
        p.grad = torch.randn(3, dtype=torch.float64)
    opt.step()
    ps[0].grad = None
    one, two = FIRST_KEYS[cls]
    st = opt.state[ps[3]]
    if bad == "shape":
        st[one] = torch.zeros(5, dtype=torch.float64)
    else:
        st[two] = st[one]
    before = [p.detach().clone() for p in ps]
    with pytest.raises(ValueError) as info:
        opt.step()
    assert all(torch.equal(p.detach(), b) for p, b in zip(ps, before))
    return str(info.value)


def _place(message):
    """The parameter a message names: "parameter N (param_groups[g]['params'][k])"."""
    return message.split(": ", 1)[1].split(": state[", 1)[0]


@pytest.mark.parametrize("bad", ["shape", "shared"])
@pytest.mark.parametrize("cls", list(CASES))
def test_state_errors_number_the_param_as_the_other_bridges(cls, bad):
    """The parameter's number counts every param across groups (with or without a grad),
    as fastlr.compat.torch.Adam's messages do."""
    one, two = FIRST_KEYS[cls]
    message = _state_error(cls, bad)
    assert message.startswith(f"fastlr.compat.torch.{cls}: ")
    assert {"shape": f"state[{one!r}] has shape (5,) but the parameter has shape (3,)",
            "shared": f"state[{two!r}] shares memory with state[{one!r}]"}[bad] in message
    assert _place(message) == "parameter 3 (param_groups[1]['params'][1])"
    assert _place(message) == _place(_state_error("Adam", bad))     # the table bridges'

"""fastlr.compat.torch.Muon and autograd: the step writes the parameters and momentum
buffers through NumPy views, so it bumps their version counters itself, as torch's in-place
ops (and torch.optim.Muon's step) do; a graph that saved a parameter then refuses to
backward after a step. (The bridge's agreement with torch.optim.Muon and its refusals are
tested in tests/optim/test_muon.py.)
"""

import pytest

torch = pytest.importorskip("torch", reason="torch not installed")

import fastlr.compat.torch as ft  # noqa: E402


def _params():
    torch.manual_seed(0)
    return [torch.nn.Parameter(torch.randn(*s, dtype=torch.float64))
            for s in ((4, 3), (3, 5), (2, 6), (5, 2))]


def _set_grads(ps, skip):
    for i, p in enumerate(ps):
        p.grad = None if i == skip else torch.randn_like(p)


@pytest.mark.parametrize("cls", [torch.optim.Muon, ft.Muon], ids=["torch", "bridge"])
def test_params_without_grad_are_skipped_and_the_version_counters_move(cls):
    ps = _params()
    opt = cls([{"params": ps[:2]}, {"params": ps[2:], "lr": 0.01}], lr=0.02)
    _set_grads(ps, skip=3)
    before = [p._version for p in ps]
    frozen = ps[3].detach().clone()
    opt.step()                                  # makes the buffers, then updates
    assert ps[3] not in opt.state and torch.equal(ps[3].detach(), frozen)
    assert [p._version > v for p, v in zip(ps, before)] == [True, True, True, False]
    bufs = [opt.state[p]["momentum_buffer"] for p in ps[:3]]
    assert all(b._version > 0 for b in bufs)
    _set_grads(ps, skip=1)
    before = [p._version for p in ps]
    buf_before = [b._version for b in bufs]
    opt.step()                                  # the buffers exist: updated in place
    assert [opt.state[p]["momentum_buffer"] for p in ps[:3]] == bufs
    assert [p._version > v for p, v in zip(ps, before)] == [True, False, True, True]
    assert [b._version > v for b, v in zip(bufs, buf_before)] == [True, False, True]


def test_a_refused_step_moves_no_version_counter():
    ps = _params()
    opt = ft.Muon(ps, lr=0.02)
    _set_grads(ps, skip=None)
    opt.step()
    bufs = [opt.state[p]["momentum_buffer"] for p in ps]
    before = [t._version for t in ps + bufs]
    opt.state[ps[2]]["momentum_buffer"] = torch.zeros(6, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['params'\]\[2\]: "
                                         r"state\['momentum_buffer'\] must be"):
        opt.step()
    assert [t._version for t in ps + bufs] == before


@pytest.mark.parametrize("cls", [torch.optim.Muon, ft.Muon], ids=["torch", "bridge"])
def test_backward_through_a_graph_that_saved_the_param_is_refused_after_a_step(cls):
    ps = _params()
    opt = cls(ps, lr=0.02)
    loss = sum((p * p).sum() for p in ps)       # saves every p for backward
    _set_grads(ps, skip=None)
    opt.step()
    assert all(p.requires_grad and p.is_leaf for p in ps)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


@pytest.mark.parametrize("cls", [torch.optim.Muon, ft.Muon], ids=["torch", "bridge"])
def test_a_graph_that_saved_only_a_param_without_grad_still_backwards(cls):
    ps = _params()
    opt = cls(ps, lr=0.02)
    loss = (ps[3] * ps[3]).sum()                # saves the param the step skips
    _set_grads(ps, skip=3)
    opt.step()
    loss.backward()
    assert torch.equal(ps[3].grad, 2 * ps[3].detach())

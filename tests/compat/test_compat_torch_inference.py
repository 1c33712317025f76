"""Inference tensors (made in ``torch.inference_mode()``) in the bridges that step in Python
(Adafactor, Muon, SparseAdam, the schedule-free, D-Adaptation and Prodigy bridges), as
``fastlr.compat.torch``'s table classes treat them (tests/compat/test_compat_torch.py):
outside inference mode an inference parameter, or an inference tensor in the state the
step writes, is refused with a TypeError naming it, before anything is written (torch and
the packages refuse those in-place updates too); inside inference mode the step updates
them as it updates normal tensors.
"""

import copy
import importlib

import pytest

torch = pytest.importorskip("torch", reason="torch not installed")

import fastlr.compat.torch as ft  # noqa: E402


def _sparse_grad(p, seed):
    gen = torch.Generator().manual_seed(seed)
    rows = torch.tensor([[0, 3, 1, 3]])         # uncoalesced: row 3 twice
    return torch.sparse_coo_tensor(rows, torch.randn(4, p.shape[1], generator=gen), p.shape,
                                   check_invariants=True)


def _dense_grad(p, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(p.shape, generator=gen)


# name: (the reference's module and class, constructor keywords, param shape, grad maker)
CASES = {
    "Adafactor": ("torch.optim", {"lr": 0.05}, (4, 6), _dense_grad),
    "Muon": ("torch.optim", {"lr": 0.05}, (4, 6), _dense_grad),
    "SparseAdam": ("torch.optim", {"lr": 0.05}, (5, 3), _sparse_grad),
    "SGDScheduleFree": ("schedulefree", {"lr": 0.05}, (4, 6), _dense_grad),
    "AdamWScheduleFree": ("schedulefree", {"lr": 0.05}, (4, 6), _dense_grad),
    "RAdamScheduleFree": ("schedulefree", {"lr": 0.05, "silent_sgd_phase": False}, (4, 6),
                          _dense_grad),
    "DAdaptAdam": ("dadaptation", {}, (4, 6), _dense_grad),
    "DAdaptSGD": ("dadaptation", {}, (4, 6), _dense_grad),
    "DAdaptAdaGrad": ("dadaptation", {}, (4, 6), _dense_grad),
    "Prodigy": ("prodigyopt", {}, (4, 6), _dense_grad),
}
NAMES = [pytest.param(name, marks=pytest.mark.skipif(
    not hasattr(ft, name), reason=f"{CASES[name][0]} not installed")) for name in CASES]
# state the packages only read (an inference tensor there is not refused)
READ_ONLY = {"DAdaptSGD": ("x0",), "DAdaptAdaGrad": ("x0",), "Prodigy": ("p0",)}
# where the package does not refuse an inference tensor outside inference mode: it updates
# the param (and DAdaptSGD / DAdaptAdaGrad their state) through ``.data``, which torch does
# not check; the bridges refuse them as the others do
VIA_DATA = {("DAdaptAdam", "param"), ("DAdaptSGD", "param"), ("DAdaptAdaGrad", "param"),
            ("Prodigy", "param"), ("DAdaptSGD", "state"), ("DAdaptAdaGrad", "state")}


def _reference_step(ref, name, where):
    """Step the reference outside inference mode: torch refuses the in-place update of an
    inference tensor (the packages that write through ``.data`` do it)."""
    if (name, where) in VIA_DATA:
        ref.step()
    else:
        with pytest.raises(RuntimeError, match="Inplace update to inference tensor"):
            ref.step()


def _reference(name):
    return getattr(importlib.import_module(CASES[name][0]), name)


def _values(shape, i):
    return torch.randn(shape, generator=torch.Generator().manual_seed(10 + i))


def _make(cls, name, inference_params=(), n=2):
    """``cls`` (the bridge or the reference) over n params (the ones in
    ``inference_params`` made in inference mode), with grads and ready to step."""
    _, kw, shape, grad = CASES[name]
    ps = []
    for i in range(n):
        if i in inference_params:
            with torch.inference_mode():
                p = _values(shape, i)
        else:
            p = torch.nn.Parameter(_values(shape, i))
        ps.append(p)
    opt = cls(ps, **kw)
    if hasattr(opt, "train") and "ScheduleFree" in name:
        opt.train()
    _set_grads(ps, name, 0)
    return opt, ps


def _set_grads(ps, name, step):
    for i, p in enumerate(ps):
        p.grad = CASES[name][3](p, 100 * step + i)


def _snapshot(opt):
    """Every param's and state tensor's bytes and every group's settings."""
    params = [p for g in opt.param_groups for p in g["params"]]
    tensors = [(p.detach().numpy().tobytes(), None if p.is_inference() else p._version)
               for p in params]
    state = [{k: (v.detach().numpy().tobytes() if isinstance(v, torch.Tensor) else v)
              for k, v in opt.state[p].items()} if p in opt.state else None for p in params]
    groups = [copy.deepcopy({k: v for k, v in g.items() if k != "params"})
              for g in opt.param_groups]
    return tensors, state, groups


def _match(name, key=None, index=1):
    """The error's text for param ``index`` (in group 0), or for its state[key]."""
    where = rf"parameter {index} \(param_groups\[0\]\['params'\]\[{index}\]\)"
    if name == "Muon":
        where = rf"Muon\.step: param_groups\[0\]\['params'\]\[{index}\]"
    elif name == "SparseAdam":
        where = rf"SparseAdam: param_groups\[0\]\['params'\]\[{index}\]"
    if key is None:
        return where + r" is an inference tensor \(made in torch\.inference_mode\(\)\)"
    return where + rf": state\['{key}'\] is an inference tensor \(made in torch"


@pytest.mark.parametrize("name", NAMES)
def test_an_inference_param_is_refused_outside_inference_mode_and_nothing_is_written(name):
    ref, ps = _make(_reference(name), name, inference_params=(1,))
    _reference_step(ref, name, "param")
    opt, ps = _make(getattr(ft, name), name, inference_params=(1,))
    ps[1].grad, grad = None, ps[1].grad
    opt.step()                                  # (param 1 without a grad: skipped)
    ps[1].grad = grad
    before = _snapshot(opt)
    with pytest.raises(TypeError, match=_match(name)):
        opt.step()
    assert _snapshot(opt) == before
    if "ScheduleFree" in name:                  # the mode switch writes the params too
        ps[0].grad = None
        with torch.inference_mode():
            opt.step()                          # (param 1's state: the switch needs it)
        before = _snapshot(opt)
        with pytest.raises(TypeError, match=r"\w+\.eval: " + _match(name)):
            opt.eval()
        assert _snapshot(opt) == before
        with torch.inference_mode():
            opt.eval()
            opt.train()


@pytest.mark.parametrize("name", NAMES)
def test_inside_inference_mode_inference_params_step_as_normal_ones(name):
    cls = getattr(ft, name)
    normal, ps = _make(cls, name)
    inference, qs = _make(cls, name, inference_params=(0, 1))
    assert all(q.is_inference() for q in qs)
    for step in range(3):
        _set_grads(ps, name, step)
        normal.step()
        with torch.inference_mode():
            _set_grads(qs, name, step)
            inference.step()
    assert all(q.is_inference() for q in qs)
    a, b = _snapshot(normal), _snapshot(inference)
    assert [t for t, _ in a[0]] == [t for t, _ in b[0]]     # the params, bit for bit
    assert a[1] == b[1] and a[2] == b[2]                     # the state and group settings
    assert all(v.is_inference() for q in qs for v in inference.state[q].values()
               if isinstance(v, torch.Tensor))


def _first_written_key(opt, p, name):
    return next(k for k, v in opt.state[p].items() if isinstance(v, torch.Tensor)
                and k not in READ_ONLY.get(name, ()))


@pytest.mark.parametrize("name", NAMES)
def test_inference_state_made_in_inference_mode_is_refused_outside_it(name):
    ref, ps = _make(_reference(name), name)
    with torch.inference_mode():
        ref.step()
    _set_grads(ps, name, 1)
    _reference_step(ref, name, "state")
    opt, ps = _make(getattr(ft, name), name)
    ps[1].grad, grad = None, ps[1].grad
    opt.step()                                  # param 0: normal state
    ps[1].grad = grad
    with torch.inference_mode():
        ps[0].grad = None
        opt.step()                              # param 1: its state made in inference mode
    _set_grads(ps, name, 1)
    assert all(v.is_inference() for v in opt.state[ps[1]].values()
               if isinstance(v, torch.Tensor))
    key = _first_written_key(opt, ps[1], name)
    before = _snapshot(opt)
    with pytest.raises(TypeError, match=_match(name, key)):
        opt.step()
    assert _snapshot(opt) == before
    with torch.inference_mode():
        opt.step()                              # inside inference mode: updated
    assert _snapshot(opt)[0] != before[0]
    # state replaced by clones steps outside inference mode again
    opt.state[ps[1]] = {k: (v.clone() if isinstance(v, torch.Tensor) else v)
                        for k, v in opt.state[ps[1]].items()}
    before = _snapshot(opt)
    opt.step()
    assert _snapshot(opt)[0] != before[0]


@pytest.mark.parametrize("name", NAMES)
def test_inference_state_loaded_by_load_state_dict_is_refused(name):
    cls = getattr(ft, name)
    with torch.inference_mode():
        src, _ = _make(cls, name)
        src.step()
        sd = src.state_dict()
    opt, ps = _make(cls, name)
    opt.step()
    opt.load_state_dict(sd)                     # keeps the inference tensors (as torch)
    assert any(v.is_inference() for v in opt.state[ps[1]].values()
               if isinstance(v, torch.Tensor))
    key = _first_written_key(opt, ps[0], name)
    before = _snapshot(opt)
    with pytest.raises(TypeError, match=_match(name, key, index=0)):
        opt.step()
    assert _snapshot(opt) == before


@pytest.mark.parametrize("name", [n for n in READ_ONLY if hasattr(ft, n)])
def test_inference_state_the_step_only_reads_is_not_refused(name):
    ref, ps = _make(_reference(name), name)
    opt, qs = _make(getattr(ft, name), name)
    for o, params in ((ref, ps), (opt, qs)):
        o.step()
        for p in params:
            for key in READ_ONLY[name]:
                with torch.inference_mode():
                    o.state[p][key] = o.state[p][key].clone()
                assert o.state[p][key].is_inference()
        _set_grads(params, name, 1)
        before = _snapshot(o)
        o.step()                                # the package reads it too
        assert _snapshot(o)[0] != before[0]

"""Row-sparse grads: fastlr.RowSparseGrad, the kernels of fastlr._core.sparse (via
fastlr.sparse), their NumPy twins (fastlr.reference.sparse), fastlr.SparseAdam and
fastlr.compat.torch.SparseAdam.

1. Kernels against twins, bit for bit, over an edge-case grid (empty grads, one row,
   duplicates, sorted and unsorted indices, one column, float32 and float64, maximize).
2. Kernels against torch (sparse COO grads, 100 steps): SparseAdam, Adagrad's sparse path,
   SGD with a sparse grad; coalesce against torch's coalesce.
3. fastlr.SparseAdam against torch.optim.SparseAdam over 100 steps: param groups with
   their own hyperparameters, schedules (torch's group values set to the schedule's value
   each step), duplicates, empty and missing (None) grads, maximize, named params and
   dict grads; step against step_reference bit for bit. float64 <= 1e-10 relative,
   float32 <= 1e-4 (in practice a few ulp).
4. Checkpoints resume bit for bit; errors raise naming the callable, the argument and what
   was expected, and leave every param, moment and counter as it was.
5. The torch bridge against torch.optim.SparseAdam with nn.Embedding(sparse=True) grads.
"""

import numpy as np
import pytest

import fastlr
from fastlr import schedules
from fastlr import sparse as K
from fastlr.reference import sparse as R

DTYPES = [np.float64, np.float32]
N_STEPS = 100
TOL = {np.float64: 1e-10, np.float32: 1e-4}


def _close(a, b, dtype):
    scale = max(1.0, float(np.max(np.abs(b))) if np.size(b) else 1.0)
    return float(np.max(np.abs(a - b))) if np.size(a) else 0.0, TOL[dtype] * scale


def _grad(rng, n_rows, n_cols, nnz, dtype, low=0):
    idx = rng.integers(low, n_rows, nnz)
    rows = (rng.standard_normal((nnz, n_cols)) * 10.0 ** rng.integers(-2, 2, (nnz, 1)))
    return idx.astype(np.int64), rows.astype(dtype)


# ---------------------------------------------------------------------------------------
# 1. kernels against their twins
# ---------------------------------------------------------------------------------------
GRID = [  # (n_rows, n_cols, nnz, sorted)
    (5, 3, 0, False), (5, 3, 1, False), (1, 4, 6, False), (7, 1, 20, False),
    (50, 9, 30, True), (200, 17, 300, False), (1000, 64, 2000, False)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_rows,n_cols,nnz,ordered", GRID)
@pytest.mark.parametrize("maximize", [False, True])
def test_kernels_match_twins(dtype, n_rows, n_cols, nnz, ordered, maximize):
    rng = np.random.default_rng(n_rows * 31 + nnz)
    p0 = rng.standard_normal((n_rows, n_cols)).astype(dtype)
    fast = [p0.copy(), np.zeros_like(p0), np.zeros_like(p0), np.zeros_like(p0)]
    slow = [a.copy() for a in fast]
    for step in range(1, 6):
        idx, rows = _grad(rng, n_rows, n_cols, nnz, dtype)
        if ordered:
            idx = np.unique(idx)
            rows = rows[:len(idx)].copy()
        for mod, (p, m, v, s) in ((K, fast), (R, slow)):
            mod.sparse_adam(p, idx, rows, m, v, lr=0.01, beta1=0.8, beta2=0.99, eps=1e-6,
                            step=step, maximize=maximize)
            mod.sparse_adagrad(p, idx, rows, s, lr=0.1, lr_decay=0.01, eps=1e-10, step=step,
                               maximize=maximize)
            mod.sparse_sgd(p, idx, rows, lr=0.05, maximize=maximize)
        for a, b in zip(fast, slow):
            np.testing.assert_array_equal(a, b)
    ci, cr = K.coalesce(idx, rows)
    ri, rr = R.coalesce(idx, rows)
    np.testing.assert_array_equal(ci, ri)
    np.testing.assert_array_equal(cr, rr)
    assert cr.dtype == dtype and ci.dtype == np.int64


def test_untouched_rows_are_not_written():
    p = np.arange(12.0).reshape(6, 2)
    m, v = np.full_like(p, 0.5), np.full_like(p, 0.25)
    before = [a.copy() for a in (p, m, v)]
    K.sparse_adam(p, np.array([4, 1, 4]), np.ones((3, 2)), m, v, lr=0.1, step=3)
    untouched = [0, 2, 3, 5]
    for a, b in zip((p, m, v), before):
        np.testing.assert_array_equal(a[untouched], b[untouched])
        assert not np.array_equal(a[[1, 4]], b[[1, 4]])


# ---------------------------------------------------------------------------------------
# 2. kernels against torch
# ---------------------------------------------------------------------------------------
torch = pytest.importorskip("torch", reason="torch not installed; pip install torch==2.13.0")

# torch's sparse Adagrad builds sparse tensors without stating whether to check them
pytestmark = pytest.mark.filterwarnings("ignore:Sparse invariant checks:UserWarning")


def _coo(idx, rows, shape):
    return torch.sparse_coo_tensor(torch.from_numpy(idx)[None], torch.from_numpy(rows), shape,
                                   check_invariants=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["adam", "adagrad", "sgd"])
def test_kernels_against_torch(dtype, kind):
    rng = np.random.default_rng(3)
    n_rows, n_cols = 60, 7
    p0 = rng.standard_normal((n_rows, n_cols)).astype(dtype)
    p, s1, s2 = p0.copy(), np.zeros_like(p0), np.zeros_like(p0)
    tp = torch.tensor(p0.copy())
    topt = {"adam": lambda: torch.optim.SparseAdam([tp], lr=0.01, betas=(0.8, 0.99)),
            "adagrad": lambda: torch.optim.Adagrad([tp], lr=0.1, lr_decay=0.01),
            "sgd": lambda: torch.optim.SGD([tp], lr=0.05)}[kind]()
    for step in range(1, N_STEPS + 1):
        idx, rows = _grad(rng, n_rows, n_cols, int(rng.integers(0, 40)), dtype)
        if kind == "adam":
            K.sparse_adam(p, idx, rows, s1, s2, lr=0.01, beta1=0.8, beta2=0.99, step=step)
        elif kind == "adagrad":
            K.sparse_adagrad(p, idx, rows, s1, lr=0.1, lr_decay=0.01, step=step)
        else:
            K.sparse_sgd(p, idx, rows, lr=0.05)
        tp.grad = _coo(idx, rows, (n_rows, n_cols))
        topt.step()
    err, bound = _close(p, tp.numpy(), dtype)
    assert err <= bound, (err, bound)
    if kind == "adam":
        for key, mine in (("exp_avg", s1), ("exp_avg_sq", s2)):
            err, bound = _close(mine, topt.state[tp][key].numpy(), dtype)
            assert err <= bound, (key, err, bound)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nnz", [0, 1, 5, 16, 200])
def test_coalesce_matches_torch(dtype, nnz):
    rng = np.random.default_rng(nnz)
    idx, rows = _grad(rng, 9, 3, nnz, dtype)
    ci, cr = K.coalesce(idx, rows)
    t = _coo(idx, rows, (9, 3)).coalesce()
    np.testing.assert_array_equal(ci, t._indices()[0].numpy())
    ref = t._values().numpy()
    if nnz <= 16:           # torch's sort is stable up to 16 entries: the same sums
        np.testing.assert_array_equal(cr, ref)
    else:                   # beyond, its duplicates are summed in another order
        np.testing.assert_allclose(cr, ref, rtol=0, atol=4 * np.finfo(dtype).eps *
                                   np.abs(rows).sum())


# ---------------------------------------------------------------------------------------
# 3. fastlr.SparseAdam against torch.optim.SparseAdam
# ---------------------------------------------------------------------------------------
SHAPES = [(40, 5), (25, 3), (8, 1)]


def _run_parity(dtype, options, group_options, schedule=None, names=False, rng_seed=0):
    rng = np.random.default_rng(rng_seed)
    init = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    mine = [a.copy() for a in init]
    twin = [a.copy() for a in init]
    tps = [torch.tensor(a.copy()) for a in init]
    keys = [f"emb{k}" for k in range(len(SHAPES))]

    def groups(params):
        first = list(zip(keys[:2], params[:2])) if names else params[:2]
        last = list(zip(keys[2:], params[2:])) if names else params[2:]
        return [{"params": first}, {"params": last, **group_options}]

    opts = dict(options)
    if schedule is not None:
        opts["lr"] = schedule
    opt = fastlr.SparseAdam(groups(mine), **opts)
    ref = fastlr.SparseAdam(groups(twin), **opts)
    t_opts = {k: v for k, v in options.items()}
    topt = torch.optim.SparseAdam([{"params": tps[:2]}, {"params": tps[2:], **group_options}],
                                  **t_opts)
    for t in range(N_STEPS):
        if schedule is not None:
            topt.param_groups[0]["lr"] = float(schedule(t))
        grads = []
        for k, (shape, tp) in enumerate(zip(SHAPES, tps)):
            if (t + k) % 7 == 3:
                grads.append(None)           # no grad: neither updated nor counted
                tp.grad = None
                continue
            nnz = 0 if (t + k) % 5 == 0 else int(rng.integers(1, 3 * shape[0]))
            idx, rows = _grad(rng, shape[0], shape[1], nnz, dtype)
            grads.append(fastlr.RowSparseGrad(idx, rows))
            tp.grad = _coo(idx, rows, shape)
        opt.step(dict(zip(keys, grads)) if names else grads)
        ref.step_reference(grads)
        topt.step()
        for a, b in zip(mine, twin):
            np.testing.assert_array_equal(a, b)
    for k, (a, tp) in enumerate(zip(mine, tps)):
        err, bound = _close(a, tp.numpy(), dtype)
        assert err <= bound, (k, err, bound)
        st = topt.state[tp]
        assert opt.state[k]["step"] == st["step"]
        for key in ("exp_avg", "exp_avg_sq"):
            err, bound = _close(opt.state[k][key], st[key].numpy(), dtype)
            assert err <= bound, (k, key, err, bound)
    assert opt.steps == N_STEPS
    return opt


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("options,group_options", [
    ({}, {}),
    ({"lr": 0.02, "betas": (0.8, 0.99), "eps": 1e-6}, {"lr": 0.05}),
    ({"lr": 0.01, "maximize": True}, {"betas": (0.5, 0.9), "eps": 1e-3}),
], ids=["defaults", "hypers", "maximize"])
def test_sparse_adam_matches_torch(dtype, options, group_options):
    _run_parity(dtype, options, group_options)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sparse_adam_schedule_and_names(dtype):
    sched = schedules.cosine(0.05, N_STEPS, end=0.001)
    opt = _run_parity(dtype, {"betas": (0.85, 0.995)}, {"lr": 0.03}, schedule=sched,
                      names=True, rng_seed=5)
    assert opt.last_lr == [pytest.approx(float(sched(N_STEPS - 1))), 0.03]


def test_sparse_adam_beta_schedule_is_evaluated_per_step():
    p, q = np.zeros((4, 2)), np.zeros((4, 2))
    b1 = schedules.exponential(0.9, 0.5)
    opt = fastlr.SparseAdam([p], lr=0.1, betas=(b1, 0.99))
    m, v = np.zeros_like(q), np.zeros_like(q)
    for t in range(4):
        g = fastlr.RowSparseGrad([t % 4, 1], np.full((2, 2), t + 1.0))
        opt.step([g])
        R.sparse_adam(q, g.indices, g.rows, m, v, lr=0.1, beta1=float(b1(t)), beta2=0.99,
                      step=t + 1)
    np.testing.assert_array_equal(p, q)


# ---------------------------------------------------------------------------------------
# 4. checkpoints and errors
# ---------------------------------------------------------------------------------------
def _stream(seed, n, shape=(30, 4), dtype=np.float64):
    rng = np.random.default_rng(seed)
    return [fastlr.RowSparseGrad(*_grad(rng, shape[0], shape[1], 12, dtype)) for _ in range(n)]


def test_checkpoint_resumes_bit_for_bit(tmp_path):
    grads = _stream(1, 20)
    a = np.ones((30, 4))
    full = fastlr.SparseAdam([a], lr=0.01)
    for g in grads:
        full.step([g])
    b = np.ones((30, 4))
    first = fastlr.SparseAdam([b], lr=0.01)
    for g in grads[:10]:
        first.step([g])
    first.save(tmp_path / "ckpt.npz")
    sd = first.state_dict()
    assert sorted(sd["state"][0]) == ["exp_avg", "exp_avg_sq", "step"]
    for loader in ("state_dict", "file"):
        c = b.copy()
        second = fastlr.SparseAdam([c], lr=0.01)
        if loader == "file":
            second.load(tmp_path / "ckpt.npz")
        else:
            second.load_state_dict(sd)
        for g in grads[10:]:
            second.step([g])
        np.testing.assert_array_equal(c, a)
        assert second.state[0]["step"] == 20
    other = fastlr.SparseAdam([np.ones((30, 4))], lr=0.02)
    with pytest.raises(ValueError, match="lr"):
        other.load_state_dict(sd)


def _snapshot(opt):
    return ([p.copy() for p in opt.params],
            [{k: np.array(v, copy=True) for k, v in st.items()} for st in
             opt.state.values()], opt.steps)


def _assert_unchanged(opt, snap):
    params, state, steps = snap
    for p, q in zip(opt.params, params):
        np.testing.assert_array_equal(p, q)
    for st, old in zip(opt.state.values(), state):
        for k, v in old.items():
            np.testing.assert_array_equal(st[k], v)
    assert opt.steps == steps


def _bad_steps():
    ok = fastlr.RowSparseGrad([0, 2], np.ones((2, 3)))
    return [
        ("out-of-range", [ok, fastlr.RowSparseGrad([1, 9], np.ones((2, 2)))], ValueError,
         r"fastlr.SparseAdam: grads\[1\] \(param_groups\[1\]\['params'\]\[0\]\) indices\[1\] "
         r"is 9, out of range for params\[1\] with 5 rows"),
        ("dense", [ok, np.ones((5, 2))], TypeError, r"grads\[1\].*RowSparseGrad.*dense"),
        ("dtype", [ok, fastlr.RowSparseGrad([1], np.ones((1, 2), np.float32))], TypeError,
         r"grads\[1\].*rows have dtype float32 but params\[1\].*float64"),
        ("width", [ok, fastlr.RowSparseGrad([1], np.ones((1, 3)))], ValueError,
         r"grads\[1\].*rows have shape \(1, 3\).*expected \(1, 2\)"),
        ("count", [ok], ValueError, "got 1 grads for 2 params"),
        ("not-a-list", ok, TypeError, "grads must be a list of fastlr.RowSparseGrad"),
        ("dict-unnamed", {"a": ok}, TypeError, "names"),
    ]


@pytest.mark.parametrize("label,grads,exc,match", _bad_steps(), ids=[c[0] for c in _bad_steps()])
def test_bad_step_raises_and_writes_nothing(label, grads, exc, match):
    a, b = np.ones((4, 3)), np.ones((5, 2))
    opt = fastlr.SparseAdam([{"params": [a]}, {"params": [b], "lr": 0.1}], lr=0.01)
    opt.step([fastlr.RowSparseGrad([1], np.ones((1, 3))), fastlr.RowSparseGrad([0], np.ones((1, 2)))])
    snap = _snapshot(opt)
    with pytest.raises(exc, match=match):
        opt.step(grads)
    _assert_unchanged(opt, snap)


def test_scheduled_value_out_of_range_writes_nothing():
    a = np.ones((3, 2))
    opt = fastlr.SparseAdam([a], lr=lambda t: 0.1 if t < 1 else 0.0)
    opt.step([fastlr.RowSparseGrad([0], np.ones((1, 2)))])
    snap = _snapshot(opt)
    with pytest.raises(ValueError, match=r"fastlr.SparseAdam: param_groups\[0\]\['lr'\].*> 0"):
        opt.step([fastlr.RowSparseGrad([0], np.ones((1, 2)))])
    _assert_unchanged(opt, snap)


@pytest.mark.parametrize("kwargs,exc,match", [
    ({"lr": 0.0}, ValueError, "lr"), ({"lr": -1.0}, ValueError, "lr"),
    ({"lr": "0.1"}, TypeError, "lr"), ({"eps": 0.0}, ValueError, "eps"),
    ({"betas": (1.0, 0.9)}, ValueError, "beta1"), ({"betas": (0.9, -0.1)}, ValueError, "beta2"),
    ({"betas": 0.9}, TypeError, "betas"), ({"maximize": 2}, ValueError, "maximize"),
    ({"maximize": "yes"}, TypeError, "maximize"),
])
def test_bad_hyperparameters(kwargs, exc, match):
    with pytest.raises(exc, match=f"^fastlr.SparseAdam: .*{match}"):
        fastlr.SparseAdam([np.ones((2, 2))], **kwargs)


@pytest.mark.parametrize("param,exc,match", [
    (np.ones(4), ValueError, "must be 2-D"),
    (np.ones((3, 4), order="F"), ValueError, "C-contiguous"),
    (np.ones((3, 4), np.int64), TypeError, "float32"),
])
def test_bad_params(param, exc, match):
    with pytest.raises(exc, match=f"^fastlr.SparseAdam: params\\[0\\].*{match}"):
        fastlr.SparseAdam([param])


def test_no_clipping_or_skipping():
    opt = fastlr.SparseAdam([np.ones((2, 2))])
    assert opt.max_grad_norm is None and opt.skip_nonfinite is False
    with pytest.raises(ValueError, match="max_grad_norm is not supported"):
        opt.max_grad_norm = 1.0
    with pytest.raises(ValueError, match="skip_nonfinite is not supported"):
        opt.skip_nonfinite = True


@pytest.mark.parametrize("indices,rows,exc,match", [
    ([1.0], np.ones((1, 2)), TypeError, "integers"),
    ([True], np.ones((1, 2)), TypeError, "integers"),
    (np.array([0.5]), np.ones((1, 2)), TypeError, "integer dtype"),
    (np.array([[1]]), np.ones((1, 2)), ValueError, "1-D"),
    ([-1], np.ones((1, 2)), ValueError, r"indices\[0\] is -1"),
    (np.array([2 ** 63], dtype=np.uint64), np.ones((1, 2)), ValueError, "int64"),
    ([2 ** 70], np.ones((1, 2)), ValueError, "int64"),
    ([1], [[1.0, 2.0]], TypeError, "numpy.ndarray"),
    ([1], np.ones((1, 2), np.int32), TypeError, "float32 or float64"),
    ([1, 2], np.ones((1, 2)), ValueError, "one row per index"),
    ([1], np.ones(2), ValueError, "one row per index"),
    ("12", np.ones((2, 2)), TypeError, "indices"),
])
def test_row_sparse_grad_checks(indices, rows, exc, match):
    with pytest.raises(exc, match=f"^fastlr.RowSparseGrad: .*{match}"):
        fastlr.RowSparseGrad(indices, rows)


def test_row_sparse_grad_values():
    g = fastlr.RowSparseGrad(np.array([3, 0, 3], dtype=np.int32),
                             np.asfortranarray(np.arange(6.0).reshape(3, 2)))
    assert g.indices.dtype == np.int64 and g.rows.flags.c_contiguous
    assert (g.nnz, g.n_cols, g.dtype) == (3, 2, np.float64)
    np.testing.assert_array_equal(g.to_dense(4), [[2, 3], [0, 0], [0, 0], [4, 6]])
    with pytest.raises(AttributeError):
        g.rows = np.ones((3, 2))
    empty = fastlr.RowSparseGrad([], np.ones((0, 5), np.float32))
    assert empty.nnz == 0 and empty.indices.dtype == np.int64


def test_kernel_argument_errors_write_nothing():
    p = np.ones((4, 2))
    m, v = np.zeros_like(p), np.zeros_like(p)
    with pytest.raises(ValueError, match=r"^fastlr.sparse.sparse_adam: grad indices\[2\] is 4"):
        K.sparse_adam(p, np.array([0, 1, 4]), np.ones((3, 2)), m, v, lr=0.1, step=1)
    with pytest.raises(ValueError, match="^fastlr.sparse.sparse_adam: exp_avg and param"):
        K.sparse_adam(p, np.array([0]), np.ones((1, 2)), p, v, lr=0.1, step=1)
    with pytest.raises(ValueError, match="^fastlr.sparse.sparse_adam: lr must be > 0"):
        K.sparse_adam(p, np.array([0]), np.ones((1, 2)), m, v, lr=0.0, step=1)
    with pytest.raises(TypeError, match="^fastlr.sparse.sparse_adagrad: grad indices must"):
        K.sparse_adagrad(p, np.array([0], np.int32), np.ones((1, 2)), m, lr=0.1, step=1)
    ro = np.ones((4, 2))
    ro.setflags(write=False)
    with pytest.raises(ValueError, match="^fastlr.sparse.sparse_sgd: param is read-only"):
        K.sparse_sgd(ro, np.array([0]), np.ones((1, 2)), lr=0.1)
    np.testing.assert_array_equal(p, 1.0)
    assert not m.any() and not v.any()


def test_repr():
    opt = fastlr.SparseAdam({"emb": np.ones((3, 2))}, lr=schedules.constant(0.1))
    text = repr(opt)
    assert text.startswith("SparseAdam (") and "emb" in text and "constant" in text
    assert "betas: (0.9, 0.999)" in text and "weight_decay" not in text


# ---------------------------------------------------------------------------------------
# 5. the torch bridge
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_bridge_matches_torch(dtype):
    from fastlr.compat.torch import SparseAdam as Bridge
    torch.manual_seed(0)
    ours = [torch.nn.Embedding(50, 6, sparse=True).to(dtype),
            torch.nn.Embedding(20, 3, sparse=True).to(dtype)]
    theirs = [torch.nn.Embedding(50, 6, sparse=True).to(dtype),
              torch.nn.Embedding(20, 3, sparse=True).to(dtype)]
    for a, b in zip(ours, theirs):
        b.load_state_dict(a.state_dict())

    def groups(embs):
        return [{"params": embs[0].parameters()},
                {"params": embs[1].parameters(), "lr": 0.05, "betas": (0.8, 0.9)}]

    o1 = Bridge(groups(ours), lr=0.01, maximize=False)
    o2 = torch.optim.SparseAdam(groups(theirs), lr=0.01)
    for t in range(N_STEPS):
        ids0, ids1 = torch.randint(0, 50, (30,)), torch.randint(0, 20, (8,))
        for embs, o in ((ours, o1), (theirs, o2)):
            o.zero_grad()
            ((embs[0](ids0) ** 2).sum() + embs[1](ids1).sum() * 0.5).backward()
            o.step()
    tol = TOL[np.float64 if dtype == torch.float64 else np.float32]
    for a, b in zip(ours, theirs):
        assert (a.weight - b.weight).abs().max().item() <= tol * max(
            1.0, b.weight.abs().max().item())
        assert o1.state[a.weight]["step"] == o2.state[b.weight]["step"] == N_STEPS
    o2.load_state_dict(o1.state_dict())         # torch's own state layout


def test_bridge_refuses_before_writing():
    from fastlr.compat.torch import SparseAdam as Bridge
    emb = torch.nn.Embedding(10, 2, sparse=True).double()
    vec = torch.nn.Parameter(torch.ones(4, dtype=torch.float64))
    opt = Bridge([emb.weight, vec], lr=0.1)
    before = emb.weight.detach().clone()
    emb(torch.tensor([1, 2])).sum().backward()
    vec.grad = torch.ones(4, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="dense gradients"):
        opt.step()
    vec.grad = _coo(np.array([1]), np.ones(1), (4,))
    with pytest.raises(ValueError, match=r"^fastlr.compat.torch.SparseAdam: param_groups\[0\]"
                                         r"\['params'\]\[1\] must be a 2-D"):
        opt.step()
    assert torch.equal(emb.weight.detach(), before) and not opt.state


# ---------------------------------------------------------------------------------------
# 6. row-sparse grads in SGD, Adagrad and Adam (lazy), mixed with dense grads in one step
# ---------------------------------------------------------------------------------------
LAZY = [  # (fastlr class, torch class for the row-sparse param, options)
    ("SGD", "SGD", {"lr": 0.1, "maximize": True}),
    ("Adagrad", "Adagrad", {"lr": 0.1, "lr_decay": 0.01, "initial_accumulator_value": 0.1}),
    ("Adam", "SparseAdam", {"lr": 0.01, "betas": (0.8, 0.99)}),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cls,torch_cls,options", LAZY, ids=[c[0] for c in LAZY])
def test_lazy_variants_match_torch(dtype, cls, torch_cls, options):
    rng = np.random.default_rng(11)
    E0, W0 = rng.standard_normal((40, 4)).astype(dtype), rng.standard_normal((3, 5)).astype(dtype)
    E, W, Er, Wr = E0.copy(), W0.copy(), E0.copy(), W0.copy()
    sched = schedules.cosine(options["lr"], N_STEPS, end=options["lr"] / 10)
    opts = dict(options, lr=sched)
    opt = getattr(fastlr, cls)([{"params": [E]}, {"params": [W], "lr": 0.02}], **opts)
    ref = getattr(fastlr, cls)([{"params": [Er]}, {"params": [Wr], "lr": 0.02}], **opts)
    tE, tW = torch.tensor(E0.copy()), torch.tensor(W0.copy())
    sparse_opt = getattr(torch.optim, torch_cls)([tE], **options)
    dense_opt = getattr(torch.optim, cls)([tW], **dict(options, lr=0.02))
    for t in range(N_STEPS):
        sparse_opt.param_groups[0]["lr"] = float(sched(t))
        idx, rows = _grad(rng, 40, 4, int(rng.integers(0, 30)), dtype)
        gW = rng.standard_normal((3, 5)).astype(dtype)
        grads = [fastlr.RowSparseGrad(idx, rows), gW]
        opt.step(grads)
        ref.step_reference(grads)
        tE.grad, tW.grad = _coo(idx, rows, (40, 4)), torch.from_numpy(gW.copy())
        sparse_opt.step()
        dense_opt.step()
        np.testing.assert_array_equal(E, Er)    # the lazy kernels and their twins
    for mine, theirs in ((E, tE), (W, tW)):
        err, bound = _close(mine, theirs.numpy(), dtype)
        assert err <= bound, (err, bound)
    assert opt.steps == N_STEPS and opt.state[0]["step"] == N_STEPS


@pytest.mark.parametrize("cls,options,exc,match", [
    ("SGD", {"lr": 0.1, "momentum": 0.9}, ValueError, "momentum=0.9"),
    ("SGD", {"lr": 0.1, "weight_decay": 0.1}, ValueError, "weight_decay=0.1"),
    ("Adagrad", {"weight_decay": 0.1}, ValueError, "weight_decay=0.1"),
    ("Adam", {"amsgrad": True}, ValueError, "amsgrad=True"),
    ("Adam", {"lr": 0.0}, ValueError, "lr=0.0"),
    ("AdamW", {}, ValueError, "weight_decay=0.01"),
    ("RMSprop", {}, TypeError, "which RMSprop does not take"),
    ("Adam", {"max_grad_norm": 1.0}, ValueError, "max_grad_norm is not supported"),
    ("SGD", {"lr": 0.1, "skip_nonfinite": True}, ValueError, "skip_nonfinite"),
])
def test_lazy_refusals_write_nothing(cls, options, exc, match):
    E, W = np.ones((5, 2)), np.ones(3)
    opt = getattr(fastlr, cls)([W, E], **options)
    opt.step([np.ones(3), np.ones((5, 2))])
    snap = _snapshot(opt)
    with pytest.raises(exc, match=f"^fastlr.{cls}: .*{match}"):
        opt.step([np.ones(3), fastlr.RowSparseGrad([1], np.ones((1, 2)))])
    _assert_unchanged(opt, snap)


@pytest.mark.parametrize("grads,exc,match", [
    (lambda: [np.ones(3, np.float32), fastlr.RowSparseGrad([1], np.ones((1, 2)))], TypeError,
     r"grads\[0\].*dtype float32"),
    (lambda: [np.ones(4), fastlr.RowSparseGrad([1], np.ones((1, 2)))], ValueError,
     r"grads\[0\].* shape \(4,\)"),
    (lambda: ["x", fastlr.RowSparseGrad([1], np.ones((1, 2)))], TypeError,
     r"grads\[0\] .*must be a numpy.ndarray or a fastlr.RowSparseGrad"),
    (lambda: [np.ones(3), fastlr.RowSparseGrad([5], np.ones((1, 2)))], ValueError,
     r"grads\[1\].*indices\[0\] is 5, out of range"),
])
def test_lazy_mixed_step_checks_every_grad_first(grads, exc, match):
    E, W = np.ones((5, 2)), np.ones(3)
    opt = fastlr.Adam([W, E], lr=0.1)
    snap = _snapshot(opt)
    with pytest.raises(exc, match=f"^fastlr.Adam(.step)?: .*{match}"):
        opt.step(grads())
    _assert_unchanged(opt, snap)


def test_sparse_adam_refuses_dense_grads_even_mixed():
    opt = fastlr.SparseAdam([np.ones((4, 2)), np.ones((3, 2))])
    with pytest.raises(TypeError, match=r"grads\[1\].*does not support dense gradients"):
        opt.step([fastlr.RowSparseGrad([0], np.ones((1, 2))), np.ones((3, 2))])
    assert opt.steps == 0


@pytest.mark.parametrize("cls", ["SparseAdam", "Adam"])
def test_grad_rows_sharing_a_written_buffer_are_refused(cls):
    a, b = np.ones((4, 2)), np.ones((3, 2))
    opt = getattr(fastlr, cls)([a, b], lr=0.1)
    snap = _snapshot(opt)
    other = fastlr.RowSparseGrad([0], np.ones((1, 2)))
    with pytest.raises(ValueError, match=r"grads\[1\] .*shares memory with a param"):
        opt.step([other, fastlr.RowSparseGrad([0], a[:1])])     # rows: a view of params[0]
    _assert_unchanged(opt, snap)

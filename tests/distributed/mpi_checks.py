"""Checks of fastlr.distributed, run on every rank under MPI:

    mpirun -n 2 python tests/distributed/mpi_checks.py        (and -n 3: uneven shards)

tests/distributed/test_distributed.py runs this under mpirun. Each check runs on every rank; a failure
on any rank is shared (one all-reduce per check), so every rank reports it and the exit
status is non-zero. Prints "PASSED <n>" from rank 0 when every check passed.

FASTLR_CHECK_DEADLINE=<seconds>: past it, every rank prints its Python stacks and exits
(faulthandler), so a hang shows where each rank was instead of only timing out.
"""

import contextlib
import faulthandler
import os
import sys
import tempfile
import time
import traceback
import warnings

import numpy as np
from mpi4py import MPI

import fastlr
from fastlr import distributed, schedules

COMM = MPI.COMM_WORLD
RANK, N = COMM.Get_rank(), COMM.Get_size()
SHAPES = [(3, 4), (5,), (7, 2), (1,)]          # 32 elements: uneven on 3 ranks


def rank_grads(step, size, dtype=np.float64, scale=1.0):
    """Every rank's grads at a step, the same on every rank (so each can build the mean)."""
    return [(scale * np.random.default_rng([step, r]).standard_normal(size)).astype(dtype)
            for r in range(N)]


def mean_of(gs):
    return (sum(g.astype(np.float64) for g in gs) / N).astype(gs[0].dtype)


def build(cls, dtype=np.float64, comm=COMM, seed=0, shapes=SHAPES, **kw):
    flat, views = fastlr.flat_buffer(shapes, dtype)
    flat[:] = np.random.default_rng(seed).standard_normal(flat.size)
    dist = distributed.ShardedOptimizer(cls, views, comm, **kw)
    return flat, dist


def reference(cls, dtype=np.float64, seed=0, shapes=SHAPES, **kw):
    flat, views = fastlr.flat_buffer(shapes, dtype)
    flat[:] = np.random.default_rng(seed).standard_normal(flat.size)
    return flat, getattr(fastlr, cls)(views, **kw)


def rel(a, b):
    return float(np.max(np.abs(a.astype(np.float64) - b)) / max(1.0, np.max(np.abs(b))))


CONFIGS = [
    ("SGD", dict(lr=schedules.cosine(0.05, 40), momentum=0.9, nesterov=True)),
    ("Adam", dict(lr=schedules.warmup_cosine(0.01, warmup_steps=5, total_steps=40))),
    ("AdamW", dict(lr=0.01, weight_decay=0.1, amsgrad=True)),
    ("RMSprop", dict(lr=schedules.step_decay(0.01, 10, 0.5), momentum=0.5, centered=True)),
    ("NAdam", dict(lr=0.01)),
    ("Lion", dict(lr=1e-3)),
]


def check_parity():
    """N ranks = one process stepping on the mean grad (float64 1e-12 relative)."""
    for cls, kw in CONFIGS:
        for clip in (None, 0.5):
            flat, dist = build(cls, max_grad_norm=clip, **kw)
            rflat, ref = reference(cls, max_grad_norm=clip, **kw)
            for t in range(40):
                gs = rank_grads(t, flat.size)
                dist.step(gs[RANK].copy())
                ref.step(mean_of(gs))
            assert rel(flat, rflat) < 1e-12, (cls, clip, rel(flat, rflat))
            if clip is not None:
                assert abs(dist.last_grad_norm - ref.last_grad_norm) < 1e-12 * ref.last_grad_norm
    # float32 and a list of non-adjacent grad arrays (copied into the flat buffer)
    flat, dist = build("Adam", np.float32, lr=1e-2)
    rflat, ref = reference("Adam", np.float32, lr=1e-2)
    for t in range(30):
        gs = rank_grads(t, flat.size, np.float32)
        mine, pos = [], 0
        for shape in SHAPES:
            n = int(np.prod(shape))
            mine.append(gs[RANK][pos:pos + n].reshape(shape).copy())
            pos += n
        dist.step(mine)
        ref.step(mean_of(gs))
    assert rel(flat, rflat) < 1e-5, rel(flat, rflat)


def check_state_memory():
    """Each rank holds 1/N of the state (its shard, +- one element per buffer)."""
    flat, dist = build("Adam", lr=1e-3)
    dist.step(rank_grads(0, flat.size)[RANK])
    counts, _ = distributed.shard_bounds(flat.size, N)
    assert dist.state_elements == 2 * counts[RANK], (dist.state_elements, counts)
    assert abs(dist.state_elements - 2 * flat.size / N) <= 2
    assert dist.bounds[1] - dist.bounds[0] == counts[RANK]


def check_params_broadcast_and_identical():
    flat, views = fastlr.flat_buffer(SHAPES)
    flat[:] = RANK + 1.0                       # different on every rank
    dist = distributed.ShardedOptimizer("SGD", views, lr=0.1)
    assert np.all(flat == 1.0)                 # rank 0's params everywhere
    dist.step(rank_grads(0, flat.size, np.float32)[RANK])
    everyone = COMM.allgather(flat.copy())
    assert all(np.array_equal(everyone[0], f) for f in everyone)


def check_resume_same_ranks():
    """Per-rank state dicts: resuming on the same ranks is bit-identical."""
    kw = dict(lr=schedules.cosine(0.01, 30), max_grad_norm=1.0, skip_nonfinite=True)
    flat, dist = build("AdamW", **kw)
    for t in range(30):
        if t == 12:
            sd, saved = dist.state_dict(), flat.copy()
        dist.step(rank_grads(t, flat.size)[RANK])
    flat2, dist2 = build("AdamW", seed=5, **kw)
    flat2[:] = saved
    dist2.load_state_dict(sd)
    for t in range(12, 30):
        dist2.step(rank_grads(t, flat.size)[RANK])
    assert np.array_equal(flat, flat2)
    assert dist2.steps == dist.steps == 30


def check_resume_other_rank_counts():
    """A gathered state (a file written by rank 0) loads onto 1, 2 or N ranks and into a
    single-process optimizer; each continues like the uninterrupted single process."""
    kw = dict(lr=schedules.cosine(0.01, 30))
    path = os.path.join(tempfile.gettempdir(), f"fastlr-mpi-{os.getppid()}-{N}.npz")
    path = COMM.bcast(path, root=0)
    for cls in ("Adam", "SGD", "NAdam"):
        extra = dict(momentum=0.9) if cls == "SGD" else {}
        flat, dist = build(cls, **kw, **extra)
        rflat, ref = reference(cls, **kw, **extra)
        for t in range(12):
            gs = rank_grads(t, flat.size)
            dist.step(gs[RANK])
            ref.step(mean_of(gs))
        dist.save(path)
        saved = flat.copy()
        for t in range(12, 30):
            ref.step(mean_of(rank_grads(t, flat.size)))
        for size in sorted({1, max(1, N - 1), N}):
            sub = COMM.Split(0 if RANK < size else MPI.UNDEFINED, RANK)
            if sub != MPI.COMM_NULL:
                f2, d2 = build(cls, comm=sub, seed=9, **kw, **extra)
                f2[:] = saved
                d2.load(path)
                for t in range(12, 30):
                    gs = rank_grads(t, flat.size)     # the N-rank mean, split over `size`
                    mean = mean_of(gs)
                    d2.step(mean.copy())              # every rank of sub passes the mean
                assert rel(f2, rflat) < 1e-12, (cls, size, rel(f2, rflat))
                sub.Free()
        # the gathered state loads into a plain single-process optimizer
        sd = dist.gathered_state_dict()
        if RANK == 0:
            f3, single = reference(cls, seed=3, **kw, **extra)
            f3[:] = saved
            single.load_state_dict(sd)
            for t in range(12, 30):
                single.step(mean_of(rank_grads(t, flat.size)))
            assert rel(f3, rflat) < 1e-12
    COMM.Barrier()
    if RANK == 0 and os.path.exists(path):
        os.unlink(path)


#: when main's FASTLR_CHECK_DEADLINE expires (time.monotonic()), or None
DEADLINE_AT = None


@contextlib.contextmanager
def _no_hang(seconds=60):
    """Past ``seconds``, print this rank's stacks and exit (faulthandler): a regression that
    leaves a rank waiting for the others fails the run instead of hanging it. Then
    FASTLR_CHECK_DEADLINE's timer again, if set (faulthandler keeps one)."""
    faulthandler.dump_traceback_later(seconds, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
        if DEADLINE_AT is not None:
            faulthandler.dump_traceback_later(max(1.0, DEADLINE_AT - time.monotonic()),
                                              exit=True)


def _raises_everywhere(fn, match):
    try:
        fn()
    except (TypeError, ValueError) as error:
        assert match in str(error), str(error)
        return
    raise AssertionError(f"no ValueError ({match})")


def check_misuse():
    """Mismatches are caught collectively: every rank raises, none hangs."""
    shapes = SHAPES if RANK == 0 else [(3, 4), (5,), (2, 7), (1,)]
    _raises_everywhere(lambda: build("Adam", shapes=shapes, lr=1e-3), "rank")
    dtype = np.float64 if RANK == 0 else np.float32
    _raises_everywhere(lambda: build("Adam", dtype, lr=1e-3), "rank")
    flat, dist = build("Adam", lr=1e-3)
    before = flat.copy()
    good = rank_grads(0, flat.size)[RANK]
    bad = good.astype(np.float32) if RANK == N - 1 else good
    _raises_everywhere(lambda: dist.step(bad), "dtype" if RANK == N - 1 else "other rank")
    if N > 1:
        short = good[:-1] if RANK == 0 else good
        _raises_everywhere(lambda: dist.step(short), "other rank" if RANK else "grad")
    assert np.array_equal(flat, before) and dist.steps == 0
    dist.step(good)
    assert dist.steps == 1


def check_skip_nonfinite():
    """A NaN on one rank skips the step on every rank; nothing changes anywhere."""
    flat, dist = build("Adam", lr=1e-2, skip_nonfinite=True, max_grad_norm=1.0)
    rflat, ref = reference("Adam", lr=1e-2, max_grad_norm=1.0)
    for t in range(10):
        gs = rank_grads(t, flat.size)
        if t == 4:
            g = gs[RANK].copy()
            if RANK == N - 1:
                g[3] = np.nan
            before = flat.copy()
            assert dist.step(g) is False
            assert np.array_equal(flat, before) and dist.skipped_steps == 1
            continue
        assert dist.step(gs[RANK]) is True
        ref.step(mean_of(gs))
    assert rel(flat, rflat) < 1e-12 and dist.steps == 9


def check_tiny_model():
    """Fewer elements than ranks: some shards are empty, still correct."""
    flat, dist = build("Adam", shapes=[(2,)], lr=0.1)
    rflat, ref = reference("Adam", shapes=[(2,)], lr=0.1)
    for t in range(5):
        gs = rank_grads(t, 2)
        dist.step(gs[RANK])
        ref.step(mean_of(gs))
    assert rel(flat, rflat) < 1e-12


def check_hosts():
    """The ranks sit in FASTLR_EXPECT_HOSTS network namespaces (1 unless a multi-host test
    bed launched them: tests/distributed/netns_hosts.py)."""
    expected = int(os.environ.get("FASTLR_EXPECT_HOSTS", "1"))
    if expected == 1 and not os.path.exists("/proc/self/ns/net"):
        return                      # not Linux: one host anyway
    namespaces = COMM.allgather(os.readlink("/proc/self/ns/net"))
    assert len(set(namespaces)) == expected, (namespaces, expected)


def check_grad_comm_bfloat16():
    """grad_comm="bfloat16": the owner of each shard adds the other ranks' grads rounded
    to bfloat16 to its own, in the order of the direct exchange: bit for bit the mean
    built here the same way; and close to the exact mean."""
    from fastlr.distributed import from_bfloat16, shard_bounds, to_bfloat16
    for dtype in (np.float32, np.float64):
        flat, dist = build("Adam", dtype, lr=1e-2, grad_comm="bfloat16")
        rflat, ref = reference("Adam", dtype, lr=1e-2)
        counts, displs = shard_bounds(flat.size, N)
        for t in range(20):
            gs = rank_grads(t, flat.size, dtype)
            dist.step(gs[RANK].copy())
            mean = np.empty(flat.size, dtype)
            for owner in range(N):
                lo, hi = displs[owner], displs[owner] + counts[owner]
                acc = gs[owner][lo:hi].copy()
                for k in range(1, N):
                    src = (owner - k) % N
                    acc = acc + from_bfloat16(to_bfloat16(gs[src][lo:hi])).astype(dtype)
                mean[lo:hi] = acc / dtype(N)
            exact = mean_of(gs)
            assert np.max(np.abs(mean - exact)) <= 2.0 ** -8 * np.max(np.abs(exact)) + 1e-30
            ref.step(mean)
        assert np.array_equal(flat, rflat), (dtype, rel(flat, rflat))
    try:
        build("Adam", lr=1e-3, grad_comm="float16")
    except ValueError as e:
        assert "grad_comm" in str(e)
    else:
        raise AssertionError("grad_comm='float16' was accepted")


def check_pipelined_pieces():
    """The plain step's exchange in many uneven pieces (8 to 24 bytes: 1 to 12 elements
    of a 32-element model, windows of 1 to 4 messages, more pieces than the window): the
    bits of the overlapped exchange, which does not cut its messages so, with float32 and
    16-bit grads and params; and the 16-bit checks' own expectations. (Ranks of one host
    exchange whole shards unless told otherwise: ``_pipeline_bytes`` is None there.)"""
    saved = distributed._PIPELINE_BYTES, distributed._PIPELINE_WINDOW
    variants = [dict(), dict(grad_comm="bfloat16"), dict(param_comm="bfloat16"),
                dict(grad_comm="bfloat16", param_comm="bfloat16"),
                dict(grad_comm="bfloat16", param_comm="bfloat16", max_grad_norm=0.5)]
    local = COMM.Split_type(MPI.COMM_TYPE_SHARED)
    one_host = COMM.allreduce(local.Get_size() == N, op=MPI.LAND)
    local.Free()
    # across the test bed's hosts, MPI must see several nodes (else pieces go unused)
    assert one_host == (int(os.environ.get("FASTLR_EXPECT_HOSTS", "1")) == 1), one_host
    try:
        for i, (pieces, window) in enumerate(((12, 4), (20, 4), (8, 1), (24, 2))):
            distributed._PIPELINE_BYTES = pieces
            distributed._PIPELINE_WINDOW = window
            for dtype in (np.float32, np.float64) if i == 0 else (np.float32,):
                for extra in variants:
                    flat, dist = build("AdamW", dtype, lr=1e-2, **extra)
                    assert dist._pipeline_bytes == (None if one_host else pieces)
                    dist._pipeline_bytes = pieces
                    oflat, over = build("AdamW", dtype, lr=1e-2, overlap=True,
                                        bucket_size=1000, **extra)
                    for t in range(8):
                        g = rank_grads(t, flat.size, dtype)[RANK]
                        dist.step(g.copy())
                        over.step(g.copy())
                        assert np.array_equal(flat, oflat), (pieces, window, dtype, extra,
                                                             t)
                    if "param_comm" in extra:
                        assert np.array_equal(dist.master, over.master), (pieces, extra)
            if i == 0 and not one_host:
                check_grad_comm_bfloat16()
                check_param_comm_bfloat16()
    finally:
        distributed._PIPELINE_BYTES, distributed._PIPELINE_WINDOW = saved


def _exchange_mean(gs, dtype):
    """The mean grad as the direct exchange builds it: each shard's owner adds the other
    ranks' shards to its own in round order, then divides (bit for bit fastlr's)."""
    from fastlr.distributed import shard_bounds
    counts, displs = shard_bounds(gs[0].size, N)
    mean = np.empty(gs[0].size, dtype)
    for owner in range(N):
        lo, hi = displs[owner], displs[owner] + counts[owner]
        acc = gs[owner][lo:hi].copy()
        for k in range(1, N):
            acc = acc + gs[(owner - k) % N][lo:hi]
        mean[lo:hi] = acc / dtype(N)
    return mean


def check_param_comm_bfloat16():
    """param_comm="bfloat16": each rank's optimizer updates master weights bit for bit as
    one process stepping on the same mean grad updates its params; every rank's params are
    the masters rounded to bfloat16 (nearest even), identical on every rank; the masters
    come back from a per-rank state dict, and from a file onto other rank counts (and a
    checkpoint without them starts them at the params)."""
    from fastlr.distributed import from_bfloat16, to_bfloat16
    path = os.path.join(tempfile.gettempdir(), f"fastlr-mpi-p16-{os.getppid()}-{N}.npz")
    path = COMM.bcast(path, root=0)
    for dtype in (np.float32, np.float64):
        for cls, kw in (("AdamW", dict(lr=1e-2, weight_decay=0.1)),
                        ("SGD", dict(lr=0.05, momentum=0.9))):
            flat, dist = build(cls, dtype, param_comm="bfloat16", **kw)
            rflat, ref = reference(cls, dtype, **kw)
            for t in range(15):
                gs = rank_grads(t, flat.size, dtype)
                dist.step(gs[RANK].copy())
                ref.step(_exchange_mean(gs, dtype))
            lo, hi = dist.bounds
            assert np.array_equal(dist.master, rflat[lo:hi]), (cls, dtype)
            rounded = from_bfloat16(to_bfloat16(rflat)).astype(dtype)
            assert np.array_equal(flat, rounded), (cls, dtype)
            assert not np.array_equal(flat, rflat)          # the rounding did happen
            assert all(np.array_equal(f, flat) for f in COMM.allgather(flat))
            # a per-rank state dict restores the masters
            sd = dist.state_dict()
            f1, d1 = build(cls, dtype, param_comm="bfloat16", seed=5, **kw)
            d1.load_state_dict(sd)
            assert np.array_equal(d1.master, dist.master)
            # from a file onto 1 .. N ranks: the masters, then the same updates
            dist.save(path)
            saved = flat.copy()
            for t in range(15, 25):
                ref.step(mean_of(rank_grads(t, flat.size, dtype)))
            for size in sorted({1, max(1, N - 1), N}):
                sub = COMM.Split(0 if RANK < size else MPI.UNDEFINED, RANK)
                if sub != MPI.COMM_NULL:
                    f2, d2 = build(cls, dtype, comm=sub, seed=9, param_comm="bfloat16", **kw)
                    d2.load(path)       # the params become the masters' rounding
                    assert np.array_equal(f2, saved), (cls, dtype, size)
                    for t in range(15, 25):
                        d2.step(mean_of(rank_grads(t, flat.size, dtype)).copy())
                    full = d2.gathered_state_dict()
                    if sub.Get_rank() == 0:
                        master = np.concatenate([full["master"][k].reshape(-1)
                                                 for k in range(len(SHAPES))])
                        assert np.array_equal(
                            f2, from_bfloat16(to_bfloat16(master)).astype(dtype)), size
                        if dtype == np.float64:
                            assert rel(master, rflat) < 1e-12, (cls, size, rel(master, rflat))
                    sub.Free()
    # a checkpoint with masters into a run without them: a warning, the rest loads
    flat5, d5 = build("SGD", np.float64, lr=0.05, momentum=0.9)     # the file's last run
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        d5.load(path)
    assert any("master weights" in str(w.message) for w in caught), caught
    # a checkpoint without masters: they start at the params
    flat, dist = build("Adam", lr=1e-2)
    for t in range(3):
        dist.step(rank_grads(t, flat.size)[RANK])
    dist.save(path)
    f4, d4 = build("Adam", lr=1e-2, seed=4, param_comm="bfloat16")
    f4[:] = flat
    d4.load(path)
    lo, hi = d4.bounds
    assert np.array_equal(d4.master, flat[lo:hi])
    COMM.Barrier()
    if RANK == 0 and os.path.exists(path):
        os.unlink(path)
    try:
        build("Adam", lr=1e-3, param_comm="float16")
    except ValueError as e:
        assert "param_comm" in str(e)
    else:
        raise AssertionError("param_comm='float16' was accepted")


def _same_state(a, b):
    """Two gathered state dicts hold the same arrays and scalars, bit for bit."""
    if RANK != 0:
        return
    assert a["state"].keys() == b["state"].keys()
    for k in a["state"]:
        sa, sb = a["state"][k], b["state"][k]
        assert sa.keys() == sb.keys(), (sa.keys(), sb.keys())
        for n in sa:
            assert np.array_equal(sa[n], sb[n]), (k, n)
    for k in a.get("master", {}):
        assert np.array_equal(a["master"][k], b["master"][k]), k


def check_overlap():
    """overlap=True: the bucketed, overlapped exchange gives the bits of the plain one
    (every optimizer of the engine, clipping, 16-bit grads and params, bucket sizes that
    do and do not divide the shards, windows of the update between looks at the messages),
    loads its checkpoints both ways, and refuses a bad bucket size or ranks that disagree
    on every rank."""
    configs = CONFIGS + [("RAdam", dict(lr=0.01, decoupled_weight_decay=True,
                                        weight_decay=0.1)),
                         ("ASGD", dict(lr=0.01)), ("Adagrad", dict(lr=0.1)),
                         ("Adadelta", dict(lr=1.0)), ("Adamax", dict(lr=0.01)),
                         ("Rprop", dict(lr=0.01))]
    variants = [dict(), dict(max_grad_norm=0.5), dict(grad_comm="bfloat16"),
                dict(skip_nonfinite=True),
                dict(param_comm="bfloat16", max_grad_norm=0.5),
                dict(grad_comm="bfloat16", param_comm="bfloat16")]
    for i, (cls, kw) in enumerate(configs):
        for j, extra in enumerate(variants):
            if (i + j) % 2 and extra:       # every config plain, half of them per variant
                continue
            for bucket in (1, 3, 1000):
                flat, dist = build(cls, overlap=True, bucket_size=bucket, **extra, **kw)
                rflat, ref = build(cls, **extra, **kw)
                assert dist.n_buckets == -(-max(distributed.shard_bounds(32, N)[0]) // bucket)
                for t in range(12):
                    g = rank_grads(t, flat.size)[RANK]
                    dist.step(g.copy())
                    ref.step(g.copy())
                    assert np.array_equal(flat, rflat), (cls, extra, bucket, t)
                    if "max_grad_norm" in extra:
                        assert dist.last_grad_norm == ref.last_grad_norm
                if N > 1:
                    t = dist.timings
                    assert set(t) == {"check", "update", "exposed", "wait", "exchange"}
                    assert 0.0 <= t["exposed"] <= t["update"] <= t["exchange"], t
                    if bucket == 1000 and "max_grad_norm" not in extra:
                        # one bucket: no message is in flight while it is updated
                        assert t["exposed"] > 0.0, t
                _same_state(dist.gathered_state_dict(), ref.gathered_state_dict())
    # a larger float32 model in two groups: several buckets, each updated in several
    # windows (more than _PROGRESS_ELEMENTS elements), grads as a list of arrays
    shapes = [(7 * N, 100_000), (3,), (250_000,)]
    kw = dict(lr=1e-3, weight_decay=0.1)
    built = []
    for overlap in (True, False):
        flat, views = fastlr.flat_buffer(shapes, np.float32)
        flat[:] = np.random.default_rng(0).standard_normal(flat.size)
        groups = [{"params": views[:2]}, {"params": views[2:], "lr": 1e-2}]
        built.append((flat, distributed.ShardedOptimizer(
            "AdamW", groups, COMM, overlap=overlap, bucket_size=400_000, **kw)))
    (flat, dist), (rflat, ref) = built
    shard = distributed.shard_bounds(flat.size, N)[0][RANK]
    assert N == 1 or (dist.n_buckets >= 2 and shard // dist.n_buckets > (1 << 18))
    for t in range(3):
        g = rank_grads(t, flat.size, np.float32)[RANK]
        arrays, pos = [], 0
        for shape in shapes:
            arrays.append(g[pos:pos + int(np.prod(shape))].reshape(shape).copy())
            pos += arrays[-1].size
        dist.step(arrays)
        ref.step(g)
    assert np.array_equal(flat, rflat)
    # checkpoints: an overlapped optimizer's file resumes a plain one and back, and a single
    # process (ASGD: a per-param scalar state besides the arrays)
    for cls in ("Adam", "ASGD"):
        with tempfile.TemporaryDirectory() as d:
            path = COMM.bcast(os.path.join(d, "overlap.npz") if RANK == 0 else None)
            flat, dist = build(cls, overlap=True, bucket_size=2, lr=1e-2)
            rflat, ref = build(cls, lr=1e-2)
            sflat, single = reference(cls, lr=1e-2)
            for t in range(5):
                gs = rank_grads(t, flat.size)
                dist.step(gs[RANK])
                ref.step(gs[RANK])
                single.step(_exchange_mean(gs, np.float64))
            dist.save(path)
            flat2, plain = build(cls, lr=1e-2)
            flat2[:] = flat
            plain.load(path)
            flat3, again = build(cls, overlap=True, bucket_size=5, lr=1e-2)
            flat3[:] = flat
            again.load(path)
            s4, one = reference(cls, lr=1e-2)
            s4[:] = flat
            one.load(path)
            COMM.Barrier()
        for t in range(5, 9):
            gs = rank_grads(t, flat.size)
            for o in (ref, plain, again):
                o.step(gs[RANK])
            for o in (single, one):
                o.step(_exchange_mean(gs, np.float64))
        assert np.array_equal(flat2, rflat) and np.array_equal(flat3, rflat), cls
        assert np.array_equal(s4, sflat) and np.array_equal(sflat, rflat), cls
    # ranks must agree on the buckets
    _raises_everywhere(lambda: build("Adam", overlap=True, bucket_size=0, lr=1e-3),
                       "bucket_size")
    if N > 1:
        _raises_everywhere(lambda: build("Adam", overlap=RANK == 0, lr=1e-3), "rank")
        _raises_everywhere(lambda: build("Adam", overlap=True, bucket_size=2 + RANK,
                                         lr=1e-3), "rank")


def check_zero_size_param_state():
    """A zero-size param (no rank holds it) has, in the gathered state, what one process
    gives it: its group's step, scalar state and empty buffers; it loads into one process
    (ASGD's eta and NAdam's mu_product are per-param scalars)."""
    shapes = [(3,), (0,), (4,)]
    for cls in ("ASGD", "NAdam", "Adam"):
        flat, dist = build(cls, shapes=shapes, lr=1e-2)
        sflat, single = reference(cls, shapes=shapes, lr=1e-2)
        for t in range(3):
            gs = rank_grads(t, flat.size)
            dist.step(gs[RANK])
            single.step(_exchange_mean(gs, np.float64))
        sd = dist.gathered_state_dict()
        if RANK == 0:
            want = single.state_dict()["state"][1]
            got = sd["state"][1]
            assert got.keys() == want.keys(), (cls, got.keys(), want.keys())
            for n in want:
                assert np.array_equal(got[n], want[n]), (cls, n, got[n], want[n])
            s2, one = reference(cls, shapes=shapes, lr=1e-2)
            one.load_state_dict(sd)
        assert np.array_equal(flat, sflat)


def _own_or_named(fn, failing, own_type, match):
    """fn() raises on every rank: on the ranks in ``failing`` ``own_type`` with ``match``,
    on the others a ValueError naming the failing ranks."""
    try:
        fn()
    except Exception as error:         # noqa: BLE001 (the type is the check)
        if RANK in failing:
            assert type(error) is own_type and match in str(error), repr(error)
        else:
            assert type(error) is ValueError, repr(error)
            assert f"rank(s) {sorted(failing)} failed" in str(error), str(error)
            assert match in str(error), str(error)
        return
    raise AssertionError(f"rank {RANK}: nothing raised ({match})")


def check_construction_errors_on_one_rank():
    """An invalid hyperparameter, a misspelled keyword or argument on one rank: every rank
    raises (that rank its own error, the others one naming it), none waits in the
    construction's collectives; optimizers a shard cannot run are refused up front."""
    last = N - 1
    with _no_hang():
        _own_or_named(lambda: build("Adam", lr=-1.0 if RANK == last else 1e-3, timeout=30),
                      [last], ValueError, "lr must be >= 0")
        _own_or_named(lambda: build("Adam", timeout=30, **({"lrr": 1e-3} if RANK == 0 else
                                                           {"lr": 1e-3})),
                      [0], TypeError, "unexpected keyword argument 'lrr'")
        _own_or_named(lambda: build("Adam" if RANK else "Adamm", lr=1e-3, timeout=30),
                      [0], TypeError, "optimizer must be a fastlr optimizer class")
        _own_or_named(lambda: build("Adam", lr=1e-3, timeout=30,
                                    grad_comm="float16" if RANK == last else None),
                      [last], ValueError, "grad_comm")
        _own_or_named(lambda: build("SparseAdam", lr=1e-3, timeout=30), list(range(N)),
                      ValueError, "optimizer must be one of SGD, Adam")

        def bad_group():        # params of the wrong type on one rank: its own TypeError
            flat, views = fastlr.flat_buffer(SHAPES, np.float64)
            return distributed.ShardedOptimizer(
                "Adam", [{"no params": views}] if RANK == last else views, lr=1e-3,
                timeout=30)
        _own_or_named(bad_group, [last], TypeError, "a param group must be a dict")
        flat, dist = build("Adam", lr=1e-3, timeout=30)     # and the world is still usable
        dist.step(rank_grads(0, flat.size)[RANK])
        assert dist.steps == 1


def check_grad_forms_mixed():
    """The documented forms of grads may differ between ranks (flat, a list, a strided flat
    view, a tuple): the same step as every rank passing its flat buffer."""
    forms = ["flat", "list", "strided", "tuple"]
    for shift in range(len(forms)):
        flat, dist = build("Adam", lr=1e-2, timeout=30)
        rflat, ref = reference("Adam", lr=1e-2)
        for t in range(3):
            gs = rank_grads(t, flat.size)
            g = gs[RANK].copy()
            form = forms[(RANK + shift + t) % len(forms)]
            if form == "strided":
                wide = np.zeros(2 * g.size)
                wide[::2] = g
                g = wide[::2]
            elif form in ("list", "tuple"):
                parts = np.split(g, np.cumsum([int(np.prod(s)) for s in SHAPES])[:-1])
                g = [a.reshape(s).copy() for a, s in zip(parts, SHAPES)]
                g = tuple(g) if form == "tuple" else g
            dist.step(g)
            ref.step(mean_of(gs))
        assert rel(flat, rflat) < 1e-12, (shift, rel(flat, rflat))


def check_save_error_everywhere():
    """save() to a path the root rank cannot write: every rank raises OSError (the root
    its own), none waits for it; the next step runs."""
    flat, dist = build("Adam", lr=1e-3, timeout=30)
    dist.step(rank_grads(0, flat.size)[RANK])
    path = os.path.join(tempfile.gettempdir(), f"fastlr-no-such-dir-{os.getppid()}", "x.npz")
    with _no_hang():
        for root in sorted({0, N - 1}):
            try:
                dist.save(path, root=root)
            except OSError as error:
                if RANK == root:
                    assert isinstance(error, FileNotFoundError), repr(error)
                else:
                    assert f"rank {root} could not write" in str(error), str(error)
            else:
                raise AssertionError(f"rank {RANK}: save to {path} did not raise")
        dist.step(rank_grads(1, flat.size)[RANK])
    assert dist.steps == 2


def check_load_fits_every_rank_or_none():
    """A gathered state loads on every rank or on none. A valid one-process checkpoint whose
    groups differ in options (amsgrad in one) loads on ranks that hold no element of a
    group; a damaged one (a buffer deleted) raises on every rank and leaves every rank's
    state, params and masters as they were (also with param_comm, whose load ends in a
    collective)."""
    shapes = [(4,), (1,)]
    for opts in ([{}, {"amsgrad": True}], [{"amsgrad": True}, {}]):
        def model(views):
            return [dict(params=[v], **o) for v, o in zip(views, opts)]
        sflat, sviews = fastlr.flat_buffer(shapes, np.float64)
        single = fastlr.Adam(model(sviews), lr=0.1)
        single.step(np.arange(1.0, 6.0))
        flat, views = fastlr.flat_buffer(shapes, np.float64)
        flat[:] = sflat
        dist = distributed.ShardedOptimizer("Adam", model(views), lr=0.1, timeout=30)
        try:
            dist.load_gathered_state_dict(single.state_dict())
            error = None
        except ValueError as e:
            error = str(e)
        assert COMM.allreduce(error is None, op=MPI.LAND), (opts, RANK, dist.bounds, error)
        dist.step(np.full(5, 0.5))
        single.step(np.full(5, 0.5))
        assert np.array_equal(flat, sflat), (opts, flat, sflat)
    for param_comm in (None, "bfloat16"):
        sflat, sviews = fastlr.flat_buffer([(4,), (4,)], np.float64)
        single = fastlr.Adam(sviews, lr=0.1)
        plateau = fastlr.ReduceLROnPlateau(single)
        single.step(np.ones(8))
        plateau.step(1.0)
        damaged = single.state_dict()           # with a plateau state (kept pending by a
        assert "plateau" in damaged             # load without a scheduler attached)
        del damaged["state"][1]["exp_avg_sq"]
        flat, views = fastlr.flat_buffer([(4,), (4,)], np.float64)
        dist = distributed.ShardedOptimizer("Adam", views, lr=0.1, timeout=30,
                                            param_comm=param_comm)
        for t in range(2):
            dist.step(rank_grads(t, flat.size)[RANK])
        before = dist.optimizer.state_dict()
        used = dist.optimizer._used.copy()
        saved = flat.copy()
        master = None if dist.master is None else dist.master.copy()
        with _no_hang():
            try:
                dist.load_gathered_state_dict(damaged)
                raised = False
            except ValueError:
                raised = True
            # every rank raised, or the check fails here (before any further collective)
            assert COMM.allreduce(raised, op=MPI.LAND), (param_comm, RANK, raised)
        after = dist.optimizer.state_dict()
        assert after["steps"] == before["steps"] == 2 and dist.steps == 2
        for j, st in before["state"].items():
            assert st.keys() == after["state"][j].keys(), (j, st.keys())
            for n in st:
                assert np.array_equal(st[n], after["state"][j][n]), (param_comm, j, n)
        assert np.array_equal(flat, saved)
        assert master is None or np.array_equal(dist.master, master)
        # the ranks that had loaded put back what their state dict does not hold too
        assert dist.optimizer._pending_plateau is None, RANK
        assert np.array_equal(dist.optimizer._used, used, equal_nan=True), RANK
        with _no_hang():
            dist.step(rank_grads(2, flat.size)[RANK])       # nobody is stuck
        assert dist.steps == 3


def check_close():
    """close() frees the communicator the optimizer duplicated (collective, idempotent); a
    ``with`` block closes it, also when an exception leaves the block; after close every
    collective method raises on every rank, naming the closed optimizer. Building and
    closing 500 optimizers keeps the slots of the MPI communicator table (the Fortran
    handles) in place, where optimizers left open take one more each (Open MPI has about
    65500 communicators, so a sweep without close runs out)."""
    path = COMM.bcast(os.path.join(tempfile.gettempdir(), f"fastlr-close-{os.getppid()}.npz"))
    with _no_hang():
        flat, dist = build("Adam", lr=1e-3, timeout=30)
        g = rank_grads(0, flat.size)[RANK]
        dist.step(g)
        dist.save(path)
        sd, gathered, before = dist.state_dict(), dist.gathered_state_dict(), flat.copy()
        wire = dist._wire
        dist.close()
        assert wire == MPI.COMM_NULL and dist.closed
        dist.close()                                # again: nothing
        for call in (lambda: dist.step(g), lambda: dist.save(path),
                     lambda: dist.load(path), lambda: dist.gathered_state_dict(),
                     lambda: dist.load_gathered_state_dict(gathered, root=0),
                     lambda: dist.load_state_dict(sd)):
            try:
                call()
                raised = False
            except ValueError as error:
                assert "the optimizer is closed" in str(error), str(error)
                raised = True
            assert COMM.allreduce(raised, op=MPI.LAND), RANK
        assert np.array_equal(flat, before) and dist.steps == 1
        assert dist.state_dict()["optimizer"]["steps"] == 1      # still readable
        # with: closed at the end of the block, and when an exception leaves it
        flat, views = fastlr.flat_buffer(SHAPES, np.float64)
        with distributed.ShardedOptimizer("SGD", views, lr=0.1, timeout=30) as opt:
            opt.step(rank_grads(1, flat.size)[RANK])
        assert opt.closed and opt._wire == MPI.COMM_NULL
        try:
            with distributed.ShardedOptimizer("SGD", views, lr=0.1, timeout=30) as opt:
                raise KeyError("inside")
        except KeyError:
            pass
        assert opt.closed and opt._wire == MPI.COMM_NULL
        # left open, each optimizer holds a communicator of its own
        kept = [build("SGD", lr=0.1, timeout=30)[1] for _ in range(20)]
        assert len({o._wire.py2f() for o in kept}) == 20
        for o in kept:
            o.close()
    # closed, the same few slots are reused (about 2 ms an optimizer on one host; more
    # between the test bed's hosts)
    with _no_hang(300):
        handles = set()
        for _ in range(500):
            with distributed.ShardedOptimizer("SGD", views, lr=0.1, timeout=30) as opt:
                handles.add(opt._wire.py2f())
        assert len(handles) <= 3, sorted(handles)
    with _no_hang():
        opt = build("Adam", lr=1e-3, timeout=30)[1]     # the world is still usable
        opt.step(rank_grads(2, flat.size)[RANK])
        opt.close()
    COMM.Barrier()
    if RANK == 0 and os.path.exists(path):
        os.unlink(path)


def _differ_everywhere(fn, *parts):
    """fn() raises a ValueError on every rank, whose message holds every one of parts."""
    try:
        fn()
    except ValueError as error:
        for part in parts:
            assert part in str(error), (part, str(error))
        return
    raise AssertionError(f"rank {RANK}: nothing raised ({parts})")


def check_hyperparameters_agree():
    """The shard optimizers' settings are compared across ranks at construction (floats
    exactly, schedules by their repr): one that differs on a rank raises a ValueError on
    every rank naming the setting, its group and the ranks. The same settings spelled
    otherwise (a list for a tuple, a schedule built on each rank, a Python function whose
    address differs) agree."""
    if N == 1:
        return
    last = N - 1
    odd = RANK == last
    others = list(range(N - 1))
    where = f"rank(s) {others}"
    with _no_hang():
        _differ_everywhere(lambda: build("Adam", lr=2e-3 if odd else 1e-3, timeout=30),
                           "param_groups[0]['lr']", where, f"rank(s) [{last}]",
                           "0.001", "0.002")
        # floats exactly: one ulp apart
        lr = np.nextafter(1e-3, 1.0) if odd else 1e-3
        _differ_everywhere(lambda: build("Adam", lr=lr, timeout=30), "param_groups[0]['lr']",
                           f"rank(s) [{last}]")
        _differ_everywhere(lambda: build("AdamW", betas=(0.9, 0.99 if odd else 0.999),
                                         timeout=30),
                           "param_groups[0]['betas']", f"rank(s) [{last}]")
        _differ_everywhere(lambda: build("SGD", lr=schedules.cosine(0.1, 40 + odd),
                                         timeout=30),
                           "param_groups[0]['lr']", "cosine(0.1, 41)", "cosine(0.1, 40)")

        def grouped(wd):
            flat, views = fastlr.flat_buffer(SHAPES)
            return distributed.ShardedOptimizer(
                "AdamW", [{"params": views[:2]}, {"params": views[2:], "weight_decay": wd}],
                lr=1e-3, timeout=30)
        _differ_everywhere(lambda: grouped(0.2 if odd else 0.1),
                           "param_groups[1]['weight_decay']", f"rank(s) [{last}]")
        _differ_everywhere(lambda: build("Adam", lr=1e-3, max_grad_norm=2.0 if odd else 1.0,
                                         timeout=30), "max_grad_norm", f"rank(s) [{last}]")
        _differ_everywhere(lambda: build("Adam", lr=1e-3, skip_nonfinite=odd, timeout=30),
                           "skip_nonfinite", f"rank(s) [{last}]")
        _differ_everywhere(lambda: build("Adam", np.float32, lr=1e-3, timeout=30, state_dtype=(
            "bfloat16" if odd else "float32")), "state_dtype", f"rank(s) [{last}]")
        # the same settings, spelled otherwise on some ranks
        build("Adam", betas=[0.9, 0.999] if odd else (0.9, 0.999), lr=1 if odd else 1.0,
              timeout=30)[1].close()
        build("SGD", lr=schedules.warmup_cosine(0.1, warmup_steps=5, total_steps=40),
              timeout=30)[1].close()
        fn = (lambda step: 0.1) if odd else (lambda step: 0.1)    # two objects
        build("SGD", lr=schedules.from_callable(fn), timeout=30)[1].close()
        # settings each rank may choose for itself
        build("Adam", lr=1e-3, timeout=30 + RANK, n_threads=1 + RANK % 2)[1].close()


def _hangs_nowhere(fn, failing, own_type, match):
    """fn() raises on every rank within the guard's time: on the ranks in ``failing`` its
    own error, on the others one naming them; then a step runs on every rank."""
    with _no_hang(30):
        _own_or_named(fn, failing, own_type, match)


def check_checkpoint_errors_on_one_rank():
    """save, load, gathered_state_dict and load_gathered_state_dict with an argument that
    is wrong on one rank only (a root out of range or of the wrong type, a strict that is
    not a flag, a state that cannot be pickled, different roots): every rank raises (that
    rank its own error, the others one naming it), nothing is loaded, and the next step
    runs on every rank (none waits in the call's collectives)."""
    path = COMM.bcast(os.path.join(tempfile.gettempdir(), f"fastlr-args-{os.getppid()}.npz"))
    last = N - 1
    flat, dist = build("Adam", lr=1e-2, timeout=30)
    dist.step(rank_grads(0, flat.size)[RANK])
    with _no_hang(30):
        dist.save(path)
        gathered = dist.gathered_state_dict()
    before, state = flat.copy(), dist.state_dict()
    _hangs_nowhere(lambda: dist.save(path, root=N if RANK == last else 0), [last],
                   ValueError, "root")
    _hangs_nowhere(lambda: dist.save(path, root="0" if RANK == last else 0), [last],
                   TypeError, "root")
    _hangs_nowhere(lambda: dist.gathered_state_dict(root=-1 if RANK == last else 0), [last],
                   ValueError, "root")
    _hangs_nowhere(lambda: dist.load(path, strict="yes" if RANK == last else True), [last],
                   TypeError, "strict")
    _hangs_nowhere(lambda: dist.load(path if RANK != last else path + ".missing"), [last],
                   ValueError, "not a readable")
    _hangs_nowhere(lambda: dist.load_gathered_state_dict(gathered if RANK == 0 else None,
                                                         root=0,
                                                         strict=None if RANK == last else True),
                   [last], TypeError, "strict")
    if N > 1:
        # the root of a broadcast state cannot pickle it
        unpicklable = dict(gathered or {}, extra=lambda: None)
        _hangs_nowhere(lambda: dist.load_gathered_state_dict(
            unpicklable if RANK == 0 else None, root=0), [0], TypeError, "pickle")
        # the ranks disagree on the root (or on whether there is one)
        with _no_hang(30):
            _differ_everywhere(lambda: dist.save(path, root=RANK), "root")
            _differ_everywhere(lambda: dist.gathered_state_dict(root=RANK), "root")
            _differ_everywhere(lambda: dist.load_gathered_state_dict(
                gathered, root=0 if RANK == 0 else None), "root")
    assert np.array_equal(flat, before) and dist.steps == 1
    after = dist.state_dict()
    for j, st in state["optimizer"]["state"].items():
        for n in st:
            assert np.array_equal(st[n], after["optimizer"]["state"][j][n]), (j, n)
    with _no_hang(30):
        dist.step(rank_grads(1, flat.size)[RANK])       # nobody is stuck
    assert dist.steps == 2
    COMM.Barrier()
    if RANK == 0 and os.path.exists(path):
        os.unlink(path)


CHECKS = [check_hosts, check_overlap, check_zero_size_param_state, check_parity,
          check_grad_comm_bfloat16, check_param_comm_bfloat16, check_pipelined_pieces,
          check_state_memory, check_params_broadcast_and_identical,
          check_resume_same_ranks, check_resume_other_rank_counts, check_misuse,
          check_skip_nonfinite, check_tiny_model, check_construction_errors_on_one_rank,
          check_grad_forms_mixed, check_save_error_everywhere,
          check_load_fits_every_rank_or_none, check_close, check_hyperparameters_agree,
          check_checkpoint_errors_on_one_rank]


def main():
    failures = 0
    wanted = sys.argv[1:]
    checks = [c for c in CHECKS if not wanted or c.__name__ in wanted]
    deadline = float(os.environ.get("FASTLR_CHECK_DEADLINE", "0"))
    if deadline > 0:
        global DEADLINE_AT
        DEADLINE_AT = time.monotonic() + deadline
        faulthandler.dump_traceback_later(deadline, exit=True)
    for check in checks:
        if RANK == 0:
            print(f"running {check.__name__}", flush=True)
        error = None
        try:
            check()
        except Exception:
            error = traceback.format_exc()
        failed = COMM.allreduce(int(error is not None), op=MPI.SUM)
        if error is not None:
            print(f"rank {RANK}: FAILED {check.__name__}\n{error}", flush=True)
        elif failed and RANK == 0:
            print(f"FAILED {check.__name__} (on another rank)", flush=True)
        failures += bool(failed)
    if RANK == 0:
        print(f"PASSED {len(checks) - failures} FAILED {failures} ranks {N}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

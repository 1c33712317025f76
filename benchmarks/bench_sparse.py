"""Row-sparse grads: one step on an embedding table of 1M x 64 float32 with 1% of its rows
touched.

The grad names 10,000 rows drawn at random (repeats included, as an embedding batch gives;
about 9,950 distinct rows). Three steps on the same table, the grads built beforehand:

* ``sparse``: ``fastlr.SparseAdam.step`` with a :class:`fastlr.RowSparseGrad` (reads and
  writes the touched rows of the param and its two moments: about 10K x 64 x 3 elements);
* ``dense``: ``fastlr.Adam.step`` with the same grad as a dense 1M x 64 array (every
  element of param, grad and two moments: 64M x 28 bytes), fastlr's default threads;
* ``torch``: ``torch.optim.SparseAdam.step`` with the grad as a sparse COO tensor
  (``torch.set_num_threads(1)``; skipped when torch is not installed);
* ``sgd_lazy``, ``adagrad_lazy``, ``adam_lazy``: ``fastlr.SGD`` / ``Adagrad`` / ``Adam``
  ``.step`` with the RowSparseGrad (their lazy updates; Adam's is SparseAdam's rule).

``TimeSparseStep``: absolute times. ``TrackSparseSpeedup``: ``dense`` time / ``sparse``
time (the issue's target: >= 20) and ``torch`` time / ``sparse`` time, interleaved in one
process, best of several samples each. Run directly (``python benchmarks/bench_sparse.py``)
it prints both ratios and the times.
"""

import time

import numpy as np

from .common import n_samples, optional

N_ROWS, N_COLS, TOUCHED = 1_000_000, 64, 10_000


def _data(dtype=np.float32):
    rng = np.random.default_rng(0)
    table = (rng.standard_normal((N_ROWS, N_COLS), dtype=np.float32) * 0.01).astype(dtype)
    idx = rng.integers(0, N_ROWS, TOUCHED)
    rows = rng.standard_normal((TOUCHED, N_COLS), dtype=np.float32).astype(dtype)
    return table, idx, rows


def step_fn(impl, table, idx, rows):
    """A zero-argument callable running one step of ``impl`` on ``table``."""
    import fastlr

    if impl == "sparse":
        opt = fastlr.SparseAdam([table], lr=1e-3)
        grads = [fastlr.RowSparseGrad(idx, rows)]
        return lambda: opt.step(grads)
    if impl.endswith("_lazy"):
        cls = {"sgd": fastlr.SGD, "adagrad": fastlr.Adagrad, "adam": fastlr.Adam}[impl[:-5]]
        opt = cls([table], lr=1e-3)
        grads = [fastlr.RowSparseGrad(idx, rows)]
        return lambda: opt.step(grads)
    if impl == "dense":
        opt = fastlr.Adam([table], lr=1e-3)
        dense = fastlr.RowSparseGrad(idx, rows).to_dense(N_ROWS)
        return lambda: opt.step([dense])
    torch = optional("torch")
    t = torch.from_numpy(table)
    opt = torch.optim.SparseAdam([t], lr=1e-3)
    t.grad = torch.sparse_coo_tensor(torch.from_numpy(idx)[None], torch.from_numpy(rows),
                                     table.shape, check_invariants=True)
    return opt.step


class TimeSparseStep:
    params = (["sparse", "dense", "torch", "sgd_lazy", "adagrad_lazy", "adam_lazy"],)
    param_names = ["impl"]
    timeout = 300

    def setup(self, impl):
        table, idx, rows = _data()
        self.step = step_fn(impl, table, idx, rows)
        self.step()         # warm up: state allocated, pages touched

    def time_step(self, impl):
        self.step()


def speedup(samples=7):
    """(dense / sparse, torch / sparse or None, best times in seconds) from interleaved
    samples on one table."""
    table, idx, rows = _data()
    impls = ["sparse", "dense", "torch"]
    steps = {}
    for impl in impls:
        try:
            steps[impl] = step_fn(impl, table, idx, rows)
        except NotImplementedError:
            pass
    best = {impl: float("inf") for impl in steps}
    for impl, step in steps.items():
        step()
    for _ in range(n_samples(samples)):
        for impl, step in steps.items():
            start = time.perf_counter()
            step()
            best[impl] = min(best[impl], time.perf_counter() - start)
    vs_torch = best["torch"] / best["sparse"] if "torch" in best else None
    return best["dense"] / best["sparse"], vs_torch, best


class TrackSparseSpeedup:
    params = (["dense", "torch"],)
    param_names = ["versus"]
    unit = "other step's time / fastlr.SparseAdam step's time"
    timeout = 600

    def setup(self, versus):
        if versus == "torch":
            optional("torch")

    def track_speedup(self, versus):
        dense, vs_torch, _ = speedup()
        return round(dense if versus == "dense" else vs_torch, 1)


if __name__ == "__main__":
    dense, vs_torch, best = speedup()
    print("1M x 64 float32 table, 10K rows touched (1%); best of 7, seconds:",
          {k: round(v, 5) for k, v in best.items()})
    print(f"dense fastlr.Adam / fastlr.SparseAdam: {dense:.1f}x")
    if vs_torch is not None:
        print(f"torch.optim.SparseAdam / fastlr.SparseAdam: {vs_torch:.1f}x")

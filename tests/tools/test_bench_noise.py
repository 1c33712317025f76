"""``fastlr bench`` says when its rows measured the machine's noise: rows above 100% of the
roofline and multi-thread rows far slower than 1 thread (fed synthetic rows)."""

from fastlr._tools import bench


def row(threads=1, t_fast=1e-4, t_roof=5e-5, n=1 << 20, optimizer="adam", dtype="float32"):
    return {"optimizer": optimizer, "dtype": dtype, "n": n, "threads": threads,
            "time_s": {"fastlr": t_fast}, "roofline_time_s": t_roof,
            "roofline_fraction": t_roof / t_fast}


def test_sound_rows_have_no_note():
    rows = [row(1, 1e-4, 5e-5), row(2, 0.6e-4, 3e-5), row(1, 1e-4, 1e-4, n=1024)]  # 100%: ok
    assert bench.noise_notes(rows) == []


def test_rows_above_the_roofline_are_noise():
    rows = [row(1, 1e-4, 5e-5), row(1, 1e-4, 1.3e-4, n=1024, optimizer="sgd")]
    notes = bench.noise_notes(rows)
    assert len(notes) == 1
    assert "1 row above 100% of the roofline" in notes[0]
    assert "sgd float32 1K 1 thr: 130%" in notes[0] and "noise" in notes[0]


def test_multi_thread_rows_far_below_one_thread_are_noise():
    rows = [row(1, 1e-4, 5e-5), row(2, 2.5e-4, 3e-5),                  # fastlr 0.40x
            row(1, 1e-4, 5e-5, dtype="float64"), row(2, 1.2e-4, 1.1e-4, dtype="float64"),
            row(1, 1e-4, 5e-5, n=4096), row(2, 1.9e-4, 5e-5, n=4096)]  # 0.53x: not flagged
    notes = bench.noise_notes(rows)
    assert len(notes) == 1
    assert "2 multi-thread rows below 0.5x the speed of 1 thread" in notes[0]
    assert "(worst adam float32 1M 2 thr: 0.40x)" in notes[0]  # float64 counts: roofline 0.45x
    assert "busy" in notes[0]


def test_a_multi_thread_row_without_its_one_thread_row_is_not_judged():
    assert bench.noise_notes([row(2, 1.0, 5e-5)]) == []


def test_the_report_carries_the_notes():
    rows = [dict(r, title="Adam", pattern="p", bytes_per_element=28, numpy_baseline=True,
                 torch_mode=None, speedup={"reference": 2.0, "numpy": 1.5, "torch": None},
                 gbps=10.0, roofline_gbps=5.0)
            for r in (row(1, 1e-4, 1.5e-4), row(4, 1e-3, 5e-5))]
    for r in rows:
        r["time_s"].update(reference=2e-4, numpy=1.5e-4, torch=None)
    results = {"rows": rows, "elapsed_s": 1.0,
               "config": {"repeat": 3, "layout": "staggered"},
               "machine": {"cpu": "test cpu", "usable_cores": 4, "cores": 4,
                           "python": "3", "numpy": "2", "torch": None, "fastlr": "0",
                           "cpu_target": "baseline", "openmp": True}}
    text = bench.format_report(results)
    assert "above 100% of the roofline" in text
    assert "multi-thread row below 0.5x the speed of 1 thread" in text
    assert text.rstrip().endswith("2 rows in 1.0 s")

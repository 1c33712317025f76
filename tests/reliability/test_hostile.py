"""The hostile-input suite (tests/reliability/hostile.py): several thousand invalid inputs to the public
API, each run in a child process so that a crash is caught and named. Every input must
raise TypeError/ValueError naming the argument (or be a documented acceptance), leave every
buffer bit-identical, and never crash."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import hostile  # noqa: E402


@pytest.fixture(scope="module")
def outcome():
    cases, results = hostile.run_all()
    text, counts, failures = hostile.report(cases, results, verbose=True)
    return cases, counts, failures, text


def test_enough_inputs(outcome):
    cases, counts, failures, text = outcome
    assert len(cases) >= 1000


def test_no_crash_or_hang(outcome):
    cases, counts, failures, text = outcome
    crashes = [f for f in failures if f[1] in ("crash", "crash_in_batch", "hang")]
    assert not crashes, "\n".join(f"[{o}] {n}: {d[:400]}" for n, o, d in crashes)


def test_no_buffer_touched_on_error(outcome):
    cases, counts, failures, text = outcome
    touched = [f for f in failures if f[1] == "touched"]
    assert not touched, "\n".join(f"{n}: {d[:300]}" for n, o, d in touched)


def test_every_input_handled_or_documented(outcome):
    cases, counts, failures, text = outcome
    assert not failures, (f"{len(failures)} hostile inputs not handled:\n" +
                          "\n".join(f"  [{o}] {n}: {d[:300]}" for n, o, d in failures[:80]))
    assert counts["handled"] + counts["accepted"] == len(cases)


def test_driver_names_a_crashing_case(monkeypatch):
    """The driver itself: a case that segfaults its child is reported as a crash, by name,
    and the cases after it in the batch still run."""
    monkeypatch.setenv("FASTLR_HOSTILE_SELFTEST", "1")
    cases, results = hostile.run_all(timeout=60)
    outcomes = {c.name: results[i]["outcome"] for i, c in enumerate(cases)}
    assert outcomes == {"selftest: before": "handled", "selftest: segfault": "crash",
                        "selftest: after": "handled"}
    assert "SIGSEGV" in results[1]["detail"]

"""fastlr.distributed across hosts: ranks in separate network namespaces of this machine,
joined by a switch over rate-shaped links, talking TCP only (tests/distributed/netns_hosts.py).

Opt-in (FASTLR_NETNS_TESTS=1): a 3-host run hung once in about twenty, cause not
established. Skipped cleanly where a test bed cannot be built (not root, no network
namespaces, no mpirun); FASTLR_REQUIRE_NETNS=1 turns that skip into a failure.
"""

import os
import subprocess
import sys
import tempfile

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import netns_hosts  # noqa: E402
from test_distributed import _mpi_missing, mpi_env  # noqa: E402


def _bed_missing():
    if os.environ.get("FASTLR_NETNS_TESTS") != "1":
        # opt-in: in CI's clean clone a 3-host mpirun (Open MPI 4.1.4) hung once in about
        # twenty runs, cause not established; a hung suite would block every change
        return "multi-host tests are opt-in: set FASTLR_NETNS_TESTS=1 (root, Linux)"
    reason = _mpi_missing() or netns_hosts.probe()
    if reason and os.environ.get("FASTLR_REQUIRE_NETNS") == "1":
        pytest.fail(f"FASTLR_REQUIRE_NETNS=1 but {reason}")
    return reason


def _env(n_hosts, deadline=None):
    env = mpi_env(FASTLR_EXPECT_HOSTS=str(n_hosts))
    if deadline:
        # past it every rank prints its stacks and exits (mpi_checks.py): a hang says where
        env["FASTLR_CHECK_DEADLINE"] = str(deadline)
    return env


def _run(bed, command, timeout, **kwargs):
    """bed.run, with the output so far in the failure when it times out."""
    try:
        return bed.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)
    except subprocess.TimeoutExpired as exc:
        out = "".join(o.decode(errors="replace") if isinstance(o, bytes) else (o or "")
                      for o in (exc.stdout, exc.stderr))
        pytest.fail(f"mpirun across hosts ran past {timeout} s; its output:\n{out[-6000:]}")


@pytest.mark.parametrize("n_hosts, rate, ranks_per_host", [
    (2, "10gbit", 1),
    (3, "1gbit", 1),
    (2, "1gbit", 2),
])
def test_distributed_checks_across_hosts(n_hosts, rate, ranks_per_host):
    """Every check of mpi_checks.py (parity with one process, checkpoints resumed on other
    rank counts, misuse, non-finite skips) with the ranks on separate hosts; check_hosts
    asserts they really sat in n_hosts network namespaces."""
    missing = _bed_missing()
    if missing:
        pytest.skip(missing)
    with netns_hosts.NetnsHosts(n_hosts, rate) as bed, tempfile.TemporaryDirectory() as cwd:
        assert f"rate {rate.replace('gbit', 'Gbit')}" in bed.qdisc(n_hosts - 1)
        result = _run(bed, [sys.executable, os.path.join(HERE, "mpi_checks.py")], 600,
                      ranks_per_host=ranks_per_host, env=_env(n_hosts, deadline=540), cwd=cwd)
    out = result.stdout + result.stderr
    n = n_hosts * ranks_per_host
    assert result.returncode == 0, out[-6000:]
    assert f"FAILED 0 ranks {n}" in out, out[-6000:]


def test_test_bed_is_removed_and_leaves_the_root_namespace_alone():
    missing = _bed_missing()
    if missing:
        pytest.skip(missing)
    root_links = netns_hosts._ip("link", "show").stdout
    with netns_hosts.NetnsHosts(2, "1gbit") as bed:
        names = [*bed.hosts, bed.switch]
        assert set(names) <= set(netns_hosts._namespaces())
        assert "tbf" in bed.qdisc(1) and "1Gbit" in bed.qdisc(1)
        assert netns_hosts._ip("link", "show").stdout == root_links
    assert not set(names) & set(netns_hosts._namespaces())


def test_killed_rank_ends_the_job_across_hosts():
    """SIGKILL to rank 1 on host 1 (tests/distributed/mpi_faults.py): the job ends on every
    host within the bound, and the launcher names the rank."""
    missing = _bed_missing()
    if missing:
        pytest.skip(missing)
    import time
    with netns_hosts.NetnsHosts(3, "1gbit") as bed, tempfile.TemporaryDirectory() as d:
        t0 = time.monotonic()
        result = bed.run([sys.executable, os.path.join(HERE, "mpi_faults.py"), "kill", d,
                          "--fail-after", "3"], env=_env(3), cwd=d, capture_output=True,
                         text=True, timeout=300)
        elapsed = time.monotonic() - t0
        out = result.stdout + result.stderr
        assert result.returncode != 0, out[-4000:]
        assert elapsed < 60, (elapsed, out[-4000:])
        assert "rank 1" in out and "signal 9" in out, out[-4000:]
        assert not os.path.exists(os.path.join(d, "final.npy"))
        leftovers = [ns for ns in bed.hosts
                     if netns_hosts._ip("netns", "pids", ns, check=False).stdout.strip()]
        assert not leftovers, leftovers

"""Several "hosts" on this machine for MPI over TCP: Linux network namespaces behind a switch.

Layout of a test bed of n hosts (every name carries the tag ``flnsP<pid>`` of the process that
built it, so runs never collide and a dead run's leftovers can be found and removed)::

    namespace <tag>-sw      a bridge "br0" (the switch) and one port per host
    namespace <tag>-h<i>    "eth0" at 10.213.0.<i+1>/24, the other end of a veth pair whose
                            peer "p<i>" is a port of br0; "lo" up

Each host's ``eth0`` egress is shaped with a token bucket (``tc qdisc ... tbf rate RATE``),
so every byte a host sends crosses a link of that rate; a message between two hosts pays
the sender's link. With ``delay`` the ports of the switch add that one-way latency as well
(``netem``; kernels without the sch_netem module refuse it, and :func:`probe` says so).

Nothing touches the root namespace: the veth pairs are created directly inside their
namespaces, the subnet exists only there, and nothing can leave the machine (the switch
has no uplink).

mpirun runs inside host 0 (so its daemons, started in the other hosts, can reach it over
the test net) with Open MPI's rsh launcher pointed at an agent script that runs the launch
command inside the host's namespace (``ip netns exec``) instead of over ssh; the TCP BTL
only (``--mca btl tcp,self``): ranks on different hosts share no memory transport.
``tcp_links`` (``--tcp-links``) sets Open MPI's TCP connections per pair of ranks: with
the default one, a pair exchanging in both directions at once (fastlr's reduce-scatter
rounds) reached half the link rate (32 MB each way over 1 Gbit/s: 530 ms; with two: 281
ms; the bound: 268 ms). Measurements use two; the tests keep Open MPI's default: one of
about fifteen runs of the 3-host checks with two links hung (Open MPI 4.1.4, a loaded
machine), before the session-directory race below was found (it hung launches with any
number of links); since that fix, 26 benchmark runs with two links (2 and 3 hosts, 1 and
10 Gbit/s) finished without a hang.
mpirun reaches every daemon directly (``--mca routed direct``): with its default tree, a
daemon that exited with a killed rank could no longer relay the order to stop to the
daemons below it, and mpirun waited for them forever.
The hosts share the file system and the host name, so Open MPI's session directories
(``<tmpdir>/ompi.<host name>.<uid>/jf.<job family>/<vpid>``) were one set of directories
for all hosts: the daemons raced to create them, one whose ``mkdir`` failed with EEXIST
died in ``orte_init`` without a word (its output goes to /dev/null) and mpirun waited for
it forever (8 of 150 3-host launches of ``/bin/true``; ``--leave-session-attached``
shows the error). The agent gives every remote host its own tmpdir
(``OMPI_MCA_orte_tmpdir_base``); host 0, mpirun's, keeps the default (set in mpirun's
environment it would reach every daemon's command line, where it beats the agent's).
0 of 200 launches hung with it.
Separate hosts have separate CPUs; these share one machine's. In a job of at most 2 ranks
Open MPI binds each rank to a core, the first free one of the topology its daemon sees;
every host's daemon sees the whole machine, so a job of one rank on each of 2 hosts had
both ranks on CPU 0 while the other CPUs idled (the update and the busy-polling exchange
of one rank taking turns with the other's). (Larger jobs are bound to the socket.) So ranks are never bound by Open MPI (``--bind-to none``), and where the machine
has a CPU for every rank each host gets its own CPUs (``taskset``: host i the i-th equal
part of the CPUs this process may use; :func:`host_cpus`); where it has not (3 hosts on 2
cores, or 2 ranks per host), every rank may run on every CPU and the kernel spreads them.
``congestion`` (``--congestion``) sets TCP's congestion control inside the hosts; by
default they keep the machine's. Measurements use ``reno``: with this machine's default,
BBR, a 124M-param step over 1 Gbit/s links (4.3 s) varied by hundreds of ms from one step
to the next (quartiles of ``benchmarks/mpi_step.py --overlap``'s paired differences
-177 / +131 ms), with reno by a few (within -1.2 / +3.2 ms in three runs). BBR probes the link's rate and
round-trip time in cycles (among them a window of 4 packets for 200 ms about every 10 s),
probably the cause. (Only reno and BBR could be chosen in
a namespace here: the others need the module allowed by the machine's
``net.ipv4.tcp_allowed_congestion_control``.)

Command line (root, Linux)::

    python tests/distributed/netns_hosts.py --hosts 3 --rate 1gbit -- \\
        python tests/distributed/mpi_checks.py

runs the command under mpirun, one rank per host (``--ranks-per-host`` for more), and
tears the test bed down however the command ends.
"""

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile

SUBNET = "10.213.0"
PREFIX = "flnsP"


def _ip(*args, check=True):
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def probe():
    """None when this machine can build a test bed (Linux, root, ``ip``, ``tc`` and
    ``taskset``, network namespaces allowed), else the reason it cannot."""
    if not sys.platform.startswith("linux"):
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "building network namespaces needs root (CAP_NET_ADMIN)"
    for tool, package in (("ip", "iproute2"), ("tc", "iproute2"), ("taskset", "util-linux")):
        if shutil.which(tool) is None:
            return f"'{tool}' is not installed (Debian: apt install {package})"
    name = f"{PREFIX}{os.getpid()}-probe"
    made = _ip("netns", "add", name, check=False)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    _ip("netns", "del", name, check=False)
    return None


def host_cpus(n_hosts, ranks_per_host=1, cpus=None):
    """Each host's own CPUs (a list of lists: host i gets the i-th of ``n_hosts`` equal
    parts of ``cpus``, default the CPUs this process may run on), or None when there are
    fewer than ``ranks_per_host`` CPUs per host: then the hosts share every CPU."""
    cpus = sorted(os.sched_getaffinity(0)) if cpus is None else sorted(cpus)
    per = len(cpus) // n_hosts
    if per < max(1, ranks_per_host):
        return None
    return [cpus[i * per:(i + 1) * per] for i in range(n_hosts)]


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _namespaces():
    out = _ip("netns", "list", check=False).stdout.split("\n")
    return [line.split()[0] for line in out if line.strip()]


def _delete(ns):
    """Kill whatever still runs in namespace ns, then delete it."""
    pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout
    for pid in pids.split():
        try:
            os.kill(int(pid), 9)
        except (ProcessLookupError, ValueError):
            pass
    _ip("netns", "del", ns, check=False)


def remove_stale():
    """Delete test-bed namespaces left by runs whose process is gone."""
    for ns in _namespaces():
        if ns.startswith(PREFIX):
            pid = ns[len(PREFIX):].split("-", 1)[0]
            if pid.isdigit() and not _pid_alive(int(pid)):
                _delete(ns)


class NetnsHosts:
    """n hosts behind a switch; use as a context manager (``with NetnsHosts(3) as bed:``).

    Parameters
    ----------
    n_hosts : int
        Number of hosts (namespaces with one address each), 1 to 250.
    rate : str
        Each host's egress link rate in tc's units (``"10gbit"``, ``"1gbit"``, ``"100mbit"``).
    delay : str or None
        One-way latency added by the switch (tc's units, ``"100us"``), or None for none.
    congestion : str or None
        TCP congestion control in every host (``"reno"``, ``"bbr"``; the kernel's
        ``net.ipv4.tcp_congestion_control`` in that namespace), or None: the machine's.
    """

    def __init__(self, n_hosts, rate="10gbit", delay=None, congestion=None):
        if not 1 <= n_hosts <= 250:
            raise ValueError(f"n_hosts must be in [1, 250], got {n_hosts}")
        self.n_hosts = n_hosts
        self.rate = rate
        self.delay = delay
        self.congestion = congestion
        self.tag = f"{PREFIX}{os.getpid()}"
        self.switch = f"{self.tag}-sw"
        self.hosts = [f"{self.tag}-h{i}" for i in range(n_hosts)]
        self.addresses = [f"{SUBNET}.{i + 1}" for i in range(n_hosts)]
        self._dir = None

    # ---- building and removing -------------------------------------------------------------
    def __enter__(self):
        remove_stale()
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()

    def _build(self):
        _ip("netns", "add", self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        for i, (host, addr) in enumerate(zip(self.hosts, self.addresses)):
            _ip("netns", "add", host)
            _ip("link", "add", "eth0", "netns", host, "type", "veth",
                "peer", "name", f"p{i}", "netns", self.switch)
            _ip("-n", self.switch, "link", "set", f"p{i}", "master", "br0")
            _ip("-n", self.switch, "link", "set", f"p{i}", "up")
            _ip("-n", host, "addr", "add", f"{addr}/24", "dev", "eth0")
            _ip("-n", host, "link", "set", "eth0", "up")
            _ip("-n", host, "link", "set", "lo", "up")
            if self.congestion:
                _ip("netns", "exec", host, "/bin/sh", "-c",
                    'echo "$1" > /proc/sys/net/ipv4/tcp_congestion_control', "-",
                    self.congestion)
            _ip("netns", "exec", host, "tc", "qdisc", "add", "dev", "eth0", "root", "tbf",
                "rate", self.rate, "burst", "512kb", "latency", "50ms")
            if self.delay:
                _ip("netns", "exec", self.switch, "tc", "qdisc", "add", "dev", f"p{i}", "root",
                    "netem", "delay", self.delay)
        self._dir = tempfile.mkdtemp(prefix="fastlr-netns-")
        # the agents Open MPI's rsh launcher runs ("AGENT HOST COMMAND..."), one word each
        # (a value with spaces is not passed on to the daemons): on every CPU, or pinned
        self.agent = os.path.join(self._dir, "agent")
        self.agent_pinned = os.path.join(self._dir, "agent-pinned")
        # every host's own directory for Open MPI's session files (the module's doc), set
        # by the agent; host 0 runs mpirun, not launched by the agent, and keeps the default
        # (a value in mpirun's environment would reach every daemon's command line, where it
        # beats the agent's)
        self.session_dirs = [os.path.join(self._dir, f"h{i}") for i in range(self.n_hosts)]
        for d in self.session_dirs:
            os.mkdir(d)
        # host i's own CPUs (host_cpus for one rank per host, decided once: cpus()), or None
        self._cpu_parts = host_cpus(self.n_hosts)
        for agent, parts in ((self.agent, None), (self.agent_pinned, self._cpu_parts)):
            if agent == self.agent_pinned and parts is None:
                continue
            cases = "\n".join(
                f"  {addr}) ns={host}; tmp={shlex.quote(d)}"
                f"{'; cpus=' + ','.join(map(str, parts[i])) if parts else ''} ;;"
                for i, (host, addr, d) in enumerate(zip(self.hosts, self.addresses,
                                                        self.session_dirs)))
            pin = 'taskset -c "$cpus" ' if parts else ""
            with open(agent, "w") as f:
                f.write(f"""#!/bin/sh
# Open MPI's rsh agent for the test bed: "{os.path.basename(agent)} HOST COMMAND..." runs
# COMMAND in HOST's network namespace (as ssh would run it on HOST), with HOST's own
# session directory{", on HOST's own CPUs" if parts else ""}.
host=$1; shift
case "$host" in
{cases}
  *) echo "fastlr test bed agent: unknown host $host" >&2; exit 1 ;;
esac
OMPI_MCA_orte_tmpdir_base=$tmp exec ip netns exec "$ns" {pin}/bin/sh -c "$*"
""")
            os.chmod(agent, 0o755)
        if shutil.which("gdb"):
            # mpirun --get-stack-traces asks each daemon for "gstack PID" (not in Debian's
            # gdb): a hang inside Open MPI (not in Python) then shows its native stacks
            gstack = os.path.join(self._dir, "gstack")
            with open(gstack, "w") as f:
                f.write('#!/bin/sh\nexec gdb -p "$1" -batch -nx -ex "thread apply all bt" 2>&1\n')
            os.chmod(gstack, 0o755)

    def close(self):
        for ns in [*self.hosts, self.switch]:
            if ns in _namespaces():
                _delete(ns)
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    # ---- running -------------------------------------------------------------------------
    def qdisc(self, i):
        """tc's description of host i's egress shaping."""
        return _ip("netns", "exec", self.hosts[i], "tc", "qdisc", "show", "dev", "eth0").stdout

    def cpus(self, ranks_per_host=1):
        """Each host's own CPUs for ``ranks_per_host`` ranks a host (:func:`host_cpus`),
        or None: the hosts share every CPU."""
        parts = self._cpu_parts
        if parts is None or len(parts[0]) < max(1, ranks_per_host):
            return None
        return parts

    def mpirun_command(self, command, ranks_per_host=1, mpirun="mpirun", tcp_links=1,
                       job_timeout=None):
        """The argv that runs ``command`` (a list) on every host under mpirun, from host 0,
        with ``tcp_links`` TCP connections per pair of ranks. With ``job_timeout`` (seconds)
        mpirun ends the job itself past it, after printing the state of every process and
        (with gdb installed) their native stacks."""
        hosts = ",".join(f"{addr}:{ranks_per_host}" for addr in self.addresses)
        cpus = self.cpus(ranks_per_host)
        # host 0's ranks are mpirun's children: mpirun runs on host 0's CPUs
        pin0 = ["taskset", "-c", ",".join(map(str, cpus[0]))] if cpus else []
        net = f"{SUBNET}.0/24"
        limit = []
        if job_timeout:
            limit = ["--timeout", str(int(job_timeout)), "--report-state-on-timeout",
                     "--get-stack-traces"]
        return ["ip", "netns", "exec", self.hosts[0], *pin0, mpirun, *limit,
                "-n", str(self.n_hosts * ranks_per_host), "--host", hosts, "--map-by", "node",
                "--bind-to", "none",
                "--mca", "plm_rsh_agent", self.agent_pinned if cpus else self.agent,
                "--mca", "plm_rsh_no_tree_spawn", "1",
                "--mca", "routed", "direct",
                "--mca", "btl", "tcp,self", "--mca", "btl_tcp_if_include", net,
                "--mca", "oob_tcp_if_include", net, "--mca", "btl_tcp_links", str(tcp_links), *command]

    def run(self, command, ranks_per_host=1, timeout=600, tcp_links=1, job_timeout=None,
            **kwargs):
        """Run ``command`` under mpirun across the hosts (subprocess.run's result);
        ``job_timeout``: mpirun's own limit (see :meth:`mpirun_command`), below ``timeout``."""
        env = dict(kwargs.pop("env", None) or os.environ)
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
                   OMPI_MCA_rmaps_base_oversubscribe="1",
                   PATH=os.pathsep.join([self._dir, env.get("PATH", os.defpath)]))
        return subprocess.run(self.mpirun_command(command, ranks_per_host, tcp_links=tcp_links,
                                                  job_timeout=job_timeout), env=env,
                              timeout=timeout, **kwargs)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=2)
    parser.add_argument("--rate", default="10gbit")
    parser.add_argument("--delay", default=None)
    parser.add_argument("--ranks-per-host", type=int, default=1)
    parser.add_argument("--congestion", default=None,
                        help="TCP congestion control in every host (reno, bbr, ...; "
                             "default: the machine's)")
    parser.add_argument("--tcp-links", type=int, default=1,
                        help="TCP connections per pair of ranks (Open MPI's btl_tcp_links)")
    parser.add_argument("--timeout", type=float, default=600,
                        help="kill mpirun past this many seconds")
    parser.add_argument("--job-timeout", type=float, default=None,
                        help="mpirun's own --timeout (below --timeout): past it mpirun prints "
                             "every process's state and stacks and ends the job")
    parser.add_argument("--probe", action="store_true",
                        help="only say whether a test bed can be built here (exit 0) or not (2)")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    reason = probe()
    if reason:
        print(f"netns_hosts: {reason}", file=sys.stderr)
        return 2
    if args.probe:
        print("netns_hosts: a test bed of network namespaces can be built here")
        return 0
    if not command:
        parser.error("give the command to run after --")
    with NetnsHosts(args.hosts, args.rate, args.delay, args.congestion) as bed:
        cpus = bed.cpus(args.ranks_per_host)
        where = ("CPUs " + " | ".join(",".join(map(str, c)) for c in cpus) if cpus
                 else "every CPU shared")
        print(f"netns_hosts: {args.hosts} hosts at {args.rate}"
              f"{' + ' + args.delay if args.delay else ''} ({where}): {shlex.join(command)}",
              flush=True)
        return bed.run(command, args.ranks_per_host, args.timeout, tcp_links=args.tcp_links,
                       job_timeout=args.job_timeout).returncode


if __name__ == "__main__":
    sys.exit(main())

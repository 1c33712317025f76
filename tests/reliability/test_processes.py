"""Reliability across processes (docs/threads_and_processes.md).

GNU OpenMP's thread pool does not survive fork(): a child that opens a parallel region
after its parent used one waits forever. fastlr marks a forked child (pthread_atfork) and
runs it serial until it calls fastlr.set_num_threads. Each scenario runs in a fresh
interpreter under a timeout, so a hang fails the test instead of hanging the suite; the
parent first runs the threaded kernels and an optimizer (two OpenMP threads, > 1M
elements), then:

* an os.fork child and the workers of a "fork" multiprocessing Pool use every kernel, an
  optimizer inherited from the parent, fresh ones and clip_grad_norm: no hang, the same
  bits as the parent, in_forked_child() is True and get_num_threads() is 1;
* "spawn" and "forkserver" workers start fresh: threads as usual, the same bits;
* the escape hatch: a child forked from a parent that imported fastlr but never opened a
  parallel region may call set_num_threads and then runs threaded, with the same bits.
"""

import json
import sys

import pytest

from _reliability_helpers import run_script

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="fork semantics: Linux")

ENV = {"OMP_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "1"}

FORK_SCRIPT = r"""
import json, multiprocessing as mp, os, sys
import fastlr
from fastlr import _kernels
import _reliability_helpers as H

out = {"before": [_kernels.in_forked_child(), fastlr.get_num_threads(), fastlr.kernels.HAVE_OPENMP]}
inherited, inherited_grads = H.fork_optimizer()   # built here, stepped only in the child
out["parent"] = H.fork_job()                      # opens OpenMP regions: 2 threads

r, w = os.pipe()
pid = os.fork()
if pid == 0:
    code = 1
    try:
        os.close(r)
        res = {"inherited": H.fork_job(inherited, inherited_grads), "fresh": H.fork_job()}
        os.write(w, json.dumps(res).encode())
        code = 0
    except BaseException:
        import traceback
        traceback.print_exc()
    finally:
        os._exit(code)
os.close(w)
chunks = []
while True:
    chunk = os.read(r, 65536)
    if not chunk:
        break
    chunks.append(chunk)
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 0, status
out["fork"] = json.loads(b"".join(chunks))
out["parent_after"] = [_kernels.in_forked_child(), fastlr.get_num_threads()]

for method, workers in (("fork", 2), ("spawn", 1), ("forkserver", 1)):
    with mp.get_context(method).Pool(workers) as pool:
        out["pool_" + method] = pool.map(H.pool_job, range(workers))
print(json.dumps(out))
"""


def test_fork_after_threads_runs_serial_with_the_same_bits():
    out = json.loads(run_script(FORK_SCRIPT, timeout=240, env=ENV).strip().splitlines()[-1])
    forked_before, threads_before, have_openmp = out["before"]
    assert forked_before is False
    want_threads = 2 if have_openmp else 1
    assert threads_before == want_threads
    parent = out["parent"]
    assert parent["forked"] is False and parent["threads"] == want_threads
    assert out["parent_after"] == [False, want_threads]   # forking changes nothing here

    forked = [out["fork"]["inherited"], out["fork"]["fresh"], *out["pool_fork"]]
    for res in forked:
        assert res["pid"] != parent["pid"]
        assert res["forked"] is True
        assert res["threads"] == 1
        assert res["digest"] == parent["digest"]
        assert res["steps"] == 3
    assert len({res["pid"] for res in out["pool_fork"]}) >= 1

    for res in out["pool_spawn"] + out["pool_forkserver"]:
        assert res["forked"] is False
        assert res["threads"] == want_threads
        assert res["digest"] == parent["digest"]


HATCH_SCRIPT = r"""
import json, os
import fastlr
from fastlr import _kernels
import _reliability_helpers as H

# fastlr imported, but no parallel region opened yet: nothing of OpenMP's to lose
pid = os.fork()
if pid == 0:
    code = 1
    try:
        seen = [_kernels.in_forked_child(), fastlr.get_num_threads()]
        fastlr.set_num_threads(2)
        seen += [_kernels.in_forked_child(), fastlr.get_num_threads()]
        res = H.fork_job()                       # threaded again in the child
        with open(os.environ["HATCH_OUT"], "w") as f:
            json.dump({"seen": seen, "res": res}, f)
        code = 0
    except BaseException:
        import traceback
        traceback.print_exc()
    finally:
        os._exit(code)
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 0, status
with open(os.environ["HATCH_OUT"]) as f:
    child = json.load(f)
child["parent"] = H.fork_job()
print(json.dumps(child))
"""


def test_set_num_threads_lifts_the_serial_mode_in_a_forked_child(tmp_path):
    env = dict(ENV, HATCH_OUT=str(tmp_path / "hatch.json"))
    out = json.loads(run_script(HATCH_SCRIPT, timeout=180, env=env).strip().splitlines()[-1])
    assert out["seen"] == [True, 1, False, 2]
    assert out["res"]["forked"] is False and out["res"]["threads"] == 2
    assert out["res"]["digest"] == out["parent"]["digest"]

"""The Python package (python/inferscope) against a real inferscope-collector.

Plain python3, no pytest: each check_* function raises Failure; main() runs
them all and exits 1 if any failed. Registered in ctest with label `python`.
"""

import argparse
import array
import os
import pathlib
import re
import subprocess
import sys
import threading
import time
import urllib.request

sys.dont_write_bytecode = True
HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "e2e"))
from harness import Failure, Harness, free_port, log, run_checks  # noqa: E402

inferscope = None  # imported in main() once sys.path and the environment are set


def expect_raises(exc, fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except exc as e:
        return e
    raise Failure(f"{fn.__name__}{args} did not raise {exc.__name__}")


def scrape(metrics_addr):
    with urllib.request.urlopen(f"http://{metrics_addr}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = []
    for line in text.splitlines():
        m = re.match(r"^(\w+)(\{[^}]*\})?\s+(\S+)$", line)
        if m:
            out.append((m.group(1), m.group(2) or "", float(m.group(3))))
    return out


def metric_sum(samples, name, *labels):
    return sum(v for n, lab, v in samples if n == name and all(x in lab for x in labels))


# [SECTION] checks ---------------------------------------------------------------

def check_signals_reach_collector(addrs):
    """Every signal kind from Python shows up in the collector's /metrics."""
    with inferscope.Agent(collector=addrs["ingest"], service="python-test", rank=0,
                          world_size=1) as agent:
        with agent.range("py_outer", request_id=1):
            with agent.range("py_inner"):
                pass

        @agent.range("py_decorated")
        def work(x):
            return x * 2
        if work(21) != 42:
            raise Failure("a decorated function's result was lost")

        def thread_body():
            for _ in range(100):
                with agent.range("py_thread"):
                    pass
        ts = [threading.Thread(target=thread_body) for _ in range(4)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()

        for step in range(5):
            agent.expert_load(step, 0, [10, 2, 2, 2], tokens=16)                  # list
            agent.expert_load(step, 1, array.array("I", [4, 4, 4, 4]), tokens=16)  # buffer
        agent.memory("weights", 555555, 1000000)
        agent.memory(inferscope.MEMORY_KINDS["kv_cache"], 1234, 4096)
        agent.prefix_cache(attention_queried=70, attention_hit=30)
        t0 = inferscope.now_ns()
        agent.stage(1, "prefill", t0, t0 + 1000)
        agent.request(1, arrival_ns=t0, first_token_ns=t0 + 500, finish_ns=t0 + 2000,
                      prompt_tokens=12, output_tokens=4)
        agent.counter("py_counter", 3)
        agent.gauge("py_gauge", 1.5)
        if not agent.flush(10):
            raise Failure(f"flush to a running collector failed: {agent.stats()}")
        st = agent.stats()
        # 2 + 1 + 400 ranges, 10 loads, 2 memory, prefix, stage, request, counter, gauge
        if st["records_sent"] < 420 or st["records_dropped"] != 0 or not st["connected"]:
            raise Failure(f"unexpected stats after flush: {st}")

    deadline = time.time() + 20
    want = {
        "memory weights == 555555": lambda s: any(
            n == "inferscope_memory_used_bytes" and 'kind="weights"' in lab and v == 555555
            for n, lab, v in s),
        "routed tokens == 160": lambda s: metric_sum(s, "inferscope_moe_routed_tokens_total") == 160,
        "prefix queried == 70": lambda s: metric_sum(
            s, "inferscope_prefix_cache_queried_tokens_total", 'layer_kind="attention"') == 70,
        "requests{status=ok} == 1": lambda s: metric_sum(
            s, "inferscope_requests_total", 'status="ok"') == 1,
    }
    missing = list(want)
    while time.time() < deadline:
        s = scrape(addrs["metrics"])
        missing = [k for k, f in want.items() if not f(s)]
        if not missing:
            return
        time.sleep(0.5)
    raise Failure(f"collector /metrics never showed: {missing}")


def check_numpy(addrs):
    try:
        import numpy as np
    except ImportError:
        log("numpy not importable by this python3: numpy path not exercised")
        return
    with inferscope.Agent(collector=addrs["ingest"], service="python-numpy") as agent:
        agent.expert_load(0, 0, np.array([3, 1, 0, 4], dtype=np.int64), tokens=8)
        agent.expert_load(0, 1, np.arange(256, dtype=np.uint32)[::2], tokens=8)  # strided
        expect_raises(ValueError, agent.expert_load, 0, 0, np.zeros((2, 2), np.int32), 1)
        expect_raises(TypeError, agent.expert_load, 0, 0, np.zeros(4, np.float32), 1)
        expect_raises(ValueError, agent.expert_load, 0, 0, np.array([-1, 2]), 1)
        if not agent.flush(10) or agent.stats()["records_sent"] != 2:
            raise Failure(f"numpy expert loads not sent: {agent.stats()}")


def check_cuda_tensor_path(addrs):
    """The CUDA-tensor path of expert_load against a stand-in torch module (no
    torch here): the load waits for its copy's event without blocking, is sent
    once the event completes, and flush() waits for it."""
    try:
        import numpy as np
    except ImportError:
        log("numpy not importable by this python3: CUDA-tensor path not exercised")
        return
    import types
    torch = types.ModuleType("torch")
    torch.int64, torch.bool = "int64", "bool"

    class DType:
        is_floating_point = is_complex = False

    class Event:
        ready = False  # class-wide switch the test flips
        synchronized = 0

        def record(self):
            pass

        def query(self):
            return Event.ready

        def synchronize(self):
            Event.synchronized += 1

    class Tensor:
        def __init__(self, values, is_cuda):
            self.values, self.is_cuda, self.dtype = np.asarray(values), is_cuda, DType()

        def dim(self):
            return self.values.ndim

        def numel(self):
            return self.values.size

        def reshape(self, *_):
            return Tensor(self.values.reshape(-1), self.is_cuda)

        def to(self, _dtype):
            return Tensor(self.values.astype(np.int64), self.is_cuda)

        def copy_(self, src, non_blocking=False):
            if not non_blocking:
                raise Failure("the device-to-host copy must be non_blocking")
            self.values[:] = src.values

        def numpy(self):
            return self.values

        def detach(self):
            return self

        def contiguous(self):
            return self

    Tensor.__module__ = "torch"
    torch.Tensor = Tensor
    torch.empty = lambda n, dtype, pin_memory: Tensor(np.zeros(n, np.int64), False)
    torch.cuda = types.SimpleNamespace(Event=Event)
    saved = sys.modules.get("torch")
    sys.modules["torch"] = torch
    try:
        with inferscope.Agent(collector=addrs["ingest"], service="python-cuda-path") as agent:
            agent.expert_load(0, 0, Tensor([5, 1, 1, 1], is_cuda=True), tokens=8)
            agent.expert_load(1, 0, Tensor([2, 2, 2, 2], is_cuda=True), tokens=8)
            st = agent.stats()
            if st["records_recorded"] != 0 or st["pending_cuda_loads"] != 2:
                raise Failure(f"loads were recorded before their copy completed: {st}")
            Event.ready = True
            agent.expert_load(2, 0, [1, 1, 1, 1], tokens=4)  # drains the finished ones first
            st = agent.stats()
            if st["records_recorded"] != 3 or st["pending_cuda_loads"] != 0:
                raise Failure(f"finished loads were not sent at the next call: {st}")
            Event.ready = False
            expect_raises(ValueError, agent.expert_load, 3, 0, Tensor([[1, 2]], True), 2)
            agent.expert_load(4, 0, Tensor([0, 0, 4, 0], is_cuda=True), tokens=4)
            before = Event.synchronized
            if not agent.flush(10) or Event.synchronized == before:
                raise Failure("flush() did not wait for the CUDA-tensor load in flight")
            if agent.stats()["records_sent"] != 4:
                raise Failure(f"expected 4 loads sent: {agent.stats()}")
            agent.expert_load(5, 0, Tensor([1, 1], is_cuda=False), tokens=2)  # CPU tensor
            if agent.stats()["records_recorded"] != 5:
                raise Failure(f"a CPU tensor was not recorded at once: {agent.stats()}")
    finally:
        if saved is None:
            sys.modules.pop("torch", None)
        else:
            sys.modules["torch"] = saved


def check_bad_input():
    """Wrong shapes, types and enum values raise before anything is recorded."""
    with inferscope.Agent(collector="") as agent:
        expect_raises(ValueError, agent.expert_load, 0, 0, [[1, 2]], 1)  # 2-D via list
        expect_raises(TypeError, agent.expert_load, 0, 0, [1.5, 2], 1)
        expect_raises(ValueError, agent.expert_load, 0, 0, [-3], 1)
        expect_raises(ValueError, agent.expert_load, 0, 0, [1] * 4097, 1)
        expect_raises(TypeError, agent.expert_load, 0, 0, "1,2", 1)
        expect_raises(TypeError, agent.expert_load, 0, 0, array.array("d", [1.0]), 1)
        expect_raises(ValueError, agent.expert_load, -1, 0, [1], 1)
        expect_raises(ValueError, agent.memory, "disk", 1, 2)
        expect_raises(ValueError, agent.memory, 99, 1, 2)
        expect_raises(ValueError, agent.stage, 1, "prefill", 10, 5)
        expect_raises(ValueError, agent.stage, 1, "warmup", 1, 2)
        expect_raises(ValueError, agent.request, 1, 0, 1, status="lost")
        expect_raises(ValueError, agent.prefix_cache, 1, 2)
        expect_raises(TypeError, agent.range, 42)
        expect_raises(ValueError, inferscope.Agent, collector="", rank=2, world_size=2)
        r = agent.range("reused")  # one scope object, entered nested and again
        with r:
            with r:
                pass
        with r:
            pass


def check_after_close_and_twice():
    """Two agents at once are fine; every call after close() is a no-op; close twice is fine."""
    a = inferscope.Agent(collector="")
    b = inferscope.Agent(collector="")
    a.close()
    a.close()
    with a.range("after_close"):
        pass
    a.expert_load(0, 0, [1, 2], tokens=3)
    a.memory("weights", 1, 2)
    if not a.flush(0.1) or a.stats()["records_recorded"] != 0 or not a.closed:
        raise Failure("a closed agent recorded something")
    b.counter("second_agent", 1)
    b.close()


def check_prepared_range_calls():
    """Agent._range_calls (inferscope.torch's per-step "forward" range): each begin/end pair
    records one range; after close() the prepared calls are no-ops (the handle object they
    hold is set to NULL in place), not calls into a freed agent."""
    agent = inferscope.Agent(collector=f"tcp://127.0.0.1:{free_port()}", service="ranges")
    if agent.gpu_trace_mode() != "off":  # INFERSCOPE_GPU_TRACE is not set here
        raise Failure(f"GPU trace mode {agent.gpu_trace_mode()!r}, want 'off'")
    begin, end = agent._range_calls("forward", 7)
    before = agent.stats()["records_recorded"]
    for _ in range(3):
        begin()
        end()
    got = agent.stats()["records_recorded"] - before
    agent.close()
    begin()
    end()
    if got != 3 or agent.stats()["records_recorded"] != 0 or agent.gpu_trace_mode() != "off":
        raise Failure(f"{got} records for 3 prepared ranges (want 3), {agent.stats()} after "
                      "close")


def check_collector_down():
    """A collector that is not there: records are dropped and counted, flush says
    False, close() returns within the shutdown bound, the process lives on."""
    port = free_port()
    os.environ["INFERSCOPE_SHUTDOWN_TIMEOUT_MS"] = "500"
    try:
        agent = inferscope.Agent(collector=f"tcp://127.0.0.1:{port}", service="python-down")
    finally:
        del os.environ["INFERSCOPE_SHUTDOWN_TIMEOUT_MS"]
    for step in range(10):
        agent.expert_load(step, 0, [1, 2, 3], tokens=6)
    if agent.flush(0.3):
        raise Failure("flush reported success with no collector")
    st = agent.stats()
    if st["connected"] or st["records_sent"] != 0:
        raise Failure(f"stats with no collector: {st}")
    t0 = time.time()
    agent.close()
    if time.time() - t0 > 5:
        raise Failure(f"close() took {time.time() - t0:.1f}s with no collector")


def check_missing_library():
    """A wrong INFERSCOPE_AGENT_LIBRARY: an exception naming the path, not a crash."""
    code = ("import inferscope\n"
            "try:\n    inferscope.Agent()\n"
            "except inferscope.LibraryNotFoundError as e:\n    print('RAISED', e)\n")
    env = dict(os.environ, INFERSCOPE_AGENT_LIBRARY="/nonexistent/libinferscope_agent.so.0")
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if p.returncode != 0 or "RAISED" not in p.stdout or "/nonexistent/" not in p.stdout:
        raise Failure(f"missing library: rc={p.returncode}\n{p.stdout}\n{p.stderr}")


def main():
    global inferscope
    ap = argparse.ArgumentParser()
    ap.add_argument("--build-dir", required=True)
    ap.add_argument("--library", required=True, help="libinferscope_agent.so.0 to test")
    ap.add_argument("--python-dir", required=True, help="the folder holding the inferscope package")
    args = ap.parse_args()
    args.library = str(pathlib.Path(args.library).resolve())
    args.python_dir = str(pathlib.Path(args.python_dir).resolve())
    os.environ["INFERSCOPE_AGENT_LIBRARY"] = args.library
    os.environ["PYTHONPATH"] = args.python_dir + os.pathsep + os.environ.get("PYTHONPATH", "")
    sys.path.insert(0, args.python_dir)
    import inferscope as mod
    inferscope = mod

    import tempfile
    work = pathlib.Path(tempfile.mkdtemp(prefix="inferscope-python-"))
    h = Harness(work)
    failed = []
    try:
        collector = pathlib.Path(args.build_dir).resolve() / "collector" / "inferscope-collector"
        _, addrs = h.start_collector(collector, "collector", ["--window", "1s"])
        checks = {"signals_reach_collector": lambda: check_signals_reach_collector(addrs),
                  "numpy": lambda: check_numpy(addrs),
                  "cuda_tensor_path": lambda: check_cuda_tensor_path(addrs),
                  "bad_input": check_bad_input, "after_close_and_twice": check_after_close_and_twice,
                  "prepared_range_calls": check_prepared_range_calls,
                  "collector_down": check_collector_down, "missing_library": check_missing_library}
        failed = run_checks(checks)
    finally:
        if failed:
            h.dump_logs()
        h.close()
    print("FAIL: " + ", ".join(failed) if failed else "PASS", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""ns per call of the Python agent (python/inferscope), next to a bare Python
function call measured in the same run, so the figures can be compared on any
machine. Usage (numbers in docs/integrations.md):

  INFERSCOPE_AGENT_LIBRARY=build/dev/agent/src/libinferscope_agent.so.0 \
    PYTHONPATH=python python3 bench/python/overhead.py [--collector tcp://127.0.0.1:7431]

With the default collector "" the agent records nothing, so the figures are the
Python layer plus the C call; with a collector they include recording (the
shipping runs on the agent's own thread).
"""

import argparse
import array
import time

import inferscope


def per_call_ns(fn, n):
    t0 = time.perf_counter_ns()
    fn(n)
    return (time.perf_counter_ns() - t0) / n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--collector", default="")
    ap.add_argument("-n", type=int, default=200_000)
    args = ap.parse_args()
    agent = inferscope.Agent(collector=args.collector, service="python-bench")

    def bare(n):
        def f():
            pass
        for _ in range(n):
            f()

    def ranges(n):
        r = agent.range
        for _ in range(n):
            with r("bench_range"):
                pass

    def loads(experts, kind):
        counts = [1] * experts
        data = {"list": counts, "array('I')": array.array("I", counts)}
        try:
            import numpy as np
            data["numpy uint32"] = np.ones(experts, dtype=np.uint32)
        except ImportError:
            pass
        if kind not in data:
            return None
        routed = data[kind]

        def run(n):
            el = agent.expert_load
            for i in range(n):
                el(i, 0, routed, experts)
        return run

    rows = [("bare Python function call", per_call_ns(bare, args.n)),
            ("with agent.range(name)", per_call_ns(ranges, args.n))]
    for experts in (64, 256):
        for kind in ("list", "array('I')", "numpy uint32"):
            fn = loads(experts, kind)
            if fn:
                rows.append((f"expert_load, {experts} experts, {kind}",
                             per_call_ns(fn, args.n // 4)))
    print(f"collector {args.collector!r}; {agent.stats()['records_dropped']} dropped")
    print("| call | ns per call |\n|---|---|")
    for name, ns in rows:
        print(f"| {name} | {ns:.0f} |")
    agent.close()


if __name__ == "__main__":
    main()

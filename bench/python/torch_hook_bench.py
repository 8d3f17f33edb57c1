"""What inferscope.torch's hooks cost per decode step, by part, and how many PyTorch ops they
dispatch: an HF-shaped MoE model (tests/python/hf_style_models.py, 12 MoE layers, 64 experts,
top-8 by default: the Qwen3-MoE shape of the GPU overhead check) runs greedy decode-like forwards
observed, and the observer's own stats()["hook_ns_*"] are printed per step.

    /usr/bin/python3 bench/python/torch_hook_bench.py \
        --library build/dev/agent/src/libinferscope_agent.so.0 [--steps-per-copy 8] \
        [--python-dir DIR: another inferscope package, e.g. an older one to compare] [--cpu-time]

Two figures:
  * hook us per step by part (moe: per-layer hooks that extract ids from a router's output,
    0 for the v5 style, whose captures are untimed; step_*: the step end's range, cache walk,
    counting (the captured ids' check), device->host copy, drain to the agent). Host time, measured inside the
    hooks, median over rounds.
  * aten ops per step that the hooks add (TorchDispatchMode: every op the hooks dispatch,
    views included, over the same forwards observed and not; a second generate() of the
    observer, so setup is not counted). Op costs on this CPU are not the GPU host's (~30 us
    per op there); the op count carries over.
The agent is enabled, with a collector address nothing listens on (records are made and
dropped by its sender thread, as a live agent makes them). On a busy machine, --cpu-time reads
the hooks' time as the thread's CPU time (time.thread_time_ns for time.perf_counter_ns inside
the observer), so preemption is not counted; each read then costs ~0.5 us more.
"""

import argparse
import os
import pathlib
import statistics
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "python"))
sys.path.insert(0, str(ROOT / "python"))

PARTS = ("moe", "step", "step_range", "step_memory", "step_count", "step_copy", "step_drain")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--library", required=True)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--experts", type=int, default=64)
    ap.add_argument("--top-k", type=int, default=8)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=64, help="forwards per generate")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps-per-copy", type=int, default=None,
                    help="observe(steps_per_copy=K); default: the observer's own default")
    ap.add_argument("--style", default="v5", choices=("v4", "v5", "sigmoid_bias"))
    ap.add_argument("--profile", action="store_true", help="cProfile the observed rounds")
    ap.add_argument("--python-dir", help="the inferscope package's parent directory")
    ap.add_argument("--cpu-time", action="store_true")
    ap.add_argument("--collector", default="tcp://127.0.0.1:9")
    args = ap.parse_args()
    os.environ["INFERSCOPE_AGENT_LIBRARY"] = str(pathlib.Path(args.library).resolve())
    if args.python_dir:
        sys.path.insert(0, str(pathlib.Path(args.python_dir).resolve()))
    import time
    if args.cpu_time:
        time.perf_counter_ns = time.thread_time_ns  # before the observer binds it
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    import inferscope
    import inferscope.torch
    import hf_style_models as hf

    class OpCounter(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = {}

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = str(func)
            self.ops[name] = self.ops.get(name, 0) + 1
            return func(*args, **(kwargs or {}))

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = hf.TinyLM(style=args.style, layers=args.layers, hidden=32, experts=args.experts,
                      top_k=args.top_k).eval()
    ids = torch.randint(0, 97, (args.batch, 8), generator=torch.Generator().manual_seed(1))
    agent = inferscope.Agent(collector=args.collector, service="bench")
    kw = {} if args.steps_per_copy is None else {"steps_per_copy": args.steps_per_copy}

    def clear_truth():
        for block in model.moe_blocks().values():
            block.routed.clear()

    def generate():
        clear_truth()
        with torch.no_grad():
            hf.greedy(model, ids, args.steps)

    def observe():
        return inferscope.torch.observe(model, agent, model_name="bench", requests=False, **kw)

    # Ops the hooks add: the same forwards (same routing, so the same model ops), observed and
    # not; the observer's first generate() (its setup) is not counted.
    generate()
    with OpCounter() as off:
        generate()
    obs = observe()
    generate()
    with OpCounter() as on:
        generate()
    obs.close()
    added = {k: on.ops.get(k, 0) - off.ops.get(k, 0) for k in set(on.ops) | set(off.ops)}
    added = {k: v for k, v in added.items() if v}

    per_step = {k: [] for k in PARTS}
    total = []
    prof = None
    if args.profile:
        import cProfile
        prof = cProfile.Profile()
    for _ in range(args.rounds):
        obs = observe()
        if prof:
            prof.enable()
        generate()
        obs.flush()
        if prof:
            prof.disable()
        st = obs.stats()
        obs.close()
        steps = st["steps"]
        if st["hook_errors"] or st["steps_dropped"]:
            raise SystemExit(f"observer stats {st}")
        for k in PARTS:
            per_step[k].append(st[f"hook_ns_{k}"] / steps / 1e3)
        total.append(st["hook_ns"] / steps / 1e3)
    agent.close()
    steps = args.steps
    print(f"torch {torch.__version__}, {args.style}, {args.layers} MoE layers, {args.experts} "
          f"experts, top-{args.top_k}, batch {args.batch}, {steps} forwards per generate, "
          f"steps_per_copy {args.steps_per_copy or 'default'}, median of {args.rounds} rounds")
    print(f"  hooks {statistics.median(total):7.1f} us/step: " + ", ".join(
        f"{k} {statistics.median(v):.1f}" for k, v in per_step.items()))
    # The transformers 5 captures are untimed (moe 0): their checks are in step_count.
    print(f"  hooks per MoE layer {statistics.median(total) / args.layers:.2f} us")
    n_ops = sum(added.values())
    print(f"  aten ops the hooks add: {n_ops / steps:.2f} per step ({n_ops} over {steps} steps "
          f"of a second generate()): " + ", ".join(
              f"{k.replace('aten.', '').replace('.default', '')} {v}"
              for k, v in sorted(added.items(), key=lambda kv: -kv[1])))
    if prof:
        import pstats
        # PROFILE_FILTER=inferscope: the observer's functions only
        pstats.Stats(prof).sort_stats("tottime").print_stats(
            os.environ.get("PROFILE_FILTER", ""), 25)


if __name__ == "__main__":
    main()

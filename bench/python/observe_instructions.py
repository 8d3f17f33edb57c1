"""Instructions that inferscope.torch.observe() adds per decode step, counted by valgrind
(callgrind, the model's thread only): a count, not a time, so a loaded machine does not move
it, and it sees everything the observer makes the thread do, inside its hooks' timers or not
(the taps' frames, PyTorch's call path, ctypes, the agent's C calls).

    /usr/bin/python3 bench/python/observe_instructions.py \\
        --library build/release/agent/src/libinferscope_agent.so.0 [--python-dir DIR] \\
        [--variants off,bare,no_moe,observed]

An HF-shaped MoE model (tests/python/hf_style_models.py: 12 MoE layers, 64 experts, top-8, the
GPU overhead check's shape, hidden 8, with experts that cost one op, so that dispatch
dominates as on the GPU host) decodes greedily; each variant runs twice under callgrind, with
1 and with 129 forwards after a warm-up, and the difference / 128 is its count per step; a
variant's count minus "off"'s is what observing adds. Variants: off (no observer), bare (the
step's tap and end only: moe=False, step_ranges=False, memory=False), no_moe (moe=False),
observed (requests=False: the bench calls the model, not generate()). Each run takes about a
minute and a half (importing torch under valgrind); two run at once.
"""

import argparse
import concurrent.futures
import os
import pathlib
import re
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[2]
VARIANTS = {"off": None, "bare": dict(moe=False, step_ranges=False, memory=False),
            "no_moe": dict(moe=False), "observed": {}}


def child(variant, steps, batch):
    sys.path.insert(0, str(ROOT / "tests" / "python"))
    import torch
    import inferscope
    import inferscope.torch
    import hf_style_models as hf

    def one_op_experts(self, hidden_states, top_k_index, top_k_weights):
        return hidden_states * top_k_weights.sum()
    hf.V5Experts.forward = one_op_experts
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = hf.TinyLM(style="v5", layers=12, hidden=8, experts=64, top_k=8).eval()
    ids = torch.randint(0, 97, (batch, 8), generator=torch.Generator().manual_seed(1))
    agent = inferscope.Agent(collector="", service="bench")
    if VARIANTS[variant] is not None:
        inferscope.torch.observe(model, agent, model_name="bench", requests=False,
                                 **VARIANTS[variant])
    with torch.no_grad():
        hf.greedy(model, ids, 17)  # warm-up: the observer's first groups, PyTorch's caches
        hf.greedy(model, ids, steps)
    os._exit(0)  # no teardown in the count


def count(args, variant, steps, workdir):
    out = workdir / f"cg.{variant}.{steps}"
    env = dict(os.environ, INFERSCOPE_AGENT_LIBRARY=str(pathlib.Path(args.library).resolve()))
    package = ["--python-dir", args.python_dir] if args.python_dir else []
    subprocess.run(["valgrind", "--tool=callgrind", "--separate-threads=yes",
                    f"--callgrind-out-file={out}", sys.executable, __file__, "--child", variant,
                    str(steps), str(args.batch), "--library", args.library] + package,
                   env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    text = pathlib.Path(f"{out}-01").read_text()  # thread 1: the one that runs the model
    return int(re.search(r"^summary: (\d+)", text, re.M).group(1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--library", required=True)
    ap.add_argument("--python-dir", help="the inferscope package's parent directory")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        sys.path.insert(0, str(pathlib.Path(args.python_dir or ROOT / "python").resolve()))
        child(args.child[0], int(args.child[1]), int(args.child[2]))
    variants = [v for v in args.variants.split(",") if v]
    with tempfile.TemporaryDirectory() as tmp, concurrent.futures.ThreadPoolExecutor(2) as pool:
        jobs = {(v, n): pool.submit(count, args, v, n, pathlib.Path(tmp))
                for v in variants for n in (1, 129)}
        per_step = {v: (jobs[v, 129].result() - jobs[v, 1].result()) / 128 for v in variants}
    base = per_step.get("off")
    print(f"instructions per decode step (callgrind, the model's thread; batch {args.batch}):")
    for v, n in per_step.items():
        added = f", {n - base:+,.0f} against off" if base is not None and v != "off" else ""
        print(f"  {v:9s} {n:12,.0f}{added}")


if __name__ == "__main__":
    main()

"""What inferscope.torch.observe() adds per forward on CPU: an HF-shaped MoE model (tests/python/
hf_style_models.py) run with and without the observer, interleaved, in one process.

    /usr/bin/python3 bench/python/observe_overhead.py --library build/release/agent/src/libinferscope_agent.so.0

Reports thread CPU us per forward (CPU time: preemption on a busy machine does not count) off / observed, the difference per MoE layer, and the ratio. The agent
records to collector "" (nothing shipped): the figure is the hooks' own cost on the host thread.
On a GPU the same hooks cost the host the same time and add one small kernel per layer; the GPU
figure comes from tests/python/transformers_gpu_test.py (scripts/gpu-check --python).
"""

import argparse
import os
import pathlib
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "python"))
sys.path.insert(0, str(ROOT / "python"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--library", required=True)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--forwards", type=int, default=200)
    args = ap.parse_args()
    os.environ["INFERSCOPE_AGENT_LIBRARY"] = str(pathlib.Path(args.library).resolve())
    import torch
    import inferscope
    import inferscope.torch
    import hf_style_models as hf

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = hf.TinyLM(style="v5", layers=args.layers, hidden=64, experts=16, top_k=2).eval()
    ids = torch.randint(0, 97, (1, 1))
    agent = inferscope.Agent(collector="")

    def run():
        with torch.no_grad():
            t0 = time.thread_time()
            for _ in range(args.forwards):
                model(input_ids=ids)
            return (time.thread_time() - t0) / args.forwards * 1e6
    run()
    off, on = [], []
    for _ in range(args.rounds):
        off.append(run())
        obs = inferscope.torch.observe(model, agent, requests=False)
        on.append(run())
        obs.close()
    o, n = statistics.median(off), statistics.median(on)
    print(f"torch {torch.__version__}, {args.layers} MoE layers, 16 experts, top-2, batch 1, "
          f"1 thread; median of {args.rounds} interleaved rounds of {args.forwards} forwards")
    print(f"  off      {o:8.1f} us/forward  (min {min(off):.1f}, max {max(off):.1f})")
    print(f"  observed {n:8.1f} us/forward  (min {min(on):.1f}, max {max(on):.1f})")
    print(f"  added    {n - o:8.1f} us/forward = {(n - o) / args.layers:.1f} us per MoE layer "
          f"+ per-step work; ratio {n / o:.3f}")
    agent.close()


if __name__ == "__main__":
    main()

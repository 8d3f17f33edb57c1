"""What calling Python around one module costs per call, the callback's body aside: a module
called plainly, with a no-op forward pre-hook (PyTorch then takes the slow half of
Module._call_impl), and with a no-op forward tap (inferscope/_forward_tap.py: the module keeps
the fast path and the tap is one more Python call). Interleaved rounds, median, in one process.

    /usr/bin/python3 bench/python/forward_tap_bench.py [--calls 20000] [--rounds 9]

inferscope.torch puts a tap, not a hook, on every MoE layer's experts (or router) module, so
this difference is paid once per MoE layer per forward. No agent library is needed.
"""

import argparse
import inspect
import pathlib
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "python"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=9)
    args = ap.parse_args()
    import torch
    from inferscope._forward_tap import tap_forward

    class Experts(torch.nn.Module):  # the transformers 5 experts call: (hidden, ids, weights)
        def forward(self, hidden_states, top_k_index, top_k_weights):
            return hidden_states

    module = Experts()
    x = torch.zeros(2)
    with_kwargs = "with_kwargs" in inspect.signature(
        torch.nn.Module.register_forward_pre_hook).parameters

    def plain():
        return lambda: None

    def hook():  # as inferscope.torch registered it before taps (with kwargs where torch has it)
        if with_kwargs:
            handle = module.register_forward_pre_hook(lambda m, a, k: None, with_kwargs=True)
        else:
            handle = module.register_forward_pre_hook(lambda m, a: None)
        return handle.remove

    def tap():
        return tap_forward(module, before=lambda m, a, k: None).remove

    def run():
        t0 = time.perf_counter_ns()
        for _ in range(args.calls):
            module(x, x, x)
        return (time.perf_counter_ns() - t0) / args.calls

    variants = {"plain": plain, "pre-hook": hook, "tap": tap}
    got = {name: [] for name in variants}
    run()
    for _ in range(args.rounds):
        for name, attach in variants.items():
            detach = attach()
            got[name].append(run())
            detach()
    base = statistics.median(got["plain"])
    print(f"torch {torch.__version__}, python {sys.version.split()[0]}: ns per call of one "
          f"module, median of {args.rounds} interleaved rounds of {args.calls} calls")
    for name, values in got.items():
        v = statistics.median(values)
        print(f"  {name:9s} {v:7.0f} ns  (+{v - base:.0f} ns over a plain call)")


if __name__ == "__main__":
    main()

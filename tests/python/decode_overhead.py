"""What inferscope.torch.observe() adds to generate() decode, measured so that it can tell 1 %:
issue 17 part 4's check (run by transformers_gpu_test.py's `overhead`, one process per CUDA
sync mode), also runnable on CPU as a proxy.

    python3 tests/python/decode_overhead.py --library .../libinferscope_agent.so.0 \\
        --python-dir python [--model qwen3-moe|tiny] [--sync default|blocking] \\
        [--batches 1,8] [--new-tokens 32] [--seconds 60] [--twin-seconds 60] \
        [--twin-interleave block,step] [--op-diff-reps N] [--collector ADDR] [--json FILE]

Per batch, pairs of short greedy generate() calls of one model, one unobserved and one with
observe() attached (attached and detached around each call), in alternating order, for a fixed
time budget. Each call is preceded by an untimed generate() of 2 tokens on the same side of the
pair, so the observer's setup (its buffers, its first pinned copy) is not charged to decode;
every per-step and per-generate() cost is. The process is made quiet first: PyTorch on one
thread, the timed thread pinned to one CPU and the others off it, the garbage collector's
survivors frozen after the warm-up.

Per pair: the wall-time slowdown of the observed call, the thread CPU time it added as a share
of the unobserved call's wall time (the host work observing adds: with --sync blocking the
thread sleeps in CUDA's syncs instead of spinning, so its CPU time is its work), and where the
machine allows perf_event_open, the thread's user-space instructions added per step. Each is
given as its median over the pairs with a 95 % distribution-free confidence interval, and the
aim (wall slowdown <= 1 %) is called met only when that interval's upper end is <= 1 %.

Then the same model's decode steps interleaved with those of its unobserved copy
(twin_steps.py), for --twin-seconds per interleaving in --twin-interleave: by blocks of 16 steps
("block": each model's steps follow each other as in generate()) and step by step ("step": the
two a step apart, but each step starts with the other model's work in the caches, which slows
the baseline), so a machine whose speed changes within seconds (the H100 host in torch4's round
1: single 0.8 s calls from 560 to 950 ms) moves both alike. Its slowdown per window of 16 decode
steps is given the same way, with its own verdict, and beside it the two copies' own difference
(the model against its deep copy, the observer's cost cancelled): how far one object layout's
speed differs from another's on this machine, which the pairs of whole calls (one model, the
observer's objects added or not) cannot average out.
"""

import argparse
import gc
import json
import os
import pathlib
import statistics
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import quiet_process  # noqa: E402
from paired_stats import median_ci, paired_calls, verdict  # noqa: E402
from op_diff import op_diff, report_lines  # noqa: E402
from twin_steps import twin_steps  # noqa: E402

AIM_PCT = 1.0
WARM_TOKENS = 2  # the untimed generate() before each timed one
# Decode steps per window of the robust wall time (robust_wall): a multiple of the observer's
# steps per copy (STEPS_PER_COPY_DEFAULT, 16) and of its cache look (every 16 steps).
WINDOW = 16
# stats()["hook_ns_step_<part>"]: the step hook's own parts.
STEP_PARTS = ("range", "memory", "count", "copy", "drain")


def overhead_model(torch, transformers, device="cuda"):
    """The overhead checks' model: Qwen3-MoE, 12 MoE layers of 64 experts top-8, bf16."""
    cfg = transformers.Qwen3MoeConfig(hidden_size=1024, intermediate_size=2048,
                                      moe_intermediate_size=512, num_hidden_layers=12,
                                      num_attention_heads=16, num_key_value_heads=4, head_dim=64,
                                      num_experts=64, num_experts_per_tok=8, vocab_size=32000,
                                      decoder_sparse_step=1, mlp_only_layers=[],
                                      max_position_embeddings=4096, pad_token_id=0,
                                      eos_token_id=None)
    torch.manual_seed(0)
    return transformers.Qwen3MoeForCausalLM(cfg).to(device, torch.bfloat16).eval()


def hf_generate(model, ids, new, **kw):
    """Greedy generate() of exactly `new` tokens (transformers); `kw` go to generate()."""
    return model.generate(input_ids=ids, attention_mask=ids.new_ones(ids.shape),
                          max_new_tokens=new, min_new_tokens=new, do_sample=False, **kw)


def build(name, torch):
    """(model, generate(ids, new), vocab, device) for --model."""
    if name == "qwen3-moe":
        import transformers
        model = overhead_model(torch, transformers)
        return model, lambda ids, new: hf_generate(model, ids, new), 32000, "cuda"
    import hf_style_models as hf  # the HF-shaped model of the CPU tests, the same MoE shape
    torch.manual_seed(0)
    model = hf.TinyLM(style="v5", layers=12, hidden=32, experts=64, top_k=8).eval()
    return model, lambda ids, new: model.generate(ids, max_new_tokens=new), 97, "cpu"


def make_call(torch, generate, ids, new, counter, stamps):
    """call(): (wall s, thread CPU s, instructions or None, robust wall s, [decode step s])
    of one timed generate() of `new` tokens, after an untimed one of WARM_TOKENS. `stamps`
    gets a perf_counter() at each forward's start (a tap on the model, there in both
    variants)."""
    sync = torch.cuda.synchronize if ids.is_cuda else (lambda: None)
    perf, cpu, read = time.perf_counter, time.thread_time, counter.read

    def call():
        with torch.no_grad():
            generate(ids, WARM_TOKENS)
            sync()
            stamps.clear()
            i0, c0, t0 = read(), cpu(), perf()
            generate(ids, new)
            sync()
            t1, c1, i1 = perf(), cpu(), read()
        steps = decode_steps(stamps)
        return (t1 - t0, c1 - c0, None if i0 is None or i1 is None else i1 - i0,
                robust_wall(t1 - t0, steps), steps)
    return call


def decode_steps(stamps):
    """A call's decode steps: the intervals between its 2nd and its last forward's starts."""
    return [b - a for a, b in zip(stamps[1:], stamps[2:])]


def robust_wall(wall, steps):
    """The call's wall time with its decode steps (decode_steps()) counted at the median over
    windows of WINDOW consecutive steps, instead of as they came: a stall of the machine within
    a few steps does not move it, while every cost that recurs at most every WINDOW steps (the
    hooks' per-step and per-group work: K and the cache look's 16 divide it) is in every window.
    Costs rarer than that (the cache walk, at most once a second) are left out here;
    hook_ns_step_memory bounds them."""
    if len(steps) < WINDOW:
        return wall
    window = [sum(steps[i:i + WINDOW]) for i in range(len(steps) - WINDOW + 1)]
    return wall - sum(steps) + len(steps) * statistics.median(window) / WINDOW


def measure_batch(torch, inferscope, model, generate, agent, vocab, device, batch, args,
                  counter):
    ids = torch.randint(2, vocab, (batch, 32), generator=torch.Generator().manual_seed(0))
    ids = ids.to(device)
    from inferscope._forward_tap import tap_forward
    stamps = []
    call = make_call(torch, generate, ids, args.new_tokens, counter, stamps)
    # The steps' clock: a tap on the model's forward in both variants (the observer's own tap
    # goes over it and puts it back at close()).
    stamp_tap = tap_forward(model, before=lambda m, a, k, s=stamps.append, t=time.perf_counter:
                            s(t()))
    stats = []

    def attach():
        obs = inferscope.torch.observe(model, agent, model_name="overhead")

        def detach():
            stats.append(obs.stats())
            obs.close()
        return detach
    for _ in range(2):  # warm-up, discarded: lazy loading, allocator, caches
        call()
        detach = attach()
        call()
        detach()
    stats.clear()
    gc.collect()
    gc.freeze()  # the survivors so far are never scanned again by the collector
    pinned = quiet_process.pin_this_thread()
    try:
        try:
            pairs = paired_calls(call, attach, seconds=args.seconds)
        finally:
            stamp_tap.remove()
        sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        twins = {way: twin_steps(torch, model, lambda m: inferscope.torch.observe(
            m, agent, model_name="overhead"), ids, args.twin_seconds, sync, WINDOW,
            interleave=way) for way in args.twin_interleave.split(",") if way}
    finally:
        gc.unfreeze()
    steps = args.new_tokens  # forwards per timed generate(): the prefill and new - 1 decodes
    off_wall = statistics.median(off[0] for off, _ in pairs)
    wall = [100 * (on[0] / off[0] - 1) for off, on in pairs]
    robust = [100 * (on[3] / off[3] - 1) for off, on in pairs]
    host = [100 * (on[1] - off[1]) / off[0] for off, on in pairs]
    instr = [(on[2] - off[2]) / steps for off, on in pairs
             if on[2] is not None and off[2] is not None]
    # Where in a call the added time falls: per decode step position, the median over the
    # pairs of (observed - unobserved) step time. Even across positions: a per-step cost;
    # at every K-th: the group's; at the first: the prefill's count.
    added_by_step = [1e6 * statistics.median(on[4][j] - off[4][j] for off, on in pairs)
                     for j in range(min(min(len(off[4]), len(on[4])) for off, on in pairs))] \
        if pairs else []
    hook_steps = [max(1, s["steps"]) for s in stats]
    hook_us = [s["hook_ns"] / n / 1e3 for s, n in zip(stats, hook_steps)]
    parts = {p: statistics.median(s[f"hook_ns_step_{p}"] / n / 1e3
                                  for s, n in zip(stats, hook_steps)) for p in STEP_PARTS}
    step_us = 1e6 * off_wall / steps
    res = {"batch": batch, "pairs": len(pairs), "new_tokens": args.new_tokens,
           "step_us_off": step_us, "pinned": pinned,
           "thread_cpu_per_wall_off": statistics.median(off[1] / off[0] for off, _ in pairs),
           "wall_pct": median_ci(wall), "robust_pct": median_ci(robust),
           "host_work_pct": median_ci(host),
           "instructions_per_step": median_ci(instr) if instr else None,
           "hook_us_per_step": statistics.median(hook_us),
           "hook_pct_of_step": 100 * statistics.median(hook_us) / step_us,
           "hook_us_by_part": parts, "steps_per_copy": stats[0]["steps_per_copy"],
           "hook_errors": sum(s["hook_errors"] for s in stats),
           "steps_dropped": sum(s["steps_dropped"] for s in stats),
           "added_us_by_step": added_by_step,
           "pairs_raw": [(off[:4], on[:4]) for off, on in pairs]}
    res["verdict"] = verdict(*res["wall_pct"][1:], AIM_PCT)
    res["robust_verdict"] = verdict(*res["robust_pct"][1:], AIM_PCT)
    if args.op_diff_reps:
        def run():
            with torch.no_grad():
                generate(ids, args.new_tokens)
                sync()
        res["op_diff"] = op_diff(torch, run, lambda: inferscope.torch.observe(
            model, agent, model_name="overhead").close, args.new_tokens, reps=args.op_diff_reps)
    res["twin"] = {}
    for way, twin in twins.items():
        ts = twin["stats"]
        tw = res["twin"][way] = {
            "windows": len(twin["windows"]), "steps": twin["steps"],
            "step_us_off": statistics.median(twin["twin_step_us"]) if twin["steps"]
            else float("nan"),
            "pct": median_ci(twin["windows"]), "copy_bias_pct": median_ci(twin["copy_bias"]),
            "hook_us_per_step": statistics.median(
                s["hook_ns"] / max(1, s["steps"]) / 1e3 for s in ts) if ts else 0.0,
            "hook_errors": sum(s["hook_errors"] for s in ts),
            "steps_dropped": sum(s["steps_dropped"] for s in ts),
            "windows_raw": twin["windows"], "copy_bias_raw": twin["copy_bias"]}
        tw["verdict"] = verdict(*tw["pct"][1:], AIM_PCT)
        res["hook_errors"] += tw["hook_errors"]
    return res


def ci_text(triple, unit=" %", scale=1.0, fmt="{:+.2f}"):
    med, lo, hi = triple
    f = (lambda x: fmt.format(x * scale))
    interval = "no CI" if lo is None else f"95 % CI {f(lo)} .. {f(hi)}"
    return f"{f(med)}{unit} ({interval})"


def report(res, mode, instructions_note):
    b = res["batch"]
    lines = [
        f"b{b} [sync {mode}; {res['pinned']}]: unobserved step {res['step_us_off'] / 1e3:.2f} ms, "
        f"{res['pairs']} pairs of {res['new_tokens']}-token generate(), thread CPU / wall "
        f"{res['thread_cpu_per_wall_off']:.2f}",
        f"b{b} wall slowdown, whole calls {ci_text(res['wall_pct'])}; aim <= {AIM_PCT:g} %: "
        f"{res['verdict']}",
        f"b{b} wall slowdown, decode steps by windows of {WINDOW} {ci_text(res['robust_pct'])}; "
        f"aim: {res['robust_verdict']}",
        f"b{b} host work added (thread CPU / unobserved wall) {ci_text(res['host_work_pct'])}; "
        "instructions added per step " + (
            ci_text(res["instructions_per_step"], unit="", fmt="{:+.0f}")
            if res["instructions_per_step"] else instructions_note),
        f"b{b} hooks' own time {res['hook_us_per_step']:.0f} us/step "
        f"({res['hook_pct_of_step']:.2f} % of the step; K={res['steps_per_copy']}): " + ", ".join(
            f"{k} {v:.0f}" for k, v in res["hook_us_by_part"].items()) +
        (f"; hook_errors {res['hook_errors']}, steps_dropped {res['steps_dropped']}"
         if res["hook_errors"] or res["steps_dropped"] else "")]
    added = res["added_us_by_step"]
    if added:
        lines.append(f"b{b} time added per decode step position (median over pairs, us): " +
                     " ".join(f"{x:.0f}" for x in added) +
                     f"; median {statistics.median(added):.0f}")
    if "op_diff" in res:
        lines += [f"b{b} op diff, {line}" for line in report_lines(res["op_diff"])]
    for way, tw in res["twin"].items():
        lines.append(
            f"b{b} twin steps by {way}s (observed model and its unobserved copy, "
            f"{'windows' if way == 'block' else 'step'} in turn): {tw['windows']} windows of "
            f"{WINDOW} decode steps, unobserved step {tw['step_us_off'] / 1e3:.2f} ms: slowdown "
            f"{ci_text(tw['pct'])}; aim <= {AIM_PCT:g} %: {tw['verdict']}; the copies' own "
            f"difference {ci_text(tw['copy_bias_pct'])}; hooks' own time "
            f"{tw['hook_us_per_step']:.0f} us/step" +
            (f"; hook_errors {tw['hook_errors']}, steps_dropped {tw['steps_dropped']}"
             if tw["hook_errors"] or tw["steps_dropped"] else ""))
    return lines


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--library", required=True)
    ap.add_argument("--python-dir", required=True)
    ap.add_argument("--model", default="qwen3-moe", choices=("qwen3-moe", "tiny"))
    ap.add_argument("--sync", default="default", choices=("default", "blocking"))
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=60, help="pairs' time budget per batch")
    ap.add_argument("--twin-seconds", type=float, default=60,
                    help="the twin steps' time budget per batch")
    ap.add_argument("--twin-interleave", default="block,step",
                    help="the twin steps' interleavings, comma-separated: block, step")
    ap.add_argument("--op-diff-reps", type=int, default=0,
                    help="profile this many generate() calls per side and round, observed and "
                    "not, and report per op what observing adds per step (op_diff.py; 0: off)")
    ap.add_argument("--collector", default="")
    ap.add_argument("--json")
    args = ap.parse_args()
    os.environ["INFERSCOPE_AGENT_LIBRARY"] = str(pathlib.Path(args.library).resolve())
    sys.path.insert(0, str(pathlib.Path(args.python_dir).resolve()))
    if args.sync == "blocking":  # before PyTorch makes the context
        quiet_process.cuda_blocking_sync()
    import torch
    import inferscope
    import inferscope.torch  # noqa: F401
    torch.set_num_threads(1)
    model, generate, vocab, device = build(args.model, torch)
    mode = quiet_process.sync_mode() if device == "cuda" else "cpu"
    if args.sync == "blocking" and mode != "blocking":
        raise SystemExit(f"asked for blocking syncs, the context says {mode}")
    counter = quiet_process.Instructions()
    note = f"unavailable ({counter.error})" if counter.error else ""
    agent = inferscope.Agent(collector=args.collector, service="overhead")
    out = {"sync": mode, "model": args.model, "torch": torch.__version__,
           "instructions": note or "perf_event_open", "batches": {}}
    try:
        for batch in (int(b) for b in args.batches.split(",")):
            res = measure_batch(torch, inferscope, model, generate, agent, vocab, device, batch,
                                args, counter)
            out["batches"][f"b{batch}"] = res
            for line in report(res, mode, note):
                print(f"decode_overhead {line}", flush=True)
    finally:
        agent.close()
        counter.close()
        if args.json:
            pathlib.Path(args.json).write_text(json.dumps(out, default=str))


if __name__ == "__main__":
    main()

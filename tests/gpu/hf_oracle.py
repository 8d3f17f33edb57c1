#!/usr/bin/env python3
"""The outside oracle for the engine's Hugging Face path (issue 18), run by
scripts/hf-oracle on the GPU machine (PyTorch 2.x + transformers 5, no hub).

For each family (Mixtral, Qwen3-MoE, OLMoE) it builds a tiny config with the
transformers config class, random weights, and save_pretrained()s it twice:
fp32 (one file) and bf16 (sharded, with model.safetensors.index.json). Then
for a few prompts it runs inferscope-hf-run (prefill + greedy decode) and
compares with transformers' own forward on the same checkpoint:

  logits   every row the engine wrote vs transformers' logits at that position
           of the engine's sequence (teacher forcing), max|e - t| / max|t|;
           fp32 must be <= 1e-3; bf16 is reported and must stay <= 0.1.
  tokens   the engine's greedy tokens vs transformers' own greedy loop for
           --steps tokens; equal, or the first divergence is a near-tie
           (transformers' logit gap between the two tokens is within the
           measured engine-vs-transformers logit noise), which is reported.
  routing  every MoE layer's per-expert counts vs transformers' own top-k (its
           router module's indices, caught with a forward hook; softmax + topk
           of the logits where a 4.x-style gate returns logits only); equal, or
           the difference is explained by near-tie tokens (top-k probability gap
           < 1e-5 fp32, < 1e-2 bf16), which are counted.

Prints one table, writes --json, exits 1 on any mismatch.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time

import torch
import transformers
from transformers import AutoModelForCausalLM

FP32_TOL, BF16_TOL = 1e-3, 1e-1
GAP = {"fp32": 1e-5, "bf16": 1e-2}


def family_configs():
    """Tiny configs exercising what differs between the families."""
    common = dict(vocab_size=1024, hidden_size=256, num_hidden_layers=4, num_attention_heads=8,
                  num_key_value_heads=4, max_position_embeddings=512, rms_norm_eps=1e-5,
                  tie_word_embeddings=False, initializer_range=0.05)
    out = {}
    out["mixtral"] = transformers.MixtralConfig(
        **common, head_dim=32, intermediate_size=512, num_local_experts=8, num_experts_per_tok=2,
        router_jitter_noise=0.0, sliding_window=None)
    out["qwen3_moe"] = transformers.Qwen3MoeConfig(
        **common, head_dim=64, intermediate_size=512, moe_intermediate_size=256, num_experts=16,
        num_experts_per_tok=4, norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[0],
        use_sliding_window=False, attention_bias=False)
    out["olmoe"] = transformers.OlmoeConfig(
        **common, intermediate_size=256, num_experts=16, num_experts_per_tok=4,
        norm_topk_prob=False, clip_qkv=None)
    return out


def build(family, cfg, workdir, seed):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").float()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if re.search(r"(mlp|block_sparse_moe)\.gate\.weight$", name):
                # A decisive router (random init at 0.05 is nearly uniform): fewer near-ties.
                p.normal_(0.0, 2.0 / cfg.hidden_size ** 0.5)
            elif "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
    d32, d16 = os.path.join(workdir, family + "-fp32"), os.path.join(workdir, family + "-bf16")
    model.save_pretrained(d32)
    model.to(torch.bfloat16).save_pretrained(d16, max_shard_size="10MB")
    return d32, d16


class RouterTap:
    """Forward hooks on every MoE block's router: transformers' own top-k."""

    def __init__(self, model, k, experts):
        self.k, self.e, self.calls, self.handles = k, experts, {}, []
        for name, mod in model.named_modules():
            m = re.search(r"layers\.(\d+)\.(mlp|block_sparse_moe)\.gate$", name)
            if m:
                self.handles.append(mod.register_forward_hook(self._hook(int(m.group(1)))))
        if not self.handles:
            raise RuntimeError("no router modules (layers.N.mlp.gate) found")

    def _hook(self, layer):
        def fn(mod, inp, out):
            if isinstance(out, (tuple, list)):
                ints = [t for t in out if torch.is_tensor(t) and not t.is_floating_point()]
                idx, scores = (ints[0] if ints else None), out[0]
            else:
                idx, scores = None, out
            s = scores.detach().float().reshape(-1, self.e)
            is_prob = bool((s >= 0).all()) and float((s.sum(-1) - 1).abs().max()) < 1e-3
            probs = s if is_prob else s.softmax(-1)
            if idx is None:
                idx = probs.topk(self.k, -1).indices
            srt = probs.sort(-1, descending=True).values
            self.calls[layer] = (idx.reshape(-1, self.k).cpu(), (srt[:, self.k - 1] - srt[:, self.k]).cpu())
        return fn

    def counts(self):
        return {l: torch.bincount(i.flatten(), minlength=self.e).tolist() for l, (i, g) in self.calls.items()}

    def near_ties(self, gap):
        return {l: int((g < gap).sum()) for l, (i, g) in self.calls.items()}


def load(directory, dtype, device):
    # transformers 5 names the argument dtype; 4.x torch_dtype.
    key = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
    m = AutoModelForCausalLM.from_pretrained(directory, attn_implementation="eager", **{key: dtype})
    return m.to(device).eval()


def tf_forward(model, tap, seq, device):
    tap.calls.clear()
    with torch.no_grad():
        out = model(torch.tensor([seq], device=device), use_cache=False)
    return out.logits[0].float().cpu()


def hf_greedy(model, prompt, steps, device):
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(steps):
            lg = model(torch.tensor([seq], device=device), use_cache=False).logits[0, -1]
            seq.append(int(lg.argmax()))
    return seq[len(prompt):]


def run_engine(args, directory, backend, prompt, extra_env):
    out = os.path.join(args.workdir, "run.json")
    env = dict(os.environ, **extra_env)
    cmd = [args.engine, "--model", directory, "--backend", backend, "--tokens",
           ",".join(map(str, prompt)), "--steps", str(args.steps), "--full-logits",
           "--prefill-rows", "all", "--threads", "8", "--out", out]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError("engine failed (%d): %s" % (r.returncode, r.stderr.strip()[-800:]))
    return json.load(open(out))


def compare(run, model, tap, prompt, steps, precision, device, tol):
    """One engine run against transformers on the same checkpoint."""
    seq = prompt + run["generated"][:-1]
    ref = tf_forward(model, tap, seq, device)
    worst, noise = 0.0, 0.0
    for row in run["logits"]:
        e = torch.tensor(row["logits"])
        t = ref[row["position"]]
        d = float((e - t).abs().max())
        noise = max(noise, d)
        worst = max(worst, d / float(t.abs().max()))
    problems = []
    if worst > tol:
        problems.append("logits max rel %.3g > %g" % (worst, tol))
    # routing (teacher-forced on the engine's own sequence)
    want, ties = tap.counts(), tap.near_ties(GAP[precision])
    got = {m["layer"]: m["routed"] for m in run["moe_layers"]}
    route_note, tie_total = "exact", 0
    if sorted(got) != sorted(want):
        problems.append("MoE layers %s vs transformers %s" % (sorted(got), sorted(want)))
    for l in sorted(want):
        if got.get(l) == want[l]:
            continue
        moved = sum(abs(a - b) for a, b in zip(got.get(l, []), want[l])) // 2
        tie_total += ties[l]
        if moved > ties[l]:
            problems.append("layer %d routed %s vs transformers %s (%d moved, %d near-ties)"
                            % (l, got.get(l), want[l], moved, ties[l]))
        else:
            route_note = "near-tie"
    if route_note == "near-tie":
        route_note = "%d near-tie tok" % tie_total
    # greedy tokens vs transformers' own loop
    hf = hf_greedy(model, prompt, steps, device)
    eng = run["generated"]
    same = next((i for i, (a, b) in enumerate(zip(eng, hf)) if a != b), len(hf))
    tok_note = "%d/%d" % (same, steps)
    if same < steps:
        # Both share the prefix up to `same`: transformers' logits there decide.
        lg = tf_forward(model, tap, prompt + hf[:same], device)[-1]
        gap = abs(float(lg[hf[same]] - lg[eng[same]]))
        if gap <= noise:
            tok_note += " near-tie (gap %.2g <= noise %.2g)" % (gap, noise)
        else:
            problems.append("greedy token %d: engine %d, transformers %d (gap %.3g > noise %.3g)"
                            % (same, eng[same], hf[same], gap, noise))
    return worst, tok_note, route_note, problems


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--engine", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--families", default="mixtral,qwen3_moe,olmoe")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 on both sides
    torch.backends.cudnn.allow_tf32 = False
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print("torch %s, transformers %s, device %s" % (torch.__version__, transformers.__version__,
                                                    torch.cuda.get_device_name() if device == "cuda" else "cpu"))
    cfgs = family_configs()
    rows, failures = [], 0
    gen = torch.Generator().manual_seed(18)
    prompts = [torch.randint(0, 1024, (n,), generator=gen).tolist() for n in (7, 33)]
    t0 = time.time()
    for fi, family in enumerate(args.families.split(",")):
        cfg = cfgs[family]
        k = cfg.num_experts_per_tok
        e = getattr(cfg, "num_local_experts", None) or cfg.num_experts
        d32, d16 = build(family, cfg, args.workdir, 100 + fi)
        m32, m16 = load(d32, torch.float32, device), load(d16, torch.bfloat16, device)
        # The bf16 checkpoint's exact values in fp32: the oracle for an engine that widens them.
        m16w = load(d16, torch.float32, device)
        taps = {id(m): RouterTap(m, k, e) for m in (m32, m16, m16w)}
        # (checkpoint dir, label, engine backend, env, transformers model, precision, tolerance)
        plans = [(d32, "fp32", "cpu", {}, m32, "fp32", FP32_TOL),
                 (d32, "fp32", "cuda", {"INFERSCOPE_CUDA_MATH": "fp32"}, m32, "fp32", FP32_TOL),
                 (d16, "bf16", "cpu", {}, m16w, "fp32", FP32_TOL),
                 (d16, "bf16", "cuda", {}, m16, "bf16", BF16_TOL)]
        for d, label, backend, env, model, prec, tol in plans:
            for p in prompts:
                name = "%s %s->%s P%d" % (family, label, backend + ("(fp32 math)" if env else ""), len(p))
                ref_label = "transformers " + ("bf16" if model is m16 else "fp32")
                try:
                    run = run_engine(args, d, backend, p, env)
                    worst, tok, route, problems = compare(run, model, taps[id(model)], p, args.steps,
                                                          prec, device, tol)
                    gemm = run["gemm_dtype"]
                except Exception as ex:  # noqa: BLE001 - one failing case must not hide the others
                    worst, tok, route, problems, gemm = float("nan"), "-", "-", [str(ex)], "?"
                ok = not problems
                failures += not ok
                rows.append({"case": name, "engine_weights": gemm, "reference": ref_label,
                             "max_rel": worst, "tokens_equal": tok, "routing": route,
                             "ok": ok, "problems": problems})
    print("\n%-34s %6s %-17s %9s %-40s %-16s %s" % ("case", "eng.w", "reference", "max_rel",
                                                     "greedy tokens equal", "routing", "result"))
    for r in rows:
        print("%-34s %6s %-17s %9.2e %-40s %-16s %s" % (r["case"], r["engine_weights"], r["reference"],
              r["max_rel"], r["tokens_equal"], r["routing"], "ok" if r["ok"] else "MISMATCH"))
        for pr in r["problems"]:
            print("    " + pr)
    print("\nhf-oracle: %d cases, %d mismatches, %.0f s" % (len(rows), failures, time.time() - t0))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "transformers": transformers.__version__,
                       "rows": rows}, f, indent=1)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""CPU oracle for the engine's Hugging Face loader (inferscope-hf-run).

Writes tiny Mixtral / Qwen3-MoE / OLMoE checkpoints in the layouts
transformers writes (config.json + safetensors, written by hand: an 8-byte
little-endian header length, a JSON header, raw data), runs the engine tool on
them, and checks its logits and per-expert routed counts against a forward
pass written here with plain torch ops in float64 (an implementation that
shares no code with the engine; transformers itself is the oracle on the GPU
machine: scripts/hf-oracle).

Checks per case: every logit row the engine wrote has
max|engine - ref| / max|ref| <= 1e-3, its greedy tokens are the reference's
argmax (teacher-forced on the engine's own sequence), and every MoE layer's
routed counts equal the reference's top-k counts exactly.

Exit 0 all pass, 1 a mismatch, 77 (ctest: skipped) when torch is missing.
"""
import argparse
import json
import os
import struct
import subprocess
import sys

try:
    import torch
except ImportError:  # Debian's python3-torch is not installed: skip, do not fail
    print("SKIP: /usr/bin/python3 has no torch (apt-get install python3-torch)")
    sys.exit(77)

REL_TOL = 1e-3


# --- checkpoint writing ------------------------------------------------------
def write_safetensors(path, tensors):
    """tensors: dict name -> torch tensor (float32 or bfloat16)."""
    header, blobs, offset = {}, [], 0
    for name, t in tensors.items():
        t = t.contiguous()
        if t.dtype == torch.bfloat16:
            raw, dtype = t.view(torch.int16).numpy().tobytes(), "BF16"
        else:
            raw, dtype = t.to(torch.float32).numpy().tobytes(), "F32"
        header[name] = {"dtype": dtype, "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    header["__metadata__"] = {"format": "pt"}
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def save_checkpoint(directory, config, tensors, shards=1, dtype=torch.float32):
    os.makedirs(directory, exist_ok=True)
    for f in os.listdir(directory):
        os.remove(os.path.join(directory, f))
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    tensors = {k: v.to(dtype) for k, v in tensors.items()}
    if shards == 1:
        write_safetensors(os.path.join(directory, "model.safetensors"), tensors)
        return
    names = list(tensors)
    weight_map = {}
    for s in range(shards):
        fname = "model-%05d-of-%05d.safetensors" % (s + 1, shards)
        part = {n: tensors[n] for n in names[s::shards]}
        write_safetensors(os.path.join(directory, fname), part)
        weight_map.update({n: fname for n in part})
    with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)


# --- model description -------------------------------------------------------
class Spec:
    """What the reference forward needs, whatever the checkpoint's names."""

    def __init__(self, family, D, L, H, KV, hd, V, E, K, I, F, eps, theta, renorm, qk, moe_layers,
                 tie):
        self.__dict__.update(locals())
        del self.__dict__["self"]


def random_weights(spec, gen):
    """Per layer: plain tensors in a neutral layout (experts as lists)."""
    def rnd(*shape, scale):
        return torch.randn(*shape, generator=gen, dtype=torch.float64) * scale

    s = spec
    W = {"embed": rnd(s.V, s.D, scale=1.0), "norm": 1 + rnd(s.D, scale=0.1),
         "head": rnd(s.V, s.D, scale=s.D ** -0.5), "layers": []}
    if s.tie:
        W["head"] = W["embed"]
    for l in range(s.L):
        w = {"n1": 1 + rnd(s.D, scale=0.1), "n2": 1 + rnd(s.D, scale=0.1),
             "q": rnd(s.H * s.hd, s.D, scale=s.D ** -0.5), "k": rnd(s.KV * s.hd, s.D, scale=s.D ** -0.5),
             "v": rnd(s.KV * s.hd, s.D, scale=s.D ** -0.5),
             "o": rnd(s.D, s.H * s.hd, scale=(s.H * s.hd) ** -0.5)}
        if s.qk == "head":
            w["qn"], w["kn"] = 1 + rnd(s.hd, scale=0.1), 1 + rnd(s.hd, scale=0.1)
        elif s.qk == "full":
            w["qn"], w["kn"] = 1 + rnd(s.H * s.hd, scale=0.1), 1 + rnd(s.KV * s.hd, scale=0.1)
        if l in s.moe_layers:
            w["router"] = rnd(s.E, s.D, scale=2.0 * s.D ** -0.5)
            w["gate"] = [rnd(s.I, s.D, scale=s.D ** -0.5) for _ in range(s.E)]
            w["up"] = [rnd(s.I, s.D, scale=s.D ** -0.5) for _ in range(s.E)]
            w["down"] = [rnd(s.D, s.I, scale=s.I ** -0.5) for _ in range(s.E)]
        else:
            w["gate_p"], w["up_p"] = rnd(s.F, s.D, scale=s.D ** -0.5), rnd(s.F, s.D, scale=s.D ** -0.5)
            w["down_p"] = rnd(s.D, s.F, scale=s.F ** -0.5)
        W["layers"].append(w)
    return W


def hf_names(spec, W, layout):
    """The checkpoint's tensors under transformers' names.
    layout: 'fused' (transformers 5: mlp.experts.gate_up_proj [E, 2I, D] / down_proj [E, D, I]),
            'mixtral4' (block_sparse_moe.experts.j.w1/w2/w3), 'proj4' (mlp.experts.j.gate_proj/...)."""
    t = {"model.embed_tokens.weight": W["embed"], "model.norm.weight": W["norm"]}
    if not spec.tie:
        t["lm_head.weight"] = W["head"]
    for l, w in enumerate(W["layers"]):
        p = "model.layers.%d." % l
        t[p + "input_layernorm.weight"] = w["n1"]
        t[p + "post_attention_layernorm.weight"] = w["n2"]
        for n in "qkvo":
            t[p + "self_attn.%s_proj.weight" % n] = w[n]
        if "qn" in w:
            t[p + "self_attn.q_norm.weight"], t[p + "self_attn.k_norm.weight"] = w["qn"], w["kn"]
        if l not in spec.moe_layers:
            t[p + "mlp.gate_proj.weight"], t[p + "mlp.up_proj.weight"] = w["gate_p"], w["up_p"]
            t[p + "mlp.down_proj.weight"] = w["down_p"]
            continue
        m = p + ("block_sparse_moe." if layout == "mixtral4" else "mlp.")
        t[m + "gate.weight"] = w["router"]
        if layout == "fused":
            t[m + "experts.gate_up_proj"] = torch.stack(
                [torch.cat([g, u], 0) for g, u in zip(w["gate"], w["up"])])
            t[m + "experts.down_proj"] = torch.stack(w["down"])
        else:
            names = ("w1", "w3", "w2") if layout == "mixtral4" else ("gate_proj", "up_proj", "down_proj")
            for e in range(spec.E):
                q = m + "experts.%d." % e
                t[q + names[0] + ".weight"] = w["gate"][e]
                t[q + names[1] + ".weight"] = w["up"][e]
                t[q + names[2] + ".weight"] = w["down"][e]
    return t


def hf_config(spec, rope_style):
    s = spec
    c = {"hidden_size": s.D, "num_hidden_layers": s.L, "num_attention_heads": s.H,
         "num_key_value_heads": s.KV, "head_dim": s.hd, "rms_norm_eps": s.eps, "vocab_size": s.V,
         "num_experts_per_tok": s.K, "tie_word_embeddings": s.tie, "max_position_embeddings": 256,
         "hidden_act": "silu", "torch_dtype": "float32"}
    if rope_style == "parameters":  # transformers 5
        c["rope_parameters"] = {"rope_type": "default", "rope_theta": s.theta}
    else:
        c["rope_theta"] = s.theta
        c["rope_scaling"] = None
    if s.family == "mixtral":
        c.update(model_type="mixtral", num_local_experts=s.E, intermediate_size=s.I,
                 sliding_window=None, architectures=["MixtralForCausalLM"])
    elif s.family == "qwen3_moe":
        dense = [l for l in range(s.L) if l not in s.moe_layers]
        c.update(model_type="qwen3_moe", num_experts=s.E, moe_intermediate_size=s.I,
                 intermediate_size=s.F, norm_topk_prob=s.renorm, decoder_sparse_step=1,
                 mlp_only_layers=dense, use_sliding_window=False, sliding_window=None,
                 attention_bias=False)
    else:
        c.update(model_type="olmoe", num_experts=s.E, intermediate_size=s.I,
                 norm_topk_prob=s.renorm, clip_qkv=None, attention_bias=False)
    return c


# --- the reference forward ---------------------------------------------------
def rms(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rope(x, pos, theta):  # x [T, heads, hd], NeoX / rotate_half pairing
    hd = x.shape[-1]
    inv = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
    f = pos[:, None].double() * inv[None, :]
    emb = torch.cat([f, f], -1)[:, None, :]
    x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
    return x * emb.cos() + torch.cat([-x2, x1], -1) * emb.sin()


def reference(spec, W, ids):
    """Logits [T, V] and routed counts {layer: [E]} over the whole sequence."""
    s = spec
    T = len(ids)
    x = W["embed"][torch.tensor(ids)]
    pos = torch.arange(T)
    counts, min_gap = {}, float("inf")
    mask = torch.full((T, T), float("-inf"), dtype=torch.float64).triu(1)
    for l, w in enumerate(W["layers"]):
        h = rms(x, w["n1"], s.eps)
        q, k, v = h @ w["q"].T, h @ w["k"].T, h @ w["v"].T
        if s.qk == "full":
            q, k = rms(q, w["qn"], s.eps), rms(k, w["kn"], s.eps)
        q, k, v = q.view(T, s.H, s.hd), k.view(T, s.KV, s.hd), v.view(T, s.KV, s.hd)
        if s.qk == "head":
            q, k = rms(q, w["qn"], s.eps), rms(k, w["kn"], s.eps)
        q, k = rope(q, pos, s.theta), rope(k, pos, s.theta)
        rep = s.H // s.KV
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        att = torch.einsum("thd,shd->hts", q, k) * s.hd ** -0.5 + mask
        o = torch.einsum("hts,shd->thd", att.softmax(-1), v).reshape(T, s.H * s.hd)
        x = x + o @ w["o"].T
        h = rms(x, w["n2"], s.eps)
        if l in s.moe_layers:
            p = (h @ w["router"].T).softmax(-1)
            srt = p.sort(-1, descending=True).values
            min_gap = min(min_gap, float((srt[:, s.K - 1] - srt[:, s.K]).min()))
            topv, topi = p.topk(s.K, -1)
            if s.renorm:
                topv = topv / topv.sum(-1, keepdim=True)
            out = torch.zeros_like(h)
            for e in range(s.E):
                sel = topi == e
                rows = sel.any(-1)
                if not rows.any():
                    continue
                y = (torch.nn.functional.silu(h[rows] @ w["gate"][e].T) * (h[rows] @ w["up"][e].T)) @ w["down"][e].T
                out[rows] += (topv * sel)[rows].sum(-1, keepdim=True) * y
            counts[l] = torch.bincount(topi.flatten(), minlength=s.E).tolist()
        else:
            out = (torch.nn.functional.silu(h @ w["gate_p"].T) * (h @ w["up_p"].T)) @ w["down_p"].T
        x = x + out
    return rms(x, W["norm"], s.eps) @ W["head"].T, counts, min_gap


# --- one case ----------------------------------------------------------------
def run_case(args, name, spec, layout, rope_style, shards, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    W = random_weights(spec, gen)
    if dtype == torch.bfloat16:  # the reference sees exactly the stored bf16 values
        def rb(v):
            return [rb(a) for a in v] if isinstance(v, list) else v.to(torch.bfloat16).double()
        W = {k: ([{n: rb(a) for n, a in w.items()} for w in v] if k == "layers" else rb(v))
             for k, v in W.items()}
        if spec.tie:
            W["head"] = W["embed"]
    directory = os.path.join(args.workdir, name)
    save_checkpoint(directory, hf_config(spec, rope_style), hf_names(spec, W, layout), shards, dtype)
    prompt = torch.randint(0, spec.V, (12,), generator=gen).tolist()
    steps = 8
    out = os.path.join(args.workdir, name + ".json")
    cmd = [args.engine, "--model", directory, "--tokens", ",".join(map(str, prompt)), "--steps",
           str(steps), "--full-logits", "--prefill-rows", "all", "--threads", "1", "--out", out]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        return [name + ": engine failed (%d): %s" % (r.returncode, r.stderr.strip())], {}
    run = json.load(open(out))
    seq = prompt + run["generated"][:-1]
    ref_logits, ref_counts, min_gap = reference(spec, W, seq)
    errors, worst = [], 0.0
    for row in run["logits"]:
        p = row["position"]
        e = torch.tensor(row["logits"], dtype=torch.float64)
        rel = float((e - ref_logits[p]).abs().max() / ref_logits[p].abs().max())
        worst = max(worst, rel)
        if rel > REL_TOL:
            errors.append("%s: position %d logits max rel error %.3g > %g" % (name, p, rel, REL_TOL))
    for i, tok in enumerate(run["generated"]):
        want = int(ref_logits[len(prompt) - 1 + i].argmax())
        if tok != want:
            errors.append("%s: generated token %d is %d, the reference's argmax %d" % (name, i, tok, want))
    got = {m["layer"]: m["routed"] for m in run["moe_layers"]}
    if sorted(got) != sorted(ref_counts):
        errors.append("%s: MoE layers %s, reference %s" % (name, sorted(got), sorted(ref_counts)))
    for l, c in ref_counts.items():
        if got.get(l) != c:
            errors.append("%s: layer %d routed %s, reference %s (smallest top-k gap %.2g)"
                          % (name, l, got.get(l), c, min_gap))
    if sum(sum(c) for c in got.values()) != len(seq) * spec.K * len(ref_counts):
        errors.append("%s: routed counts do not sum to tokens x k x layers" % name)
    stats = {"rows": len(run["logits"]), "max_rel": worst, "min_gap": min_gap,
             "gemm": run["gemm_dtype"], "dtype": run["checkpoint_dtype"]}
    return errors, stats


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--engine", required=True, help="path of inferscope-hf-run")
    ap.add_argument("--workdir", required=True)
    args = ap.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    torch.set_num_threads(1)
    mixtral = Spec("mixtral", D=64, L=3, H=4, KV=2, hd=16, V=300, E=8, K=2, I=32, F=0, eps=1e-5,
                   theta=1e6, renorm=True, qk="none", moe_layers={0, 1, 2}, tie=False)
    mixtral_tied = Spec(**{**mixtral.__dict__, "tie": True})
    qwen = Spec("qwen3_moe", D=64, L=3, H=4, KV=2, hd=32, V=280, E=8, K=3, I=24, F=48, eps=1e-6,
                theta=1e6, renorm=True, qk="head", moe_layers={1, 2}, tie=False)
    olmoe = Spec("olmoe", D=64, L=2, H=4, KV=4, hd=16, V=270, E=8, K=2, I=32, F=0, eps=1e-5,
                 theta=1e4, renorm=False, qk="full", moe_layers={0, 1}, tie=False)
    cases = [
        ("mixtral_fused_f32", mixtral, "fused", "parameters", 1, torch.float32, 1),
        ("mixtral_w123_sharded_tied", mixtral_tied, "mixtral4", "theta", 3, torch.float32, 2),
        ("mixtral_fused_bf16", mixtral, "fused", "parameters", 2, torch.bfloat16, 3),
        ("qwen3_moe_fused_f32", qwen, "fused", "parameters", 1, torch.float32, 4),
        ("olmoe_proj_f32", olmoe, "proj4", "theta", 1, torch.float32, 5),
    ]
    failures = []
    print("%-28s %5s %6s %5s %10s %10s  %s" % ("case", "dtype", "gemm", "rows", "max_rel", "topk_gap", "result"))
    for case in cases:
        errors, st = run_case(args, *case)
        failures += errors
        if st:
            print("%-28s %5s %6s %5d %10.2e %10.2e  %s" % (case[0], st["dtype"], st["gemm"], st["rows"],
                  st["max_rel"], st["min_gap"], "ok" if not errors else "MISMATCH"))
        else:
            print("%-28s  FAILED" % case[0])
    for e in failures:
        print("  " + e)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()

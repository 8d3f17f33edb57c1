#!/usr/bin/env python3
"""The demo model in PyTorch eager, with the engine's own weights.

Loads reference_engine/models/<model>.json and the safetensors file that
gpu_bench wrote (Weights::save: F32 tensors named as in weights.hpp), runs the
same forward as reference_engine/src/model (RMSNorm, GQA attention with NeoX
RoPE, Mamba-style selective SSM, SwiGLU dense and MoE feed-forward with top-k
routing and capacity in (token, choice) order), and times prefill and greedy
decode at batch 1, 8 and 64 exactly as gpu_bench does (B prompts of 128 bytes
in one prefill, then B-row decode steps).

"Eager" means what a straightforward PyTorch implementation does: the SSM
scan is a Python loop over time (as mamba's selective_scan_ref), the MoE loops
over experts with index_add_ (as Mixtral's reference). Two precisions are
timed: fp32 (TF32 matmuls) and bf16; the faster is the baseline. The fp32 run
also checks the engine's prefill logits (from gpu_bench's JSON) for agreement.

  torch_reference.py --model M.json --weights W.safetensors --json out.json
                     [--engine-json gpu_bench.json] [--quick]
"""
import argparse
import json
import math
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

VOCAB = 260


def load_config(path):
    c = json.load(open(path))
    d = {
        "d_model": 64, "dense_hidden": 128, "norm_eps": 1e-5,
        "attention": {"n_heads": 4, "n_kv_heads": 2, "head_dim": 16, "rope_theta": 10000.0},
        "ssm": {"d_inner": 128, "d_state": 8, "dt_rank": 8},
        "moe": {"experts": 8, "top_k": 2, "expert_hidden": 64, "shared_experts": 0, "gate": "softmax",
                "renormalize": True, "scaling": 1.0, "capacity_factor": 1.25, "overflow": "drop"},
    }
    for k, v in d.items():
        if isinstance(v, dict):
            v = dict(v)
            v.update(c.get(k, {}))
            c[k] = v
        else:
            c.setdefault(k, v)
    return c


def prompt_bytes(seq, length):
    """The same pseudo-random printable bytes as gpu_bench's prompt_bytes()."""
    x = (2654435761 * (seq + 1)) & 0xFFFFFFFF
    out = []
    for _ in range(length):
        x = (x * 1664525 + 1013904223) & 0xFFFFFFFF
        out.append(33 + ((x >> 8) % 94))
    return out


def rms_norm(x, w, eps):
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * w.float()).to(x.dtype)


class TorchModel:
    def __init__(self, cfg, weights, device, dtype):
        self.c, self.dtype, self.dev = cfg, dtype, device
        self.W = {k: v.to(device=device, dtype=dtype if v.dim() == 2 and v.shape[0] > 1 else torch.float32)
                  for k, v in weights.items()}
        self.mixers, self.ffns = cfg["layers"]["mixers"], cfg["layers"]["ffns"]
        a = cfg["attention"]
        hd = a["head_dim"]
        inv = a["rope_theta"] ** (-2.0 * torch.arange(hd // 2, dtype=torch.float32) / hd)
        self.inv_freq = inv.to(device)

    def w(self, name):
        return self.W[name]

    def reset(self, B, max_len):
        a, s = self.c["attention"], self.c["ssm"]
        self.kc, self.vc, self.state = {}, {}, {}
        for l, m in enumerate(self.mixers):
            if m == "A":
                self.kc[l] = torch.zeros(B, a["n_kv_heads"], max_len, a["head_dim"], device=self.dev, dtype=self.dtype)
                self.vc[l] = torch.zeros_like(self.kc[l])
            else:
                self.state[l] = torch.zeros(B, s["d_inner"], s["d_state"], device=self.dev, dtype=torch.float32)
        self.len = 0

    def rope(self, x, pos):  # x [B, T, H, hd], NeoX halves
        ang = pos.float()[:, None] * self.inv_freq[None, :]  # [T, hd/2]
        cos, sin = ang.cos()[None, :, None, :], ang.sin()[None, :, None, :]
        half = x.shape[-1] // 2
        a, b = x[..., :half].float(), x[..., half:].float()
        return torch.cat([a * cos - b * sin, a * sin + b * cos], -1).to(x.dtype)

    def attention(self, l, h, pos):
        a = self.c["attention"]
        H, KVH, hd = a["n_heads"], a["n_kv_heads"], a["head_dim"]
        B, T, _ = h.shape
        qkv = h @ self.w(f"l{l}.wqkv").T
        q = qkv[..., : H * hd].view(B, T, H, hd)
        k = qkv[..., H * hd: (H + KVH) * hd].view(B, T, KVH, hd)
        v = qkv[..., (H + KVH) * hd:].view(B, T, KVH, hd)
        q, k = self.rope(q, pos), self.rope(k, pos)
        p0 = self.len
        self.kc[l][:, :, p0:p0 + T] = k.transpose(1, 2)
        self.vc[l][:, :, p0:p0 + T] = v.transpose(1, 2)
        K = self.kc[l][:, :, : p0 + T].repeat_interleave(H // KVH, dim=1)
        V = self.vc[l][:, :, : p0 + T].repeat_interleave(H // KVH, dim=1)
        mask = torch.arange(p0 + T, device=self.dev)[None, :] <= pos[:, None]  # [T, keys]
        o = F.scaled_dot_product_attention(q.transpose(1, 2), K, V, attn_mask=mask, scale=1.0 / math.sqrt(hd))
        return o.transpose(1, 2).reshape(B, T, H * hd) @ self.w(f"l{l}.wo").T

    def ssm(self, l, h):
        s = self.c["ssm"]
        Di, N, R = s["d_inner"], s["d_state"], s["dt_rank"]
        xz = h @ self.w(f"l{l}.w_in").T
        xs, z = xz[..., :Di], xz[..., Di:]
        proj = xs @ self.w(f"l{l}.w_x").T
        dt = proj[..., :R] @ self.w(f"l{l}.w_dt").T
        Bm, Cm = proj[..., R:R + N].float(), proj[..., R + N:].float()
        delta = F.softplus(dt.float() + self.w(f"l{l}.dt_bias").float().view(-1))
        A = self.w(f"l{l}.A").float()
        xf = xs.float()
        st = self.state[l]
        ys = []
        for t in range(h.shape[1]):  # selective_scan_ref style
            d = delta[:, t]
            st = torch.exp(d[..., None] * A) * st + (d * xf[:, t])[..., None] * Bm[:, t, None, :]
            ys.append((st * Cm[:, t, None, :]).sum(-1))
        self.state[l] = st
        y = torch.stack(ys, 1) + self.w(f"l{l}.Dskip").float().view(-1) * xf
        y = y.to(h.dtype) * F.silu(z)
        return y @ self.w(f"l{l}.w_out").T

    def swiglu(self, h, gu_w, down_w):
        gu = h @ gu_w.T
        Fh = gu.shape[-1] // 2
        return (gu[..., Fh:] * F.silu(gu[..., :Fh])) @ down_w.T

    def moe(self, l, h):
        m = self.c["moe"]
        E, K, Fe, D = m["experts"], m["top_k"], m["expert_hidden"], self.c["d_model"]
        x = h.reshape(-1, D)
        T = x.shape[0]
        logits = (x @ self.w(f"l{l}.router").T).float()
        scores = torch.sigmoid(logits) if m["gate"] == "sigmoid" else torch.softmax(logits, -1)
        key = scores
        if f"l{l}.router_bias" in self.W:
            key = scores + self.W[f"l{l}.router_bias"].float().view(-1)
        topi = torch.topk(key, K, dim=-1).indices
        wts = scores.gather(1, topi)
        if m["renormalize"]:
            wts = wts / wts.sum(-1, keepdim=True)
        wts = wts * m.get("scaling", 1.0)
        cf = m["capacity_factor"]
        flat = topi.reshape(-1)
        keep = torch.ones_like(flat, dtype=torch.bool)
        if cf > 0:
            cap = max(1, math.ceil(cf * T * K / E))
            pos = (F.one_hot(flat, E).cumsum(0).gather(1, flat[:, None]).squeeze(1) - 1)
            keep = pos < cap
        if m.get("overflow", "drop") != "drop":
            raise SystemExit("torch_reference: only overflow=drop is implemented")
        out = torch.zeros_like(x)
        if m.get("shared_experts", 0) > 0:
            out += self.swiglu(x, self.w(f"l{l}.shared_gu"), self.w(f"l{l}.shared_down"))
        gu_all = self.w(f"l{l}.experts_gu").view(E, 2 * Fe, D)
        dn_all = self.w(f"l{l}.experts_down").view(E, D, Fe)
        tok = torch.arange(T, device=self.dev).repeat_interleave(K)
        wflat = wts.reshape(-1).to(x.dtype)
        for e in range(E):  # Mixtral-style expert loop (a host sync per expert)
            sel = torch.nonzero((flat == e) & keep).squeeze(1)
            if sel.numel() == 0:
                continue
            ti = tok[sel]
            ye = self.swiglu(x[ti], gu_all[e], dn_all[e])
            out.index_add_(0, ti, ye * wflat[sel, None])
        return out.view_as(h)

    def forward(self, tokens):  # tokens [B, T] (int64) -> last-row logits [B, V]
        B, T = tokens.shape
        eps = self.c["norm_eps"]
        pos = torch.arange(self.len, self.len + T, device=self.dev)
        x = self.w("embed")[tokens].to(self.dtype)
        for l in range(len(self.mixers)):
            h = rms_norm(x, self.w(f"l{l}.norm1"), eps)
            x = x + (self.attention(l, h, pos) if self.mixers[l] == "A" else self.ssm(l, h))
            h = rms_norm(x, self.w(f"l{l}.norm2"), eps)
            if self.ffns[l] == "M":
                x = x + self.moe(l, h)
            else:
                x = x + self.swiglu(h, self.w(f"l{l}.w_gu"), self.w(f"l{l}.w_down"))
        self.len += T
        xl = rms_norm(x[:, -1], self.w("norm_f"), eps)
        return (xl @ self.w("head").T).float()


def bench(model, B, prompt, steps, reps):
    prompts = torch.tensor([prompt_bytes(s, prompt) for s in range(B)], device=model.dev)
    pre, dec, first = [], [], None
    for _ in range(reps):
        model.reset(B, prompt + steps + 1)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        logits = model.forward(prompts)
        nxt = logits.argmax(-1)
        torch.cuda.synchronize()
        pre.append(time.perf_counter() - t0)
        if first is None:
            first = logits
        t0 = time.perf_counter()
        for _ in range(steps):
            logits = model.forward(nxt[:, None])
            nxt = logits.argmax(-1)
        torch.cuda.synchronize()
        dec.append(time.perf_counter() - t0)
    return B * prompt / statistics.median(pre), B * steps / statistics.median(dec), first


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--json", default="")
    ap.add_argument("--engine-json", default="")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("torch_reference: no CUDA device for torch", file=sys.stderr)
        return 3
    torch.backends.cuda.matmul.allow_tf32 = True
    cfg = load_config(args.model)
    weights = load_file(args.weights)
    prompt, steps, reps = 128, (16 if args.quick else 48), (2 if args.quick else 3)
    out = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "throughput": {}, "by_dtype": {}}
    engine = {}
    if args.engine_json and os.path.exists(args.engine_json):
        engine = json.load(open(args.engine_json))
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        m = TorchModel(cfg, weights, "cuda", dtype)
        bench(m, 1, prompt, 2, 1)  # warm-up
        res = {}
        print(f"torch eager {name}: {'batch':>6s} {'prefill tok/s':>14s} {'decode tok/s':>14s}")
        for B in (1, 8, 64):
            p, d, first = bench(m, B, prompt, steps, reps)
            res[f"prefill_b{B}"], res[f"decode_b{B}"] = p, d
            print(f"torch eager {name}: {B:6d} {p:14.1f} {d:14.1f}", flush=True)
            if B == 8 and name == "fp32" and engine.get("reference"):
                ref = torch.tensor(engine["reference"]["last_logits"], device="cuda")
                err = ((first - ref).norm(dim=-1) / ref.norm(dim=-1)).max().item()
                same = (first.argmax(-1) == ref.argmax(-1)).float().mean().item()
                out["max_logit_rel_err"], out["argmax_agreement"] = err, same
                print(f"engine (cuda, bf16 GEMMs) vs torch fp32 prefill logits: max rel L2 err {err:.3e}, "
                      f"argmax agreement {same:.2f}")
        out["by_dtype"][name] = res
    for k in out["by_dtype"]["fp32"]:
        out["throughput"][k] = max(out["by_dtype"][d][k] for d in out["by_dtype"])
    if args.json:
        json.dump(out, open(args.json, "w"), indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""The reference engine at a real size, side by side with PyTorch (issue 18 parts 3 and 5).
Run by `scripts/gpu-check --scale` on the GPU machine (torch 2.x + transformers 5, no hub).

Stages, each its own process with its own timeout (a hung path cannot eat the device time;
the result names every stage as ok / failed / timeout / skipped):

  build    an OLMoE-1B-7B-sized OlmoeConfig (hidden 2048, 16 layers, 64 experts top-8,
           expert width 1024, 16 heads, vocab 50304: 6.9B total, 1.3B active parameters),
           random bf16 weights made on the GPU (transformers' init skipped, torch.nn.init
           on the device), save_pretrained (safetensors shards). Reused while its stamp
           matches. Without transformers (the CPU dry run) the same tensor names and
           config.json are written by hand.
  bw       device-to-device copy bandwidth: 1 GiB copied 20 times, timed with CUDA events,
           counted read + write (as bench/gpu/gpu_bench counts it).
  engine   bench/engine/hf_bench on the checkpoint (the engine's gpu_bench method:
           Model::forward, B prompts in one prefill step, then B-row greedy decode steps
           with the logits downloaded every step); the process's device memory is sampled
           (nvidia-smi) while it runs, and its host peak RSS.
  engine+graphs  the same hf_bench process after the engine stage (hf_bench --modes
           eager,graphs: the checkpoint loads once): asynchronous routing + decode steps
           replayed as CUDA graphs (Model::set_step_graphs); its own timeout (--cap-graphs,
           from hf_bench's "mode graphs start" line). Rows carry host_syncs_per_step and
           graph_launches, the stage graph_error. On the CPU backend (dry run) there are no
           graphs: the padded graph-path steps run eagerly and the table says so.
  eager    transformers generate(), greedy, static cache (dynamic if static fails),
           compilation disabled.
  compile  transformers generate() with the decode step compiled by
           torch.compile(mode="reduce-overhead") (generate's own compile of the decode
           forward, static cache, decode experts in "batched_mm", the backend the
           transformers docs list as CUDA-graph safe, loaded as grouped_mm for the prefill);
           a manual torch.compile of model.forward if generate does not compile.

Same prompts everywhere (seeded token ids, written to the workdir). Torch prefill tok/s:
B * P / t(generate 1 token); decode tok/s: B * N / (t(generate N + 1) - t(generate 1)).
Floor: bytes a batch-1 decode step must read in bf16 (attention, norms, router, top-k
experts of every layer, one embedding row, lm_head) / the measured bandwidth.

Writes --json and prints the table last. --tiny: a small config, short runs, on the CPU
when no GPU is there (Debian's python3 has torch but not transformers: then only build
(hand-written), engine (cpu backend) and the table run; eager/compile are skipped).
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time

HERE = os.path.abspath(__file__)

# OLMoE-1B-7B (allenai/OLMoE-1B-7B-0924 config.json; transformers' OlmoeConfig defaults
# except intermediate_size, which the class defaults to 2048 and the released model sets to 1024).
SCALE = dict(vocab_size=50304, hidden_size=2048, intermediate_size=1024, num_hidden_layers=16,
             num_attention_heads=16, num_key_value_heads=16, num_experts=64,
             num_experts_per_tok=8, max_position_embeddings=4096, rms_norm_eps=1e-5,
             norm_topk_prob=False, tie_word_embeddings=False)
TINY = dict(vocab_size=512, hidden_size=128, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=4, num_experts=8, num_experts_per_tok=2,
            max_position_embeddings=256, rms_norm_eps=1e-5, norm_topk_prob=False,
            tie_word_embeddings=False)


# [SECTION] Model arithmetic

def param_counts(c):
    """(total, active) parameters of an OLMoE config (q/k norms over the whole projection)."""
    D, V, L = c["hidden_size"], c["vocab_size"], c["num_hidden_layers"]
    H, KV, I = c["num_attention_heads"], c["num_key_value_heads"], c["intermediate_size"]
    E, k = c["num_experts"], c["num_experts_per_tok"]
    hd = D // H
    attn = D * H * hd + 2 * D * KV * hd + H * hd * D + H * hd + KV * hd
    dense_layer = attn + 2 * D + E * D
    total = 2 * V * D + D + L * (dense_layer + E * 3 * I * D)
    active = 2 * V * D + D + L * (dense_layer + k * 3 * I * D)
    return total, active


def floor_bytes(c):
    """Bytes a batch-1 decode step must read, every weight in bf16: attention, norms, router
    and the top-k experts of each layer, one embedding row, the final norm and lm_head."""
    D, V, L = c["hidden_size"], c["vocab_size"], c["num_hidden_layers"]
    H, KV, I = c["num_attention_heads"], c["num_key_value_heads"], c["intermediate_size"]
    E, k = c["num_experts"], c["num_experts_per_tok"]
    hd = D // H
    per_layer = (D * H * hd + 2 * D * KV * hd + H * hd * D + H * hd + KV * hd + 2 * D + E * D
                 + k * 3 * I * D)
    return 2 * (L * per_layer + D + D + V * D)


# [SECTION] Stage: build the checkpoint

def write_safetensors(path, tensors):
    """A safetensors file from {name: torch tensor} (bf16 stays bf16): 8-byte header length,
    JSON header (8-byte aligned), raw little-endian data. For the CPU dry run without the
    safetensors / transformers packages."""
    import torch
    codes = {torch.bfloat16: ("BF16", torch.int16), torch.float32: ("F32", None)}
    header, blobs, off = {"__metadata__": {"format": "pt"}}, [], 0
    for name, t in tensors.items():
        code, view = codes[t.dtype]
        t = t.detach().contiguous().cpu()
        raw = (t.view(view) if view is not None else t).numpy().tobytes()
        header[name] = {"dtype": code, "shape": list(t.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(len(h).to_bytes(8, "little"))
        f.write(h)
        for b in blobs:
            f.write(b)


def init_(name, p, std=0.02):
    # Norm weights 1, everything else N(0, std): on whatever device p lives (no host copy).
    if "norm" in name:
        p.fill_(1.0)
    else:
        p.normal_(0.0, std)


def build_by_hand(c, directory, device):
    """The tensors and config.json transformers 5 writes for OLMoE (fused experts)."""
    import torch
    torch.manual_seed(0)
    D, V, L = c["hidden_size"], c["vocab_size"], c["num_hidden_layers"]
    H, KV, I = c["num_attention_heads"], c["num_key_value_heads"], c["intermediate_size"]
    E = c["num_experts"]
    hd = D // H
    shapes = {"model.embed_tokens.weight": [V, D], "model.norm.weight": [D],
              "lm_head.weight": [V, D]}
    for l in range(L):
        p = "model.layers.%d." % l
        shapes.update({
            p + "input_layernorm.weight": [D], p + "post_attention_layernorm.weight": [D],
            p + "self_attn.q_proj.weight": [H * hd, D], p + "self_attn.k_proj.weight": [KV * hd, D],
            p + "self_attn.v_proj.weight": [KV * hd, D], p + "self_attn.o_proj.weight": [D, H * hd],
            p + "self_attn.q_norm.weight": [H * hd], p + "self_attn.k_norm.weight": [KV * hd],
            p + "mlp.gate.weight": [E, D], p + "mlp.experts.gate_up_proj": [E, 2 * I, D],
            p + "mlp.experts.down_proj": [E, D, I]})
    tensors = {}
    with torch.no_grad():
        for name, shape in shapes.items():
            t = torch.empty(shape, dtype=torch.float32, device=device)
            init_(name, t)
            tensors[name] = t.to(torch.bfloat16)
    os.makedirs(directory, exist_ok=True)
    write_safetensors(os.path.join(directory, "model.safetensors"), tensors)
    cfg = dict(c, model_type="olmoe", architectures=["OlmoeForCausalLM"], hidden_act="silu",
               rope_theta=10000.0, attention_bias=False, clip_qkv=None, dtype="bfloat16")
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    return sum(t.numel() for t in tensors.values()), "by hand (no transformers)"


def build_with_transformers(c, directory, device):
    import torch
    import transformers
    from transformers import AutoModelForCausalLM
    cfg = transformers.OlmoeConfig(**c, clip_qkv=None)
    # Skip transformers' init (it would draw every weight, on the host in some versions):
    # construct on the device in bf16, then torch.nn.init-style draws there.
    ctx = None
    for mod, attr in (("transformers.initialization", "no_init_weights"),
                      ("transformers.modeling_utils", "no_init_weights")):
        try:
            ctx = getattr(__import__(mod, fromlist=[attr]), attr)
            break
        except (ImportError, AttributeError):
            pass
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    model = None
    try:
        with torch.device(device):
            if ctx is not None:
                try:
                    with ctx():
                        model = AutoModelForCausalLM.from_config(cfg)
                except Exception as ex:  # noqa: BLE001 - another signature: init normally
                    print("build: no_init_weights unusable here (%s: %s); transformers' init runs"
                          % (type(ex).__name__, str(ex)[:200]))
            if model is None:
                model = AutoModelForCausalLM.from_config(cfg)
    finally:
        torch.set_default_dtype(old)
    model = model.to(device=device, dtype=torch.bfloat16)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            init_(name, p)
    n = sum(p.numel() for p in model.parameters())
    names = sorted(k for k, _ in model.named_parameters())
    model.save_pretrained(directory, max_shard_size="5GB")
    return n, "transformers %s save_pretrained (%d tensors, e.g. %s)" % (
        transformers.__version__, len(names), [x for x in names if ".experts." in x][:2])


def stage_build(a):
    import torch
    c = TINY if a.tiny else SCALE
    directory = os.path.join(a.workdir, "olmoe-" + ("tiny" if a.tiny else "scale"))
    stamp_path = os.path.join(directory, "scale-stamp.json")
    want = {"config": c, "writer": None}
    try:
        import transformers  # noqa: F401
        want["writer"] = "transformers"
    except ImportError:
        want["writer"] = "hand"
    if os.path.exists(stamp_path):
        stamp = json.load(open(stamp_path))
        if stamp.get("config") == c and stamp.get("writer") == want["writer"]:
            print("build: reusing %s (%s)" % (directory, stamp.get("how")))
            return dict(stamp, reused=True, dir=directory)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    t0 = time.time()
    if os.path.isdir(directory):
        for f in os.listdir(directory):
            os.remove(os.path.join(directory, f))
    if want["writer"] == "transformers":
        n, how = build_with_transformers(c, directory, device)
    else:
        n, how = build_by_hand(c, directory, device)
    total, active = param_counts(c)
    files = [f for f in os.listdir(directory) if f.endswith(".safetensors")]
    size = sum(os.path.getsize(os.path.join(directory, f)) for f in files)
    res = dict(want, how=how, dir=directory, params_counted=n, params_total=total,
               params_active=active, checkpoint_bytes=size, files=len(files),
               build_s=time.time() - t0, reused=False)
    if n != total:
        print("build: WARNING the model has %d parameters, the OLMoE arithmetic says %d" % (n, total))
    with open(stamp_path, "w") as f:
        json.dump(res, f)
    print("build: %s in %.0f s: %.3fB parameters (%.3fB active), %.2f GB in %d files"
          % (how, res["build_s"], n / 1e9, active / 1e9, size / 1e9, len(files)))
    return res


# [SECTION] Stage: bandwidth

def stage_bw(a):
    import torch
    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device"}
    n_bytes, n = 1 << 30, 20
    src = torch.empty(n_bytes, dtype=torch.uint8, device="cuda").fill_(1)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    e0.record()
    for _ in range(n):
        dst.copy_(src)
    e1.record()
    e1.synchronize()
    ms = e0.elapsed_time(e1)
    gbps = 2.0 * n_bytes * n / (ms / 1e3) / 1e9  # read + write
    print("bw: %.0f GB/s (1 GiB device-to-device copy x %d, read + write)" % (gbps, n))
    return {"d2d_GBps": gbps, "bytes": n_bytes, "copies": n, "gpu": torch.cuda.get_device_name()}


# [SECTION] Stages: transformers eager and compiled

def load_hf(directory, experts=None):
    import torch
    import transformers
    from transformers import AutoModelForCausalLM
    key = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
    kw = {key: torch.bfloat16}
    if experts:
        kw["experts_implementation"] = experts
    try:
        m = AutoModelForCausalLM.from_pretrained(directory, device_map="cuda", **kw)
    except Exception as ex:  # noqa: BLE001 - e.g. no accelerate, an unknown kwarg: load plainly
        print("load: device_map='cuda' or experts_implementation refused (%s: %s); retrying "
              "plainly" % (type(ex).__name__, str(ex)[:200]))
        kw.pop("experts_implementation", None)
        m = AutoModelForCausalLM.from_pretrained(directory, **kw).to("cuda")
    m.eval()
    m.generation_config.eos_token_id = None  # never stop early: N tokens every time
    m.generation_config.pad_token_id = 0
    info = {"attn_implementation": getattr(m.config, "_attn_implementation", None)}
    try:
        info["experts_implementation"] = m.get_experts_implementation()
    except Exception:  # noqa: BLE001 - older transformers: no experts interface
        info["experts_implementation"] = getattr(m.config, "_experts_implementation", None)
    return m, info


def time_generate(model, ids, new_tokens, gen_kw):
    import torch
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=new_tokens, **gen_kw)
    torch.cuda.synchronize()
    got = out.shape[1] - ids.shape[1]
    if got != new_tokens:
        raise RuntimeError("generate produced %d tokens, asked for %d" % (got, new_tokens))
    return time.perf_counter() - t0


def save_partial(a, result):
    """What a stage has so far, for the orchestrator when the stage hits its timeout."""
    if a.stage_out:
        with open(a.stage_out + ".partial", "w") as f:
            json.dump(result, f)


def measure_torch(a, model, prompts, gen_kw, label, info):
    import torch
    batches, steps, reps = a.batch_list, a.steps, a.reps
    rows = []
    for B in batches:
        ids = torch.tensor([p for p in prompts[:B]], device="cuda")
        P = ids.shape[1]
        w0 = time.perf_counter()
        time_generate(model, ids, steps + 1, gen_kw)  # warm-up (and, compiled, the capture)
        warm = time.perf_counter() - w0
        t1s, tns = [], []
        for _ in range(reps):
            t1s.append(time_generate(model, ids, 1, gen_kw))
            tns.append(time_generate(model, ids, steps + 1, gen_kw))
        t1, tn = sorted(t1s)[len(t1s) // 2], sorted(tns)[len(tns) // 2]
        dec = max(tn - t1, 1e-9)
        r = {"batch": B, "prefill_tps": B * P / t1, "prefill_ms": t1 * 1e3,
             "decode_tps": B * steps / dec, "decode_step_ms": dec / steps * 1e3,
             "warmup_s": warm, "max_memory_allocated": torch.cuda.max_memory_allocated()}
        print("%s: batch %3d  prefill %10.1f tok/s  decode %10.1f tok/s  step %.3f ms  (warm-up %.1f s)"
              % (label, B, r["prefill_tps"], r["decode_tps"], r["decode_step_ms"], warm))
        rows.append(r)
        save_partial(a, dict(info, rows=rows))
    return rows


def static_or_dynamic(model, prompts, a, gen_kw, label, info, allow_dynamic=True):
    """The static cache where this transformers takes it, else (allow_dynamic) the dynamic one."""
    for cache in ("static", None) if allow_dynamic else ("static",):
        kw = dict(gen_kw)
        if cache:
            kw["cache_implementation"] = cache
        try:
            rows = measure_torch(a, model, prompts, kw, label,
                                 dict(info, cache=cache or "dynamic"))
            return rows, cache or "dynamic"
        except Exception as ex:  # noqa: BLE001 - reported, then the next cache is tried
            if cache is None or not allow_dynamic:
                raise
            print("%s: static cache failed (%s: %s); trying the dynamic cache"
                  % (label, type(ex).__name__, str(ex)[:300]))
    raise AssertionError("unreachable")


def stage_eager(a):
    import torch
    import transformers
    model, info = load_hf(a.checkpoint)
    prompts = json.load(open(os.path.join(a.workdir, "prompts.json")))
    # generate() compiles the decode forward by itself when the cache is static (transformers
    # >= 4.5x): off here. A version without the flag has no automatic compile either.
    model.generation_config.disable_compile = True
    info.update(transformers=transformers.__version__, torch=torch.__version__,
                compile="disabled (generation_config.disable_compile)")
    rows, cache = static_or_dynamic(model, prompts, a, {}, "eager", info)
    # Proof that nothing was compiled behind this path's back: dynamo's counters stay empty.
    try:
        import torch._dynamo
        frames = {k: int(v) for k, v in torch._dynamo.utils.counters["stats"].items()}
    except Exception:  # noqa: BLE001 - informational only
        frames = None
    return dict(info, rows=rows, cache=cache, dynamo_stats=frames)


def stage_compile(a):
    import torch
    import torch._dynamo
    import transformers
    # grouped_mm: prefill in grouped GEMMs; generate() switches the decode stage to batched_mm
    # (transformers' experts docs: "decode-stage switching"), the backend CUDA graphs take.
    # batched_mm for the prefill too would copy each token's 8 experts' weights: 100 GB at B=8.
    model, info = load_hf(a.checkpoint, experts="grouped_mm")
    prompts = json.load(open(os.path.join(a.workdir, "prompts.json")))
    how = None
    try:
        from transformers import CompileConfig
        model.generation_config.compile_config = CompileConfig(mode="reduce-overhead",
                                                               fullgraph=False)
        how = "generate()'s compile of the decode forward, CompileConfig(mode='reduce-overhead')"
    except Exception as ex:  # noqa: BLE001 - no CompileConfig: compile by hand below
        print("compile: no CompileConfig (%s)" % ex)
    if how is not None:
        # Probe: does generate compile here (static cache, CUDA)? Dynamo counts its frames.
        # Batch 1 with the measurement's token count: the same cache shape, so this compile
        # is also batch 1's warm-up.
        ids = torch.tensor(prompts[:1], device="cuda")
        before = sum(torch._dynamo.utils.counters["stats"].values())
        try:
            t0 = time.perf_counter()
            time_generate(model, ids, a.steps + 1, {"cache_implementation": "static"})
            print("compile: first generate (compiling) %.1f s" % (time.perf_counter() - t0))
        except Exception as ex:  # noqa: BLE001 - reported; the manual path follows
            print("compile: generate with compile_config failed (%s: %s)"
                  % (type(ex).__name__, str(ex)[:300]))
            how = None
        if how is not None and sum(torch._dynamo.utils.counters["stats"].values()) == before:
            print("compile: generate did not compile (no dynamo frames); compiling by hand")
            how = None
    if how is None:
        model.forward = torch.compile(model.forward, mode="reduce-overhead", fullgraph=False)
        model.generation_config.disable_compile = True  # not compiled twice
        how = "torch.compile(model.forward, mode='reduce-overhead') (prefill compiled too)"
    info.update(compile=how, transformers=transformers.__version__, torch=torch.__version__)
    # Static cache only: generate() compiles only with a static cache, so a dynamic-cache
    # fallback would measure eager under this path's name.
    rows, cache = static_or_dynamic(model, prompts, a, {}, "compile", info, allow_dynamic=False)
    stats = {k: int(v) for k, v in torch._dynamo.utils.counters["stats"].items()}
    breaks = sum(torch._dynamo.utils.counters["graph_break"].values())
    return dict(info, rows=rows, cache=cache, dynamo_stats=stats, graph_breaks=breaks)


STAGES = {"build": stage_build, "bw": stage_bw, "eager": stage_eager, "compile": stage_compile}


# [SECTION] Orchestration: each stage its own process group, killed whole at its timeout

def run_capped(cmd, cap_s, label, sampler=None, phases=None, hard_cap_s=None):
    """(status, rc, last lines, phase). Streams the child's output prefixed with its label.

    phases: [(marker, cap_s), ...]: when a line of the child contains a marker, the running
    timeout restarts at that phase's cap (hf_bench --modes prints "hf_bench: mode NAME start"),
    so one process gets a timeout per phase; hard_cap_s bounds them all (the budget).
    phase: the marker of the phase that was running at the end ("" before the first)."""
    t0 = time.time()
    hard = t0 + (hard_cap_s if hard_cap_s is not None else cap_s)
    state = {"deadline": min(t0 + cap_s, hard), "phase": ""}
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True, bufsize=1)
    tail = []

    def pump():
        for line in p.stdout:
            line = line.rstrip("\n")
            print("  [%s] %s" % (label, line), flush=True)
            tail.append(line)
            del tail[:-20]
            for marker, cap in phases or ():
                if marker in line:
                    state["deadline"] = min(time.time() + cap, hard)
                    state["phase"] = marker

    th = threading.Thread(target=pump, daemon=True)
    th.start()
    stop = threading.Event()
    st = None
    if sampler is not None:
        st = threading.Thread(target=sampler, args=(p.pid, stop), daemon=True)
        st.start()
    status = None
    while status is None:
        try:
            rc = p.wait(timeout=max(0.05, min(1.0, state["deadline"] - time.time())))
            status = "ok" if rc == 0 else "failed"
        except subprocess.TimeoutExpired:
            if time.time() >= state["deadline"]:
                os.killpg(p.pid, signal.SIGKILL)
                rc = p.wait()
                status = "timeout"
    stop.set()
    th.join(5)
    if st is not None:
        st.join(5)
    return status, rc, tail, state["phase"]


class MemorySampler:
    """Samples, every 0.5 s while the engine runs: the device's used memory (nvidia-smi; minus
    the baseline before the start, so the engine's whole footprint, context included), the
    process's own used_memory when nvidia-smi lists it, and its host VmHWM."""

    def __init__(self):
        self.base = self._gpu_used()
        self.peak_gpu, self.peak_proc, self.vmhwm_kb = None, None, None

    @staticmethod
    def _smi(args):
        try:
            r = subprocess.run(["nvidia-smi"] + args + ["--format=csv,noheader,nounits"],
                               capture_output=True, text=True, timeout=10)
            return r.stdout.strip().splitlines() if r.returncode == 0 else []
        except (OSError, subprocess.TimeoutExpired):
            return []

    def _gpu_used(self):
        lines = self._smi(["--query-gpu=memory.used"])
        try:
            return float(lines[0]) * 2**20
        except (IndexError, ValueError):
            return None

    def __call__(self, pid, stop):
        while not stop.is_set():
            g = self._gpu_used()
            if g is not None:
                self.peak_gpu = max(self.peak_gpu or 0, g)
            for line in self._smi(["--query-compute-apps=pid,used_memory"]):
                parts = [x.strip() for x in line.split(",")]
                if len(parts) == 2 and parts[0] == str(pid):
                    try:
                        self.peak_proc = max(self.peak_proc or 0, float(parts[1]) * 2**20)
                    except ValueError:
                        pass
            try:
                for line in open("/proc/%d/status" % pid):
                    if line.startswith("VmHWM:"):
                        self.vmhwm_kb = max(self.vmhwm_kb or 0, int(line.split()[1]))
            except OSError:
                pass
            stop.wait(0.5)

    def result(self):
        delta = (self.peak_gpu - self.base) if self.peak_gpu is not None and self.base is not None \
            else None
        return {"device_used_delta_bytes": delta, "device_used_baseline_bytes": self.base,
                "process_used_bytes": self.peak_proc,
                "host_peak_rss_bytes": self.vmhwm_kb * 1024 if self.vmhwm_kb else None}


def fmt(v, f="%.1f"):
    return f % v if isinstance(v, (int, float)) else "-"


def table(res, batches):
    lines = []
    hdr = "%-44s" % "path" + "".join("%13s" % ("prefill B=%d" % b) for b in batches) + \
        "".join("%13s" % ("decode B=%d" % b) for b in batches) + "%12s" % "B=1 step ms"
    lines.append("tok/s, same checkpoint and prompts (%s)" % res.get("gpu", "?"))
    lines.append(hdr)
    for key, name in (("engine", "engine (hf_bench, eager steps)"),
                      ("engine+graphs", "engine+graphs (async routing, CUDA graphs)"),
                      ("eager", "transformers eager generate()"),
                      ("compile", "torch.compile reduce-overhead (decode)")):
        s = res["stages"].get(key, {})
        rows = {r["batch"]: r for r in s.get("rows", [])}
        label = name
        if key in ("eager", "compile") and s.get("cache"):
            label += " [%s]" % s["cache"]
        if s.get("graphs_eager"):  # no graphs on this backend (cpu): the padded steps, eagerly
            label = "engine+graphs [%s: no graphs, eager]" % s.get("backend", "?")
        if s.get("status") != "ok":  # short name + why; rows a timed-out stage finished still show
            short = {"engine": "engine", "engine+graphs": "engine+graphs", "eager": "tf eager",
                     "compile": "torch.compile"}[key]
            label = "%s: %s%s" % (short, s.get("status", "not run"),
                                  " (partial)" if s.get("partial") else "")
        line = "%-44s" % label[:44]
        line += "".join("%13s" % fmt(rows.get(b, {}).get("prefill_tps")) for b in batches)
        line += "".join("%13s" % fmt(rows.get(b, {}).get("decode_tps")) for b in batches)
        line += "%12s" % fmt(rows.get(1, {}).get("decode_step_ms"), "%.3f")
        lines.append(line)
    fl = res.get("floor", {})
    if fl:
        lines.append("")
        lines.append("HBM floor of a B=1 decode step: %.3f GB of bf16 weights / %s GB/s = %s us"
                     % (fl["bytes"] / 1e9, fmt(fl.get("d2d_GBps"), "%.0f"),
                        fmt(fl.get("floor_us"), "%.1f")))
        for key in ENGINE_ROWS + ("eager", "compile"):
            if key in fl.get("paths", {}):
                p = fl["paths"][key]
                lines.append("  %-13s B=1 step %9.1f us = %6.1fx the floor (%5.1f %% of floor speed)"
                             % (key, p["step_us"], p["step_over_floor"], 100 * p["floor_fraction"]))
    eng = [(k, res["stages"][k]) for k in ENGINE_ROWS if res["stages"].get(k, {}).get("rows")]
    if eng:
        lines.append("")
        lines.append("engine paths, decode steps: host waits per step (B=%s), graph launches "
                     "(all reps), graph_error" % "/".join(map(str, batches)))
        for key, s in eng:
            rows = {r["batch"]: r for r in s["rows"]}
            lines.append("  %-13s routing %-5s waits/step %-20s graph launches %-16s error %s%s"
                         % (key, s.get("routing", "?"),
                            "/".join(fmt(rows.get(b, {}).get("host_syncs_per_step"), "%.1f")
                                     for b in batches),
                            "/".join(str(rows.get(b, {}).get("graph_launches", "-"))
                                     for b in batches),
                            repr(s.get("graph_error", "")) if s.get("graph_error") else "none",
                            " (no graphs on the %s backend: graph decode ran its padded steps "
                            "eagerly)" % s.get("backend") if s.get("graphs_eager") else ""))
    obs = [(k, s) for k, s in eng if s.get("observed")]
    if obs:  # issue 18 part 6: what observing the engine costs, per path and batch
        lines.append("")
        lines.append("observability overhead, decode tok/s (overhead vs the unobserved row of the "
                     "same batch, same process); full: CUPTI kernels attributed to a range")
        for key, s in obs:
            rows = {r["batch"]: r for r in s["rows"]}
            for r in s["observed"]:
                base = rows.get(r["batch"], {}).get("decode_tps")
                att = ""
                if r["observe"] != "agent" and r.get("kernels_captured"):
                    att = "  %d kernels, %.2f %% attributed" % (
                        r["kernels_captured"], 100.0 * r["kernels_attributed"] /
                        r["kernels_captured"])
                elif r["observe"] != "agent" and not r.get("cupti_active"):
                    att = "  (no CUPTI here)"
                lines.append("  %-13s B=%-3d %-8s %10s tok/s vs %10s  %+6.2f %%%s"
                             % (key, r["batch"], r["observe"], fmt(r.get("decode_tps")),
                                fmt(base), r.get("overhead_pct", float("nan")), att))
    m = next((res["stages"][k]["memory"] for k in ENGINE_ROWS
              if res["stages"].get(k, {}).get("memory")), None)
    if m:
        lines.append("")
        lines.append("engine memory: device +%s GB (nvidia-smi, whole process incl. context; "
                     "process row %s GB), host peak RSS %s GB; engine accounting: weights %s GB, "
                     "KV %s GB, activations %s GB; checkpoint %s GB"
                     % tuple(fmt(x / 1e9 if x else None, "%.2f") for x in (
                         m.get("device_used_delta_bytes"), m.get("process_used_bytes"),
                         m.get("host_peak_rss_bytes"), m.get("weights"), m.get("kv_cache"),
                         m.get("activations"), m.get("checkpoint_bytes"))))
    lines.append("")
    lines.append("stages: " + ", ".join("%s %s%s" % (k, v.get("status"), " (%.0f s)" % v["wall_s"]
                                                    if "wall_s" in v else "")
                                       for k, v in res["stages"].items()))
    return "\n".join(lines)


# Engine rows: hf_bench mode -> stage name (the table's row key).
ENGINE_MODES = (("eager", "engine"), ("graphs", "engine+graphs"))
ENGINE_ROWS = tuple(n for _, n in ENGINE_MODES)


def engine_stages(a, res, ckpt, has_cuda, deadline):
    """The engine measured in each of --engine-modes by ONE hf_bench process (the 13.8 GB
    checkpoint loads once), each mode its own stage in the result with its own timeout:
    cap_engine from the start (the load and the eager mode), cap_graphs from the line
    "hf_bench: mode graphs start". hf_bench rewrites its JSON after every mode, so a timeout in
    the graphs mode keeps the eager rows. The device memory is sampled from outside for the
    whole process (both modes) and reported under "engine"."""
    names = [n for m, n in ENGINE_MODES if m in a.engine_mode_list]
    left = deadline - time.time()
    why = None
    if left < 15:
        why = "skipped (no time left)"
    elif not a.engine or not os.access(a.engine, os.X_OK):
        why = "skipped (no hf_bench at %s)" % a.engine
    if why:
        for n in names:
            res["stages"][n] = {"status": why}
        return
    out = os.path.join(a.workdir, "engine.json")
    if os.path.exists(out):
        os.remove(out)
    cmd = [a.engine, "--model", ckpt, "--backend", "cuda" if has_cuda else "cpu",
           "--prompts", os.path.join(a.workdir, "prompts.json"),
           "--batches", ",".join(map(str, a.batch_list)), "--prompt-len", str(a.prompt_len),
           "--steps", str(a.steps), "--reps", str(a.reps), "--threads", str(a.threads),
           "--modes", ",".join(a.engine_mode_list), "--out", out]
    if a.observe_list:
        cmd += ["--observe", ",".join(["off"] + a.observe_list)]
    caps = {"eager": a.cap_engine, "graphs": a.cap_graphs}
    first = a.engine_mode_list[0]
    phases = [("hf_bench: mode %s start" % m, caps[m]) for m in a.engine_mode_list[1:]]
    hard = min(left, sum(caps[m] for m in a.engine_mode_list))
    print("scale: stages %s (one process; timeouts %s, %.0f s in all): %s"
          % (", ".join(names), ", ".join("%s %d s" % (m, caps[m]) for m in a.engine_mode_list),
             hard, " ".join(cmd)), flush=True)
    sampler = MemorySampler()  # without a GPU: the host peak RSS only
    t0 = time.time()
    status, rc, tail, phase = run_capped(cmd, caps[first], "engine", sampler, phases, hard)
    wall = time.time() - t0
    e = json.load(open(out)) if os.path.exists(out) else {}
    done = {m["mode"]: m for m in e.get("modes", [])}
    # The mode the process was in at its end: the phase marker seen last, else the first mode.
    running = phase.split("mode ")[1].split(" ")[0] if phase else first
    for mode, name in ENGINE_MODES:
        if mode not in a.engine_mode_list:
            continue
        entry = {"wall_s": wall, "timeout_s": caps[mode], "rc": rc,
                 "process": "one hf_bench for %s" % ",".join(a.engine_mode_list)}
        if mode in done:
            m = done[mode]
            entry.update({k: v for k, v in e.items() if k not in ("modes", "results")})
            entry.update(m)
            entry["rows"] = m["results"]
            # finished; a later mode's timeout or failure does not undo that
            entry["status"] = "ok" if status == "ok" or mode != running else status
        else:
            if status == "ok":  # exited 0 without this mode's rows: a bug, not a pass
                entry["status"] = "failed"
            elif mode == running:
                entry["status"] = status
            else:
                entry["status"] = "not run (hf_bench %s in mode %s)" % (status, running)
            entry["last_lines"] = tail[-8:]
        res["stages"][name] = entry
    mem = sampler.result()
    fp = e.get("footprint", {})
    mem.update({k: fp.get(k) for k in ("weights", "kv_cache", "activations")})
    mem["checkpoint_bytes"] = res.get("checkpoint_bytes")
    if names and names[0] in res["stages"]:
        res["stages"][names[0]]["memory"] = mem


def orchestrate(a):
    t_start = time.time()
    deadline = t_start + a.budget
    os.makedirs(a.workdir, exist_ok=True)
    c = TINY if a.tiny else SCALE
    res = {"config": c, "tiny": a.tiny, "batches": a.batch_list, "prompt_len": a.prompt_len,
           "steps": a.steps, "reps": a.reps, "stages": {}}
    total, active = param_counts(c)
    res["params_total"], res["params_active"] = total, active
    print("scale: OLMoE-%s config: %.3fB parameters, %.3fB active per token"
          % ("tiny" if a.tiny else "1B-7B", total / 1e9, active / 1e9))
    # The same prompts for every path: seeded ids, one row per sequence of the largest batch.
    seed = 12345
    prompts = []
    for _ in range(max(a.batch_list)):
        row = []
        for _ in range(a.prompt_len):
            seed = (seed * 6364136223846793005 + 1442695040888963407) % 2**64
            row.append((seed >> 33) % c["vocab_size"])
        prompts.append(row)
    with open(os.path.join(a.workdir, "prompts.json"), "w") as f:
        json.dump(prompts, f)

    def stage(name, cap, extra=None):
        left = deadline - time.time()
        if left < 15:
            res["stages"][name] = {"status": "skipped (no time left in --budget %d s)" % a.budget}
            print("scale: %s skipped: budget spent" % name)
            return None
        cap = min(cap, left)
        out = os.path.join(a.workdir, "stage-%s.json" % name)
        for f in (out, out + ".partial"):
            if os.path.exists(f):
                os.remove(f)
        cmd = [sys.executable, HERE, "--stage", name, "--stage-out", out] + sys.argv[1:]
        if extra:
            cmd += extra
        print("scale: stage %s (timeout %.0f s)" % (name, cap), flush=True)
        t0 = time.time()
        status, rc, tail, _ = run_capped(cmd, cap, name)
        entry = {"status": status, "rc": rc, "wall_s": time.time() - t0, "timeout_s": cap}
        if status == "ok" and os.path.exists(out):
            entry.update(json.load(open(out)))
            if "skipped" in entry:
                entry["status"] = "skipped (%s)" % entry["skipped"]
        elif status != "ok":
            entry["last_lines"] = tail[-8:]
            if os.path.exists(out + ".partial"):  # the batch sizes it finished
                entry.update(json.load(open(out + ".partial")))
                entry["partial"] = True
        res["stages"][name] = entry
        return entry

    have_tf = subprocess.run([sys.executable, "-c", "import transformers"],
                             capture_output=True).returncode == 0
    has_cuda = subprocess.run([sys.executable, "-c",
                               "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"],
                              capture_output=True).returncode == 0
    b = stage("build", a.cap_build)
    if not b or b.get("status") != "ok":
        res["wall_s"] = time.time() - t_start
        return finish(a, res, 1)
    ckpt = b["dir"]
    res["checkpoint_bytes"] = b.get("checkpoint_bytes")
    if has_cuda:
        stage("bw", 60)
    else:
        res["stages"]["bw"] = {"status": "skipped (no CUDA device)"}

    engine_stages(a, res, ckpt, has_cuda, deadline)

    for name, cap in (("eager", a.cap_eager), ("compile", a.cap_compile)):
        if name in a.skip_list:
            res["stages"][name] = {"status": "skipped (--skip)"}
        elif not have_tf:
            res["stages"][name] = {"status": "skipped (no transformers in %s)" % sys.executable}
        elif not has_cuda:
            res["stages"][name] = {"status": "skipped (no CUDA device)"}
        else:
            stage(name, cap, ["--checkpoint", ckpt])

    # The floor: bf16 bytes of a B=1 decode step over the measured bandwidth.
    bw = res["stages"].get("bw", {}).get("d2d_GBps")
    fb = floor_bytes(c)
    res["floor"] = {"bytes": fb, "d2d_GBps": bw, "paths": {}}
    if bw:
        res["floor"]["floor_us"] = fb / (bw * 1e9) * 1e6
        for key in ENGINE_ROWS + ("eager", "compile"):
            s = res["stages"].get(key, {})
            r1 = [r for r in s.get("rows", []) if r["batch"] == 1]
            if r1:
                us = r1[0]["decode_step_ms"] * 1e3
                res["floor"]["paths"][key] = {
                    "step_us": us, "step_over_floor": us / res["floor"]["floor_us"],
                    "floor_fraction": res["floor"]["floor_us"] / us}
    res["gpu"] = res["stages"].get("bw", {}).get("gpu", "no GPU (CPU dry run)")
    res["wall_s"] = time.time() - t_start
    bad = [k for k, v in res["stages"].items() if v.get("status") in ("failed", "timeout")]
    engine_ok = all(res["stages"].get(n, {}).get("status") == "ok"
                    for m, n in ENGINE_MODES if m in a.engine_mode_list)
    return finish(a, res, 1 if bad or not engine_ok else 0)


def finish(a, res, rc):
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    print("\n" + table(res, a.batch_list))
    print("\nscale: %.0f s, rc %d%s" % (res.get("wall_s", 0), rc,
                                        ", json: " + a.json if a.json else ""))
    return rc


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--engine", help="bench/engine/hf_bench executable")
    ap.add_argument("--workdir", required=True, help="checkpoint, prompts and stage outputs")
    ap.add_argument("--json", help="result file (scale.json)")
    ap.add_argument("--tiny", action="store_true", help="small config, short runs (dry run)")
    ap.add_argument("--batches", default=None, help="batch sizes (default 1,8,64; tiny 1,4)")
    ap.add_argument("--prompt-len", type=int, default=None, help="default 128 (tiny 16)")
    ap.add_argument("--steps", type=int, default=None, help="decode steps (default 32, tiny 4)")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=8, help="engine CPU threads")
    # 400 s: with gpu-check's configure and hf_bench build the run stays within ~8 minutes,
    # under the device tool's 10 minutes a command; compile, last, gets what is left.
    ap.add_argument("--budget", type=int, default=400, help="seconds for all stages together")
    ap.add_argument("--cap-build", type=int, default=180)
    ap.add_argument("--cap-engine", type=int, default=150,
                    help="the engine's load and its eager mode")
    ap.add_argument("--cap-graphs", type=int, default=90,
                    help="the engine's graphs mode (same process, after the eager mode)")
    ap.add_argument("--engine-modes", default="eager,graphs",
                    help="hf_bench --modes: eager and/or graphs, in one process")
    ap.add_argument("--observe", default="agent,sampled,full",
                    help="hf_bench --observe: the engine rows again with telemetry on (agent, "
                         "sampled, full CUPTI), overhead against the unobserved row ('' none)")
    ap.add_argument("--cap-eager", type=int, default=120)
    ap.add_argument("--cap-compile", type=int, default=180)
    ap.add_argument("--skip", default="", help="comma-separated: eager,compile")
    ap.add_argument("--stage", choices=sorted(STAGES), help=argparse.SUPPRESS)
    ap.add_argument("--stage-out", help=argparse.SUPPRESS)
    ap.add_argument("--checkpoint", help=argparse.SUPPRESS)
    a = ap.parse_args()
    a.batch_list = [int(x) for x in (a.batches or ("1,4" if a.tiny else "1,8,64")).split(",")]
    if any(b < 1 for b in a.batch_list):
        ap.error("--batches: sizes must be >= 1")
    a.prompt_len = a.prompt_len or (16 if a.tiny else 128)
    a.steps = a.steps or (4 if a.tiny else 32)
    a.engine_mode_list = [m for m in a.engine_modes.split(",") if m]
    if not a.engine_mode_list or any(m not in dict(ENGINE_MODES) for m in a.engine_mode_list) \
            or len(set(a.engine_mode_list)) != len(a.engine_mode_list):
        ap.error("--engine-modes: '%s' is not a list of eager, graphs" % a.engine_modes)
    a.observe_list = [o for o in a.observe.split(",") if o and o != "off"]
    if any(o not in ("agent", "sampled", "full") for o in a.observe_list):
        ap.error("--observe: '%s' is not a list of agent, sampled, full" % a.observe)
    a.skip_list = [s for s in a.skip.split(",") if s]
    for s in a.skip_list:
        if s not in ("eager", "compile"):
            ap.error("--skip: '%s' is not eager or compile" % s)
    if a.stage:
        r = STAGES[a.stage](a)
        with open(a.stage_out, "w") as f:
            json.dump(r, f)
        return 0
    return orchestrate(a)


if __name__ == "__main__":
    sys.exit(main())

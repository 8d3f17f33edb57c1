"""inferscope.torch on real Hugging Face transformers models, on a GPU (scripts/gpu-check --python).

For each MoE family (small random configs: routing, memory and timing are real, the text is
gibberish) against a real inferscope-collector:
  1. counts: the collector's per-layer, per-expert counts over whole generate() calls equal the
     routing recomputed by THIS test from each router's input and weights with the family's
     documented rule (softmax/top-k, or DeepSeek-V3's sigmoid + bias + group-limited top-k);
  2. skew: a skew injected at one router (half the tokens pushed to one expert in the first MoE
     layer; one expert pushed out of the last) opens exactly a hot and a dead episode naming
     those layers and experts, nothing else;
  3. Jamba (attention + Mamba + MoE): kv_cache and ssm_state bytes equal the cache tensors' bytes;
  4. Llava with a Mixtral backbone: encoder / connector / prefill / decode stages per request.
Then the overhead of observe() on generate() decode at batch 1 and 8, paired with the
unobserved model in one process per CUDA sync mode (decode_overhead.py: a median with a 95 %
confidence interval and the verdict on the 1 % aim), and (dispatch_cost, only when asked for)
what no-op forward hooks and no-op forward taps on the same modules cost. Prints a table; JSON
to --json. Without CUDA: SKIPPED.
"""

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
import urllib.request

sys.dont_write_bytecode = True
HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "e2e"))
sys.path.insert(0, str(HERE))
from harness import Failure, Harness, log, run_checks  # noqa: E402

try:
    import torch
    import transformers
except ImportError as e:
    print(f"SKIPPED: {e}")
    sys.exit(0)
if not torch.cuda.is_available():
    print("SKIPPED: no CUDA device")
    sys.exit(0)

from decode_overhead import hf_generate as generate  # noqa: E402
from observe_checks import (LoadSpy, check_steps_exact, episodes, scrape, series,  # noqa: E402
                            truth_counts, truth_step, wait_counts_equal, wait_for)

inferscope = None
DEV = "cuda"
COMMON = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
              num_key_value_heads=2, head_dim=16, vocab_size=256, max_position_embeddings=512,
              pad_token_id=0, eos_token_id=None, bos_token_id=1, tie_word_embeddings=False)
FAMILIES = {
    # name: (config class, model class, config overrides, routing rule)
    "mixtral": ("MixtralConfig", "MixtralForCausalLM",
                dict(num_local_experts=8, num_experts_per_tok=2), "topk"),
    "qwen2_moe": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM",
                  dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=64,
                       shared_expert_intermediate_size=64, decoder_sparse_step=1,
                       mlp_only_layers=[]), "topk"),
    "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM",
                  dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=64,
                       decoder_sparse_step=1, mlp_only_layers=[], norm_topk_prob=True), "topk"),
    "olmoe": ("OlmoeConfig", "OlmoeForCausalLM",
              dict(num_experts=8, num_experts_per_tok=2), "topk"),
    "deepseek_v3": ("DeepseekV3Config", "DeepseekV3ForCausalLM",
                    dict(n_routed_experts=8, num_experts_per_tok=2, n_group=2, topk_group=1,
                         first_k_dense_replace=1, n_shared_experts=1, moe_intermediate_size=64,
                         kv_lora_rank=32, q_lora_rank=32, qk_rope_head_dim=16,
                         qk_nope_head_dim=16, v_head_dim=16, num_key_value_heads=4,
                         num_hidden_layers=4, routed_scaling_factor=1.0,
                         norm_topk_prob=True), "sigmoid_group"),
    "jamba": ("JambaConfig", "JambaForCausalLM",
              dict(num_experts=8, num_experts_per_tok=2, num_hidden_layers=4, attn_layer_period=2,
                   attn_layer_offset=1, expert_layer_period=2, expert_layer_offset=1,
                   mamba_d_state=16, mamba_d_conv=4, mamba_expand=2, mamba_dt_rank=8,
                   use_mamba_kernels=False), "topk"),
    "llama4_text": ("Llama4TextConfig", "Llama4ForCausalLM",
                    dict(num_local_experts=8, num_experts_per_tok=1, interleave_moe_layer_step=1,
                         intermediate_size=64, intermediate_size_mlp=128, attention_chunk_size=64,
                         no_rope_layers=[1, 1, 1], use_qk_norm=False), "topk"),
}


# [SECTION] building models --------------------------------------------------------------

def build(name):
    cfg_cls, model_cls, overrides, _ = FAMILIES[name]
    cfg = getattr(transformers, cfg_cls)(**{**COMMON, **overrides})
    torch.manual_seed(0)
    model = getattr(transformers, model_cls)(cfg)
    return model.to(DEV, torch.float32).eval()


def build_llava():
    text = transformers.MixtralConfig(**{**COMMON, "num_local_experts": 8,
                                         "num_experts_per_tok": 2})
    vision = transformers.CLIPVisionConfig(hidden_size=64, intermediate_size=128,
                                           num_hidden_layers=2, num_attention_heads=4,
                                           image_size=32, patch_size=8, projection_dim=64)
    cfg = transformers.LlavaConfig(vision_config=vision, text_config=text, image_token_index=250,
                                   vision_feature_select_strategy="default",
                                   vision_feature_layer=-1, image_seq_length=16)
    torch.manual_seed(0)
    model = transformers.LlavaForConditionalGeneration(cfg)
    return model.to(DEV, torch.float32).eval()


def llava_inputs(model):
    """(input ids, pixel values) of 2 requests: 16 image tokens (one 32x32 image each) then 8
    text tokens."""
    img = model.config.image_token_index
    ids = torch.cat([torch.full((2, 16), img, device=DEV), prompt(2, 8)], dim=1)
    return ids, torch.randn(2, 3, 32, 32, device=DEV)


def cupti_agent(addrs, service):
    """An agent with CUPTI tracing in full mode (INFERSCOPE_GPU_TRACE=full for it alone)."""
    os.environ["INFERSCOPE_GPU_TRACE"] = "full"
    try:
        return inferscope.Agent(collector=addrs["ingest"], service=service)
    finally:
        del os.environ["INFERSCOPE_GPU_TRACE"]


def routers(model):
    """[(layer, block, router)]: this test's own search (not inferscope's): a module holding
    `experts` and a `gate`/`router` whose weight is [experts, hidden]."""
    import re
    out = []
    for name, mod in model.named_modules():
        r = getattr(mod, "gate", None) or getattr(mod, "router", None)
        w = getattr(r, "weight", None)
        m = re.search(r"layers\.(\d+)\.", name + ".")
        if hasattr(mod, "experts") and isinstance(w, torch.Tensor) and w.dim() == 2 and m:
            out.append((int(m.group(1)), mod, r))
    return out


def find_bias(block, router):
    for obj in (router, block):
        b = getattr(obj, "e_score_correction_bias", None)
        if isinstance(b, torch.Tensor):
            return b
    return None


class Truth:
    """The routing each router's input implies, recomputed here in fp32 from its weights."""

    def __init__(self, model, rule, cfg):
        self.rule, self.cfg = rule, cfg
        self.counts, self.near_ties, self.handles = {}, 0, []
        self.layers = routers(model)
        for layer, block, router in self.layers:
            self.handles.append(router.register_forward_pre_hook(
                lambda m, args, layer=layer, block=block: self.record(layer, block, m, args[0])))

    def record(self, layer, block, router, h):
        h = h.reshape(-1, h.shape[-1]).float()
        w = router.weight.float()
        logits = h @ w.t()
        if getattr(router, "bias", None) is not None and isinstance(router.bias, torch.Tensor):
            logits = logits + router.bias.float()
        e = w.shape[0]
        k = getattr(self.cfg, "num_experts_per_tok", None) or 2
        if self.rule == "sigmoid_group":
            scores = torch.sigmoid(logits)
            bias = find_bias(block, router)
            choice = scores + (bias.float() if bias is not None else 0)
            g = self.cfg.n_group
            group_scores = choice.view(-1, g, e // g).topk(2, dim=-1).values.sum(-1)
            keep = group_scores.topk(self.cfg.topk_group, dim=-1).indices
            mask = torch.zeros_like(group_scores).scatter_(1, keep, 1.0)
            mask = mask.unsqueeze(-1).expand(-1, g, e // g).reshape(-1, e)
            choice = choice.masked_fill(mask == 0, 0.0)
            top = choice.topk(k + 1, dim=-1).values
        else:
            choice = logits
            top = logits.topk(min(k + 1, e), dim=-1).values
        ids = choice.topk(k, dim=-1).indices
        if k < e:  # how many tokens sit on a top-k boundary tie (within fp32 noise)
            self.near_ties += int(((top[:, k - 1] - top[:, k]).abs() < 1e-5).sum())
        c = torch.bincount(ids.reshape(-1), minlength=e).cpu()
        prev = self.counts.get(layer)
        self.counts[layer] = c if prev is None else prev + c

    def as_dict(self):
        return {layer: {i: int(v) for i, v in enumerate(c.tolist()) if v}
                for layer, c in self.counts.items()}

    def close(self):
        for h in self.handles:
            h.remove()


def inject_skew(model, hot, dead):
    """Pre-hooks on two routers: hidden dim 0 is replaced by an indicator (every other token
    for `hot`, every token for `dead`) and the router's weight column 0 makes that indicator
    push one expert up (+30) or down (-30); the other experts do not see it."""
    handles = []
    for layer, expert, push, every in ((hot[0], hot[1], 30.0, 2), (dead[0], dead[1], -30.0, 1)):
        _, _, router = next(x for x in routers(model) if x[0] == layer)
        with torch.no_grad():
            router.weight[:, 0] = 0
            router.weight[expert, 0] = push

        def pre(m, args, every=every):
            h = args[0].clone()
            flat = h.view(-1, h.shape[-1])
            flat[:, 0] = 0
            flat[::every, 0] = 1.0
            return (h,) + tuple(args[1:])
        handles.append(router.register_forward_pre_hook(pre))
    return handles


def prompt(batch, length, seed=0, vocab=250):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(2, vocab, (batch, length), generator=g).to(DEV)


# [SECTION] checks -------------------------------------------------------------------------

def check_family(addrs, name, results):
    model = build(name)
    rule = FAMILIES[name][3]
    cfg = getattr(model.config, "text_config", None) or model.config
    agent = inferscope.Agent(collector=addrs["ingest"], service=name)
    obs = inferscope.torch.observe(model, agent, model_name=name)
    truth = Truth(model, rule, cfg)
    res = results.setdefault(name, {})
    res["found_layers"] = [(e.layer, e.num_experts, e.top_k, e.source) for e in obs.layers]
    res["truth_layers"] = [layer for layer, _, _ in truth.layers]
    if sorted(e.layer for e in obs.layers) != sorted(res["truth_layers"]):
        raise Failure(f"{name}: observed layers {res['found_layers']}, routers at "
                      f"{res['truth_layers']}")
    with torch.no_grad():
        generate(model, prompt(2, 12), 16)
        generate(model, prompt(3, 7, seed=1), 9)
    obs.flush(30)
    want = truth.as_dict()
    res["assignments"] = sum(sum(v.values()) for v in want.values())
    res["near_ties"] = truth.near_ties
    try:
        wait_counts_equal(addrs["metrics"], name, want)
        res["counts"] = "equal"
    except Failure as e:
        res["counts"] = f"DIFFER ({truth.near_ties} near-tie tokens)"
        raise Failure(f"{e} [near-tie tokens: {truth.near_ties}]") from None
    finally:
        truth.close()
        obs.close()
        agent.close()
    res["stats"] = obs.stats()

    # The injected skew, on a fresh model with its own name
    model = build(name)
    moe_layers = sorted(layer for layer, _, _ in routers(model))
    hot, dead = (moe_layers[0], 5), (moe_layers[-1], 3)
    if hot[0] == dead[0]:
        raise Failure(f"{name}: needs two MoE layers for the skew check")
    handles = inject_skew(model, hot, dead)
    skew_name = f"{name}-skew"
    agent = inferscope.Agent(collector=addrs["ingest"], service=skew_name)
    obs = inferscope.torch.observe(model, agent, model_name=skew_name)
    want_eps = sorted([("hot", hot[0], hot[1]), ("dead", dead[0], dead[1])])
    got = []
    t0 = time.time()
    seed = 0
    while time.time() - t0 < 60:  # liveness only: windows close once a second
        seed += 1
        with torch.no_grad():
            generate(model, prompt(8, 16, seed=seed), 8)
        obs.flush(10)
        got = episodes(scrape(addrs["metrics"]), skew_name)
        if got == want_eps:
            break
    for h in handles:
        h.remove()
    obs.close()
    agent.close()
    res["episodes"] = got
    if got != want_eps:
        raise Failure(f"{name}: episodes {got}, want exactly {want_eps}")


def check_jamba_memory(addrs, results):
    model = build("jamba")
    agent = inferscope.Agent(collector=addrs["ingest"], service="jamba-mem")
    obs = inferscope.torch.observe(model, agent, model_name="jamba-mem")
    with torch.no_grad():
        out = generate(model, prompt(2, 10), 6, return_dict_in_generate=True)
    obs.flush(30)
    cache = out.past_key_values
    kv, ssm, layout = explicit_cache_bytes(cache)
    results["jamba_memory"] = {"kv_bytes": kv, "ssm_bytes": ssm, "layout": layout,
                               "walker": list(inferscope.torch.cache_bytes(cache))}
    if kv == 0 or ssm == 0:
        raise Failure(f"jamba cache layout not understood by the test: {layout}")

    def shows(samples):
        got = {lab["kind"]: v for lab, v in series(samples, "inferscope_memory_used_bytes",
                                                    model="jamba-mem")}
        results["jamba_memory"]["collector"] = got
        return got.get("kv_cache") == kv and got.get("ssm_state") == ssm
    wait_for(addrs["metrics"], f"jamba kv {kv} ssm {ssm}", shows)
    obs.close()
    agent.close()


def explicit_cache_bytes(cache):
    """The cache's tensors by the layouts transformers uses, spelled out (not inferscope's
    walker): per-layer objects with keys/values and conv/ssm/recurrent states, or lists."""
    def nbytes(ts):
        total = 0
        for t in ts:
            if isinstance(t, dict):  # transformers 5.17: {state index: tensor} per layer
                total += nbytes(list(t.values()))
            elif isinstance(t, (list, tuple)):
                total += nbytes(t)
            elif isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
        return total
    layout = type(cache).__name__
    kv = ssm = 0
    layers = getattr(cache, "layers", None)
    if layers:
        for lyr in layers:
            layout += f" {type(lyr).__name__}"
            kv += nbytes([getattr(lyr, "keys", None), getattr(lyr, "values", None)])
            ssm += nbytes([getattr(lyr, a, None) for a in ("conv_states", "ssm_states",
                                                          "recurrent_states", "conv_state",
                                                          "ssm_state", "recurrent_state")])
    for a in ("key_cache", "value_cache"):
        kv += nbytes(getattr(cache, a, []) or [])
    for a in ("conv_states", "ssm_states"):
        v = getattr(cache, a, None)
        if isinstance(v, torch.Tensor):
            ssm += nbytes([v])
        elif v:
            ssm += nbytes(v)
    return kv, ssm, layout


def check_llava_stages(addrs, results):
    model = build_llava()
    agent = inferscope.Agent(collector=addrs["ingest"], service="llava-mixtral")
    obs = inferscope.torch.observe(model, agent, model_name="llava-mixtral")
    ids, pixels = llava_inputs(model)
    with torch.no_grad():
        for _ in range(2):
            generate(model, ids, 6, pixel_values=pixels)
    obs.flush(30)
    got = {}

    def shows(samples):
        got.update({lab["stage"]: v for lab, v in series(
            samples, "inferscope_stage_duration_seconds_count", model="llava-mixtral")})
        gpu = {lab["stage"]: v for lab, v in series(
            samples, "inferscope_stage_gpu_seconds_total", model="llava-mixtral")}
        results["llava_stages"] = {"count": dict(got), "gpu_seconds": gpu,
                                   "moe_layers": [e.layer for e in obs.layers]}
        return (got.get("encoder") == 2 and got.get("connector") == 2 and
                got.get("backbone_prefill") == 2 and got.get("backbone_decode") == 10)
    from inferscope._discovery import find_stages
    results["llava_stages_observer"] = {
        "stats": obs.stats(),
        "stage_modules": {stage: type(m).__name__ for stage, m in find_stages(model).items()}}
    try:
        wait_for(addrs["metrics"], "2 encoder / connector / prefill and 10 decode stages", shows)
    except Failure as e:
        raise Failure(f"{e}; collector stage counts {results.get('llava_stages')}; observer "
                      f"{results['llava_stages_observer']}") from None
    if not obs.layers:
        raise Failure("no MoE layer found in Llava's Mixtral backbone")
    obs.close()
    agent.close()


def kernel_seconds(samples, model_name):
    """{"true": s, "false": s} of inferscope_gpu_kernel_seconds_total for one model."""
    return {lab["attributed"]: v for lab, v in series(
        samples, "inferscope_gpu_kernel_seconds_total", model=model_name)}


def check_llava_cupti(addrs, results):
    """With CUPTI on (INFERSCOPE_GPU_TRACE=full for this agent only), the kernels of a
    multimodal generate() are attributed to observe()'s ranges (forward / encoder / connector /
    backbone): >= 95 % of the traced kernel time (issue 17 part 3). The collector's
    inferscope_gpu_kernel_seconds_total{attributed} is the measure: the same numbers a user
    sees in Prometheus."""
    model = build_llava()
    agent = cupti_agent(addrs, "llava-cupti")
    obs = inferscope.torch.observe(model, agent, model_name="llava-cupti")
    ids, pixels = llava_inputs(model)
    with torch.no_grad():
        for _ in range(3):
            generate(model, ids, 8, pixel_values=pixels)
    torch.cuda.synchronize()
    obs.close()
    agent.flush(30)
    agent.close()  # the tracer flushes CUPTI's buffers at close
    got = {}

    def attributed(samples):
        got.update(kernel_seconds(samples, "llava-cupti"))
        return got.get("true", 0) > 0
    wait_for(addrs["metrics"], "attributed kernel time of llava-cupti", attributed)
    time.sleep(2)  # the last kernel records may be a window behind
    wait_for(addrs["metrics"], "kernel time", attributed)
    total = got.get("true", 0) + got.get("false", 0)
    share = got.get("true", 0) / total if total else 0.0
    results["llava_cupti"] = {"attributed_s": got.get("true", 0),
                              "unattributed_s": got.get("false", 0),
                              "attributed_pct": 100 * share}
    log(f"llava_cupti: {100 * share:.2f} % of {total * 1e3:.1f} ms kernel time attributed")
    if share < 0.95:
        raise Failure(f"only {100 * share:.2f} % of the kernel time attributed: {got}")


def check_steps_cuda(addrs, results):
    """The CUDA path of steps_per_copy (ids stacked into a device buffer per step, one
    scatter_add_ per group, one async copy to pinned memory + event per group): an HF-shaped
    model (tests/python/hf_style_models.py) on the GPU, whose blocks record their own routing;
    each step's counts as sent to the agent equal that forward's routing, for K = 16 (the
    default) over 37 forwards and K = 8 over 21 (full groups, the next group's run restarted,
    a partial group at generate()'s end), K = 1, and a generate() under
    torch.inference_mode() flushed outside it; the collector's totals equal the model's."""
    import hf_style_models as hf
    out = {}
    for k, forwards, inference in ((16, 37, False), (8, 21, False), (1, 5, False),
                                   (4, 10, True)):
        torch.manual_seed(20 + k)
        model = hf.TinyLM(style="v5", layers=4, hidden=64, experts=16, top_k=4).to(DEV).eval()
        service = f"steps-cuda-k{k}"
        agent = inferscope.Agent(collector=addrs["ingest"], service=service)
        obs = inferscope.torch.observe(model, agent, model_name=service, steps_per_copy=k)
        spy = LoadSpy(agent)
        ids = torch.randint(0, 97, (2, 6), device=DEV)
        if inference:
            with torch.inference_mode():
                model.generate(ids, max_new_tokens=forwards)
        else:
            model.generate(ids, max_new_tokens=forwards)
        obs.flush(10)
        st = obs.stats()
        blocks = model.moe_blocks()
        want = {s: {i: truth_step(b.routed[s], 16) for i, b in blocks.items()}
                for s in range(forwards)}
        check_steps_exact(spy, want, f"CUDA, K={k}")
        if st["hook_errors"] or st["steps_dropped"] or st["steps"] != forwards:
            raise Failure(f"CUDA, K={k}: observer stats {st}")
        wait_counts_equal(addrs["metrics"], service,
                          truth_counts({i: b.routed for i, b in blocks.items()}, 16))
        out[f"k{k}"] = {"forwards": forwards, "steps_per_call": spy.calls,
                        "inference_mode": inference}
        obs.close()
        agent.close()
        log(f"steps_cuda: K={k}, {forwards} forwards exact per step, calls of {spy.calls} steps")
    results["steps_cuda"] = out


def check_graph_cupti(addrs, results):
    """PyTorch CUDA graphs (issue 19 part 5): a Llama forward captured with torch.cuda.graph
    while observe(layer_ranges=True) is attached, then replayed with every hook removed. The
    replays run no Python at all, yet their kernels keep the ranges open at capture (the
    agent records graph node -> range when CUPTI reports each node created): >= 95 % of the
    replayed kernel time attributed."""
    agent = cupti_agent(addrs, "graph-cupti")

    def capture(model, ids, kwargs):
        obs = inferscope.torch.observe(model, agent, model_name="graph-cupti",
                                       layer_ranges=True, memory=False, requests=False)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        try:
            with torch.no_grad():
                with torch.cuda.stream(side):  # warm-up off the capture (cuBLAS, workspaces)
                    for _ in range(3):
                        model(ids, **kwargs)
                torch.cuda.current_stream().wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    model(ids, **kwargs)
            return graph, obs
        except Exception:
            obs.close()
            raise

    # A Llama forward with SDPA (its eager attention builds the mask with a host-to-device
    # copy, which CUDA graph capture refuses); if this transformers cannot capture it either,
    # a plain stack of decoder-like blocks named model.layers.<i> stands in (recorded).
    cfg = transformers.LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                                   num_attention_heads=4, num_key_value_heads=2, vocab_size=1000,
                                   max_position_embeddings=256, attn_implementation="sdpa")
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).to(DEV, torch.bfloat16).eval()
    ids = torch.randint(0, 1000, (4, 32), device=DEV)
    which = "LlamaForCausalLM (sdpa)"
    try:
        graph, obs = capture(model, ids, {"use_cache": False})
    except Exception as e:  # noqa: BLE001
        log(f"graph_cupti: Llama could not be captured ({type(e).__name__}: {e}); "
            f"a plain block stack instead")
        which = f"plain blocks (Llama capture failed: {type(e).__name__})"

        class Block(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.norm = torch.nn.LayerNorm(256)
                self.up = torch.nn.Linear(256, 1024)
                self.down = torch.nn.Linear(1024, 256)

            def forward(self, x):
                return x + self.down(torch.nn.functional.gelu(self.up(self.norm(x))))

        class Stack(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.model = torch.nn.Module()
                self.model.layers = torch.nn.ModuleList(Block() for _ in range(4))

            def forward(self, x):
                for layer in self.model.layers:
                    x = layer(x)
                return x
        model = Stack().to(DEV, torch.bfloat16).eval()
        ids = torch.randn(128, 256, device=DEV, dtype=torch.bfloat16)
        graph, obs = capture(model, ids, {})
    obs.close()  # no hook from here on: only the graph's replays launch kernels
    torch.cuda.synchronize()
    agent.flush(30)
    before = {}

    def settled(samples):
        now = kernel_seconds(samples, "graph-cupti")
        same = now == before and now
        before.clear()
        before.update(now)
        return same
    wait_for(addrs["metrics"], "the eager kernels of graph-cupti counted", settled)
    replays = 50
    for _ in range(replays):
        graph.replay()
    torch.cuda.synchronize()
    agent.flush(30)
    agent.close()  # the tracer flushes CUPTI's buffers
    after = {}

    def grown(samples):
        after.clear()
        after.update(kernel_seconds(samples, "graph-cupti"))
        return sum(after.values()) > sum(before.values())
    wait_for(addrs["metrics"], "replayed kernel time of graph-cupti", grown)
    time.sleep(2)  # a window later, in case the last records were split
    grown(scrape(addrs["metrics"]))
    att = after.get("true", 0) - before.get("true", 0)
    un = after.get("false", 0) - before.get("false", 0)
    share = att / (att + un) if att + un > 0 else 0.0
    results["graph_cupti"] = {"model": which, "replays": replays, "attributed_s": att,
                              "unattributed_s": un,
                              "attributed_pct": 100 * share, "eager": dict(before)}
    log(f"graph_cupti: {which}, {replays} replays, {1e3 * (att + un):.2f} ms kernel time, "
        f"{100 * share:.2f} % attributed")
    if share < 0.95:
        raise Failure(f"only {100 * share:.2f} % of the replayed kernel time attributed "
                      f"(before {before}, after {after})")


# [SECTION] overhead -----------------------------------------------------------------------

# The overhead check's pairs: seconds per batch and CUDA sync mode, per --rounds.
OVERHEAD_SECONDS_PER_ROUND = 12


def overhead(addrs, results, args):
    """observe()'s cost on generate() decode at batch 1 and 8 (decode_overhead.py: paired short
    generate() calls, and the observed model's decode steps interleaved with its unobserved
    copy's (twin_steps.py); medians with 95 % confidence intervals, and the verdicts on the 1 %
    aim; then what observing adds per step op by op under torch.profiler, op_diff.py), once per
    CUDA sync mode in --overhead-sync, each in a process of its own (the
    mode is set before the CUDA context exists). Fails only on hook errors: the verdict is
    reported, whatever it is."""
    out = {}
    for mode in (m for m in args.overhead_sync.split(",") if m):
        work = pathlib.Path(tempfile.mkdtemp(prefix="overhead-"))
        js, err = work / "overhead.json", work / "stderr.txt"
        seconds = OVERHEAD_SECONDS_PER_ROUND * args.rounds
        with open(err, "w") as err_file, subprocess.Popen(
                [sys.executable, str(HERE / "decode_overhead.py"), "--library", args.library,
                 "--python-dir", args.python_dir, "--sync", mode, "--seconds", str(seconds),
                 "--twin-seconds", str(seconds), "--op-diff-reps", "2",
                 "--collector", addrs["ingest"], "--json", str(js)],
                stdout=subprocess.PIPE, stderr=err_file, text=True) as proc:
            for line in proc.stdout:  # as they come: a run cut short keeps what it printed
                log(f"overhead {line.rstrip()}")
            rc = proc.wait()
        if rc != 0:
            raise Failure(f"decode_overhead.py --sync {mode}: rc {rc}: "
                          f"{err.read_text(errors='replace')[-1500:]}")
        got = out[mode] = json.loads(js.read_text())
        for name, res in got["batches"].items():
            if res["hook_errors"]:
                raise Failure(f"overhead {mode} {name}: {res['hook_errors']} hook errors")
    results["overhead"] = out


def dispatch_cost(results, args):
    """What merely calling Python around the model's modules costs, hooks' bodies aside: paired
    slowdowns of generate() with no-op forward pre-hooks on the 12 experts modules plus no-op
    pre/post hooks on the model (PyTorch's slow call path for hooked modules), with no-op
    forward taps on the experts plus the same model hooks, with the model hooks alone, and with
    inferscope.torch's capture taps on the experts (each appends its top-k ids to a list, which
    a model pre-hook empties). No agent, nothing counted. Pairs as in decode_overhead.py."""
    from decode_overhead import ci_text, make_call, overhead_model
    from inferscope._forward_tap import capture_argument, tap_forward
    from paired_stats import median_ci, paired_calls
    from quiet_process import Instructions
    model = overhead_model(torch, transformers)
    experts = [layer.mlp.experts for layer in model.model.layers]

    def detacher(handles):
        return lambda: [h.remove() for h in handles]

    def root_hooks():
        return [model.register_forward_pre_hook(lambda m, a: None),
                model.register_forward_hook(lambda m, a, o: None, always_call=True)]

    def hooks():
        return detacher(root_hooks() + [e.register_forward_pre_hook(
            lambda m, a, k: None, with_kwargs=True) for e in experts])

    def taps():
        return detacher(root_hooks() + [tap_forward(e, before=lambda m, a, k: None)
                                        for e in experts])

    def captures():  # inferscope.torch's capture of the top-k ids: appends, emptied per step
        sink = []
        return detacher([model.register_forward_pre_hook(lambda m, a: sink.clear())] + [
            capture_argument(e, sink, i, 1, ("top_k_index",)) for i, e in enumerate(experts)])
    variants = {"model_hooks": lambda: detacher(root_hooks()), "expert_hooks": hooks,
                "expert_taps": taps, "expert_captures": captures}
    out = {}
    counter = Instructions()  # not read here (None without perf); make_call wants one
    for batch in (1, 8):
        call = make_call(torch, lambda ids, new: generate(model, ids, new),
                         prompt(batch, 32, vocab=32000), 32, counter, [])
        call()  # warm-up
        res = out[f"b{batch}"] = {}
        for name, attach in variants.items():
            pairs = paired_calls(call, attach, pairs=4 * args.rounds)
            slow = [100 * (on[0] / off[0] - 1) for off, on in pairs]
            res[name] = {"paired_pct": median_ci(slow), "rounds": slow,
                         "step_us_off": 1e6 * statistics.median(o[0] for o, _ in pairs) / 32}
        log(f"overhead dispatch_cost b{batch}: step {res['model_hooks']['step_us_off']:.0f} us; "
            "paired median: " + "; ".join(f"{n} {ci_text(r['paired_pct'])}"
                                          for n, r in res.items()))
    counter.close()
    results["dispatch_cost"] = out


def main():
    global inferscope
    ap = argparse.ArgumentParser()
    ap.add_argument("--build-dir", required=True)
    ap.add_argument("--library", required=True)
    ap.add_argument("--python-dir", required=True)
    ap.add_argument("--json")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--only", default="")
    # torch4 round 1 (H100, 19:49 UTC): the decoding thread's CPU time equalled its wall time
    # in both modes: decode is host-bound, the thread never waits in a sync; so one mode.
    ap.add_argument("--overhead-sync", default="default",
                    help="CUDA sync modes of the overhead check, one process each, comma-"
                    "separated: default (PyTorch's: spins), blocking (the thread sleeps in "
                    "syncs, so its CPU time is its work)")
    ap.add_argument("--artifacts", help="directory for the collector's trace store (tar.gz) and "
                    "its last /metrics text, to look at in the viewer and Prometheus elsewhere")
    args = ap.parse_args()
    os.environ["INFERSCOPE_AGENT_LIBRARY"] = str(pathlib.Path(args.library).resolve())
    sys.path.insert(0, str(pathlib.Path(args.python_dir).resolve()))
    import inferscope as mod
    import inferscope.torch  # noqa: F401
    inferscope = mod
    log(f"torch {torch.__version__} transformers {transformers.__version__} "
        f"{torch.cuda.get_device_name()}")
    results = {"torch": torch.__version__, "transformers": transformers.__version__,
               "device": torch.cuda.get_device_name()}
    h = Harness(pathlib.Path(tempfile.mkdtemp(prefix="inferscope-hf-")))
    failed = []
    try:
        collector = pathlib.Path(args.build_dir).resolve() / "collector" / "inferscope-collector"
        _, addrs = h.start_collector(collector, "collector", [
            # More models than the default bound of 16: every family twice (plain and skewed),
            # Llava, the steps_cuda and overhead models.
            "--window", "1s", "--hot-windows", "2", "--per-expert-metrics", "--max-models",
            "64"])
        checks = {f"family.{n}": (lambda n=n: check_family(addrs, n, results)) for n in FAMILIES}
        checks["jamba_memory"] = lambda: check_jamba_memory(addrs, results)
        checks["llava_stages"] = lambda: check_llava_stages(addrs, results)
        checks["llava_cupti"] = lambda: check_llava_cupti(addrs, results)
        checks["steps_cuda"] = lambda: check_steps_cuda(addrs, results)
        checks["graph_cupti"] = lambda: check_graph_cupti(addrs, results)
        checks["overhead"] = lambda: overhead(addrs, results, args)
        checks["dispatch_cost"] = lambda: dispatch_cost(results, args)
        only = [o for o in args.only.split(",") if o]
        checks = {n: c for n, c in checks.items() if not only or any(o in n for o in only)}

        def keep_error(name):
            results.setdefault("errors", {})[name] = traceback.format_exc()[-1500:]
        failed = run_checks(checks, keep_error)
    finally:
        if failed:
            h.dump_logs()
        artifacts = pathlib.Path(args.artifacts) if args.artifacts else None
        if artifacts is not None and "metrics" in locals().get("addrs", {}):
            try:  # what Prometheus would scrape, kept for promtool and a Prometheus elsewhere
                with urllib.request.urlopen(f"http://{addrs['metrics']}/metrics", timeout=10) as r:
                    (artifacts / "collector_metrics.txt").write_bytes(r.read())
            except OSError as e:
                log(f"could not keep /metrics: {e}")
        h.close()  # the collector seals its trace store on the way out
        if artifacts is not None:
            with tarfile.open(artifacts / "collector_trace.tgz", "w:gz") as tar:
                tar.add(h.workdir / "collector-trace", arcname="collector-trace")
        results["failed"] = failed
        if args.json:
            pathlib.Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    for n in FAMILIES:
        r = results.get(n, {})
        log(f"{n:12s} layers {r.get('found_layers')} counts {r.get('counts')} "
            f"({r.get('assignments')} assignments) episodes {r.get('episodes')}")
    for k in ("jamba_memory", "llava_stages", "llava_stages_observer"):
        if k in results:
            log(f"{k}: {json.dumps(results[k], default=str)[:600]}")
    print("FAIL: " + ", ".join(failed) if failed else "PASS", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

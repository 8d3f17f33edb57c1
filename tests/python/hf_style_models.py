"""Small torch models shaped like the Hugging Face transformers families, for CPU tests of
inferscope.torch (CI has Debian's torch and no transformers).

Each MoE block records its own routing in `self.routed` (a list of top-k id tensors): the
ground truth the tests compare the collector's counts against, taken by the model itself,
not by inferscope's hooks. Three router styles, as transformers has written them:
  * "v4": `gate` is an nn.Linear returning logits; softmax + top-k inside the block
    (Mixtral / Qwen2-MoE / OLMoE in transformers 4.x).
  * "v5": a router module returning (logits, scores, top-k ids) and an experts module taking
    `top_k_index` (transformers 5.x).
  * "sigmoid_bias": a DeepSeek-V3-style gate (sigmoid scores, e_score_correction_bias added for
    the choice only) returning (ids, weights), with shared experts beside the routed ones.
"""

import torch
from torch import nn


class Output(dict):
    """A ModelOutput stand-in: attribute and key access."""

    __getattr__ = dict.get


class Cache:
    """A cache object like transformers' (DynamicCache / the hybrid Mamba caches): lists of
    key/value tensors per attention layer and conv/ssm state tensors per SSM layer."""

    def __init__(self, layers, hybrid):
        self.key_cache = [None] * layers
        self.value_cache = [None] * layers
        self.conv_states = [None] * layers if hybrid else []
        self.ssm_states = [None] * layers if hybrid else []

    def length(self):
        k = next((t for t in self.key_cache if t is not None), None)
        return 0 if k is None else k.shape[-2]

    def tensors_bytes(self):
        kv = sum(t.numel() * t.element_size() for t in self.key_cache + self.value_cache
                 if t is not None)
        ssm = sum(t.numel() * t.element_size() for t in self.conv_states + self.ssm_states
                  if t is not None)
        return kv, ssm


class Expert(nn.Module):
    def __init__(self, hidden, inner):
        super().__init__()
        self.up = nn.Linear(hidden, inner, bias=False)
        self.down = nn.Linear(inner, hidden, bias=False)

    def forward(self, x):
        return self.down(torch.relu(self.up(x)))


def _combine(experts, h, ids, weights):
    out = torch.zeros_like(h)
    for e, expert in enumerate(experts):
        rows, slot = (ids == e).nonzero(as_tuple=True)
        if rows.numel():
            out.index_add_(0, rows, expert(h[rows]) * weights[rows, slot, None])
    return out


class V4SparseMoe(nn.Module):
    def __init__(self, hidden, experts, top_k):
        super().__init__()
        self.gate = nn.Linear(hidden, experts, bias=False)
        self.experts = nn.ModuleList(Expert(hidden, 2 * hidden) for _ in range(experts))
        self.top_k = top_k
        self.routed = []

    def forward(self, x):
        h = x.reshape(-1, x.shape[-1])
        probs = torch.softmax(self.gate(h), dim=-1)
        weights, ids = torch.topk(probs, self.top_k, dim=-1)
        self.routed.append(ids.clone())
        return _combine(self.experts, h, ids, weights).view_as(x)


class V5Router(nn.Module):
    def __init__(self, hidden, experts, top_k):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(experts, hidden) * 0.02)
        self.bias = nn.Parameter(torch.zeros(experts))  # for injecting a skew in tests
        self.top_k, self.num_experts = top_k, experts

    def forward(self, h):
        logits = h @ self.weight.t() + self.bias
        scores, ids = torch.topk(torch.softmax(logits, dim=-1), self.top_k, dim=-1)
        return logits, scores, ids


class V5Experts(nn.Module):
    def __init__(self, hidden, experts):
        super().__init__()
        self.experts = nn.ModuleList(Expert(hidden, 2 * hidden) for _ in range(experts))

    def forward(self, hidden_states, top_k_index, top_k_weights):
        return _combine(self.experts, hidden_states, top_k_index, top_k_weights)


class V5SparseMoe(nn.Module):
    def __init__(self, hidden, experts, top_k):
        super().__init__()
        self.gate = V5Router(hidden, experts, top_k)
        self.experts = V5Experts(hidden, experts)
        self.routed = []

    def forward(self, x):
        h = x.reshape(-1, x.shape[-1])
        _, scores, ids = self.gate(h)
        self.routed.append(ids.clone())
        return self.experts(h, ids, scores).view_as(x)


class SigmoidBiasGate(nn.Module):
    def __init__(self, hidden, experts, top_k):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(experts, hidden) * 0.02)
        self.e_score_correction_bias = nn.Parameter(torch.zeros(experts), requires_grad=False)
        self.top_k, self.n_routed_experts = top_k, experts

    def forward(self, h):
        scores = torch.sigmoid(h @ self.weight.t())
        _, ids = torch.topk(scores + self.e_score_correction_bias, self.top_k, dim=-1)
        weights = scores.gather(1, ids)
        return ids, weights / weights.sum(-1, keepdim=True)


class SigmoidBiasMoe(nn.Module):
    def __init__(self, hidden, experts, top_k):
        super().__init__()
        self.gate = SigmoidBiasGate(hidden, experts, top_k)
        self.experts = nn.ModuleList(Expert(hidden, 2 * hidden) for _ in range(experts))
        self.shared_experts = Expert(hidden, 2 * hidden)
        self.routed = []

    def forward(self, x):
        h = x.reshape(-1, x.shape[-1])
        ids, weights = self.gate(h)
        self.routed.append(ids.clone())
        return (_combine(self.experts, h, ids, weights) + self.shared_experts(h)).view_as(x)


MOE_STYLES = {"v4": V4SparseMoe, "v5": V5SparseMoe, "sigmoid_bias": SigmoidBiasMoe}


class Layer(nn.Module):
    def __init__(self, index, hidden, moe, hybrid):
        super().__init__()
        self.index, self.hybrid = index, hybrid
        self.kv = nn.Linear(hidden, 2 * hidden, bias=False)
        self.mlp = moe if moe is not None else Expert(hidden, 2 * hidden)

    def forward(self, x, cache):
        if self.hybrid and self.index % 2 == 1:  # SSM layer: fixed-size state
            b = x.shape[0]
            cache.conv_states[self.index] = torch.zeros(b, x.shape[-1], 4)
            cache.ssm_states[self.index] = torch.zeros(b, x.shape[-1], 16)
        else:  # attention layer: keys and values grow with the sequence
            k, v = self.kv(x).chunk(2, dim=-1)
            k, v = k.unsqueeze(1), v.unsqueeze(1)
            if cache.key_cache[self.index] is not None:
                k = torch.cat([cache.key_cache[self.index], k], dim=-2)
                v = torch.cat([cache.value_cache[self.index], v], dim=-2)
            cache.key_cache[self.index], cache.value_cache[self.index] = k, v
        return x + self.mlp(x)


class TinyLM(nn.Module):
    """An HF-shaped causal LM: model.layers.<i>.mlp is the MoE block (layers with
    index < dense_layers are dense, like DeepSeek's first_k_dense_replace)."""

    def __init__(self, style="v5", layers=3, hidden=32, experts=8, top_k=2, vocab=97,
                 dense_layers=0, hybrid=False):
        super().__init__()
        self.hybrid = hybrid
        self.embed_tokens = nn.Embedding(vocab, hidden)
        self.model = nn.Module()
        self.model.layers = nn.ModuleList(
            Layer(i, hidden, None if i < dense_layers else MOE_STYLES[style](hidden, experts,
                                                                            top_k), hybrid)
            for i in range(layers))
        self.lm_head = nn.Linear(hidden, vocab, bias=False)

    def moe_blocks(self):
        return {i: layer.mlp for i, layer in enumerate(self.model.layers)
                if hasattr(layer.mlp, "routed")}

    def forward(self, input_ids=None, past_key_values=None, inputs_embeds=None, **_):
        cache = past_key_values or Cache(len(self.model.layers), self.hybrid)
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        for layer in self.model.layers:
            x = layer(x, cache)
        return Output(logits=self.lm_head(x), past_key_values=cache)

    @torch.no_grad()
    def generate(self, input_ids, max_new_tokens=4, attention_mask=None, **kwargs):
        return greedy(self, input_ids, max_new_tokens, **kwargs)


def greedy(model, input_ids, max_new_tokens, **first_kwargs):
    """Greedy decoding, one forward per token, as transformers' generate() calls the model."""
    out = model(input_ids=input_ids, **first_kwargs)
    seq = input_ids
    for i in range(max_new_tokens):
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], dim=-1)
        if i + 1 == max_new_tokens:
            break
        out = model(input_ids=nxt, past_key_values=out.past_key_values)
    return seq


class TinyVLM(nn.Module):
    """An HF-shaped vision-language model: vision_tower -> multi_modal_projector ->
    language_model, as Llava / Llama 4 name them."""

    def __init__(self, **lm_kwargs):
        super().__init__()
        self.language_model = TinyLM(**lm_kwargs)
        hidden = self.language_model.lm_head.in_features
        self.vision_tower = nn.Sequential(nn.Linear(48, 64), nn.GELU(), nn.Linear(64, 64))
        self.multi_modal_projector = nn.Linear(64, hidden)

    def forward(self, input_ids=None, pixel_values=None, past_key_values=None, **_):
        embeds = self.language_model.embed_tokens(input_ids)
        if pixel_values is not None:
            image = self.multi_modal_projector(self.vision_tower(pixel_values))
            embeds = torch.cat([image, embeds], dim=1)
        return self.language_model(inputs_embeds=embeds, past_key_values=past_key_values)

    @torch.no_grad()
    def generate(self, input_ids, pixel_values=None, max_new_tokens=4, **_):
        return greedy(self, input_ids, max_new_tokens, pixel_values=pixel_values)

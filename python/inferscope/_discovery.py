"""What inferscope.torch finds in a model it did not write: the MoE layers of the transformers
families (where each one's top-k ids come from, its expert count and top-k), the multimodal
parts, the decoder layers, and the model's name and layout for the collector's hello."""

import collections
import inspect
import re

import torch as _torch

# Names of submodules that play a multimodal part, as the transformers families call them.
_STAGE_NAMES = {
    "encoder": ("vision_tower", "vision_model", "visual", "image_encoder", "audio_tower",
                "vision_encoder"),
    "connector": ("multi_modal_projector", "mm_projector", "connector", "vision_projection",
                  "merger", "projector"),
    "backbone": ("language_model", "text_model", "llm"),
}
# Attribute names that hold the routed experts / the router / shared experts in a MoE block.
_EXPERTS_ATTRS = ("experts",)
_ROUTER_ATTRS = ("gate", "router")
_SHARED_ATTRS = ("shared_expert", "shared_experts", "shared_mlp")
_LAYER_INDEX = re.compile(r"(?:^|\.)(?:layers|h|blocks|block)\.(\d+)(?:\.|$)")
_DECODER_LAYER = re.compile(r"(?:.*\.)?(?:layers|h|blocks)\.(\d+)")
# Config attributes for the expert count and top-k, across families.
_NUM_EXPERTS_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")
_TOP_K_KEYS = ("num_experts_per_tok", "moe_topk", "top_k", "num_selected_experts")
_SSM_BLOCK_TYPES = ("mamba", "mamba2", "ssm", "linear_attention")
# How an experts module's forward names the router's top-k ids (transformers 5 and others).
TOPK_ARG_NAMES = ("top_k_index", "topk_idx", "topk_ids", "top_k_indices", "topk_indices",
                  "selected_experts", "router_indices")
_INT64 = _torch.int64
_Tensor = _torch.Tensor

# A MoE block found in a model: its path and layer index, the router (name, module), the
# experts and shared-experts modules, the expert count and top-k (None: learnt from the ids),
# and whether the experts module is called with the router's top-k ids (transformers 5).
MoEBlock = collections.namedtuple("MoEBlock", "name layer router_name router experts shared "
                                  "num_experts top_k takes_ids")


def find_moe_blocks(model, config):
    """A MoE block is a module with an `experts` child and a `gate`/`router` child; its layer
    index comes from its path (model.layers.<i>.mlp). One block per layer (the outermost)."""
    seen = set()
    for name, module in model.named_modules():
        experts = _first_attr(module, _EXPERTS_ATTRS)
        router_name, router = _first_named_attr(module, _ROUTER_ATTRS)
        if experts is None or router is None or not isinstance(router, _torch.nn.Module):
            continue
        m = _LAYER_INDEX.search(name)
        if m is None:
            continue
        layer = int(m.group(1))
        if layer in seen:
            continue  # a nested block of the same layer (e.g. a wrapper): keep the outer
        num_experts = _num_experts(module, router, experts, config)
        if not num_experts:
            continue
        seen.add(layer)
        yield MoEBlock(name, layer, router_name, router, experts,
                       _first_attr(module, _SHARED_ATTRS), num_experts,
                       _top_k(module, router, config), _takes_topk_ids(experts))


def find_stages(model):
    """{stage: module} of a multimodal model (encoder / connector / backbone); {} when it has
    no encoder or connector (the whole model is then the backbone, timed by its steps)."""
    found = {}
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        for stage, names in _STAGE_NAMES.items():
            if leaf in names and stage not in found and module is not model:
                found[stage] = module
    return found if "encoder" in found or "connector" in found else {}


def find_decoder_layers(model):
    """(index, module) of each decoder layer (model.layers.<i> and the like)."""
    for name, module in model.named_modules():
        m = _DECODER_LAYER.fullmatch(name)
        if m is not None:
            yield int(m.group(1)), module


def model_name(model, config):
    for key in ("name_or_path", "_name_or_path", "model_type"):
        v = getattr(config, key, None)
        if isinstance(v, str) and v:
            return v
    return type(model).__name__


def layout(layers, config):
    """(experts per layer, mixers per layer or None, top-k, shared experts) of the hello's
    model description, from the found MoE layers and the config; ([], None, 0, 0) without
    layers."""
    if not layers:
        return [], None, 0, 0
    text = getattr(config, "text_config", None) or config
    n = max([e.layer + 1 for e in layers] + [getattr(text, "num_hidden_layers", 0) or 0])
    experts = [0] * n
    for e in layers:
        experts[e.layer] = e.num_experts
    mixers = None
    kinds = getattr(text, "layers_block_type", None)
    if isinstance(kinds, (list, tuple)) and len(kinds) == n:
        mixers = ["ssm" if str(k).lower() in _SSM_BLOCK_TYPES else "attention" for k in kinds]
    top_k = next((e.top_k for e in layers if e.top_k), 0)
    return experts, mixers, top_k, max(e.shared_experts for e in layers)


def ids_of_router_call(entry):
    """The extractor of a router's forward tap (router, args, kwargs, output) -> top-k ids:
    the position in its output tuple where an int64 tensor was found is remembered (a router
    returns the same kind of tuple every call), so the usual call is one index and two
    checks; anything else takes ids_from_router."""
    where = [None]

    def extract(module, args, kwargs, out):
        i = where[0]
        if i is not None and out.__class__ is tuple and len(out) > i:
            t = out[i]
            if t.__class__ is _Tensor and t.dtype is _INT64:
                return t
        ids = ids_from_router(entry, out)
        if isinstance(out, tuple):
            where[0] = next((j for j, t in enumerate(out) if t is ids), None)
        return ids
    return extract


def ids_from_router(entry, out):
    """A router's top-k ids: an integer tensor it returns, or top-k of the logits it returns
    (softmax and top-k commute, so top-k of the logits is top-k of the probabilities)."""
    if isinstance(out, _torch.Tensor):
        candidates = [out]
    elif isinstance(out, (tuple, list)):
        candidates = [t for t in out if isinstance(t, _torch.Tensor)]
    else:
        return None
    for t in candidates:
        if not t.dtype.is_floating_point and t.dtype != _torch.bool:
            return t
    for t in candidates:
        if t.dim() >= 1 and t.shape[-1] == entry.num_experts and entry.top_k:
            return _torch.topk(t, entry.top_k, dim=-1).indices
    return None


def _first_attr(module, names):
    return _first_named_attr(module, names)[1]


def _first_named_attr(module, names):
    for n in names:
        v = getattr(module, n, None)
        if v is not None:
            return n, v
    return None, None


def _num_experts(block, router, experts, config):
    for obj in (block, router, experts):
        for key in ("num_experts", "num_local_experts", "n_routed_experts"):
            v = getattr(obj, key, None)
            if isinstance(v, int) and v > 0:
                return v
    if isinstance(experts, _torch.nn.ModuleList):
        return len(experts)
    weight = getattr(router, "weight", None)
    if isinstance(weight, _torch.Tensor) and weight.dim() == 2:
        return weight.shape[0]
    text = getattr(config, "text_config", None) or config
    for key in _NUM_EXPERTS_KEYS:
        v = getattr(text, key, None)
        if isinstance(v, int) and v > 0:
            return v
    return 0


def _top_k(block, router, config):
    for obj in (router, block):
        for key in ("top_k", "num_experts_per_tok", "topk"):
            v = getattr(obj, key, None)
            if isinstance(v, int) and v > 0:
                return v
    text = getattr(config, "text_config", None) or config
    for key in _TOP_K_KEYS:
        v = getattr(text, key, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def _takes_topk_ids(experts):
    try:
        params = inspect.signature(experts.forward).parameters
    except (TypeError, ValueError):
        return False
    return any(p in params for p in TOPK_ARG_NAMES)

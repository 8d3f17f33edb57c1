"""inferscope.torch: observe a PyTorch / Hugging Face transformers model with one call.

    import inferscope, inferscope.torch
    obs = inferscope.torch.observe(model)           # agent from the INFERSCOPE_* environment
    model.generate(**inputs)                        # per-expert load, KV / SSM memory,
    obs.close()                                     # stages and requests reach the collector

What it attaches (the model's code is not changed): taps on the forward of the model, of its
MoE layers' modules, multimodal parts and (layer_ranges) decoder layers (_forward_tap.py: no
forward hooks, so PyTorch keeps its fast call path for them), and a wrapper of generate():
  * every MoE layer it can find (routers of the transformers MoE families, or modules you
    name with watch_moe()): the top-k expert ids of each forward are kept (the router's own
    tensors, no op) and counted ON THE DEVICE for K steps at once (steps_per_copy, default 8:
    one cat, one scatter_add_ into a buffer of K rows, one row per step); the rows are copied
    to pinned host memory with one asynchronous copy and an event, and sent once the event has
    completed (checked without blocking at a later step), each step with its own step number.
    No host sync.
  * the model's cache objects after a step, at most every second (and at generate()'s end,
    flush(), close()): bytes of attention keys/values ("kv_cache") and of convolution/SSM
    state ("ssm_state"), from tensor shapes only (no sync).
  * multimodal parts (vision tower, projector, language model): NVTX-named ranges
    "encoder" / "connector" / "backbone", and stage records timed by CUDA events.
  * generate(): one request record per sequence (arrival, first token, finish, tokens).

Hooks never raise into the model: an error inside one is counted (stats()["hook_errors"]),
reported once on stderr, and that hook stops observing. See docs/integrations.md.
"""

import collections
import functools
import inspect
import re
import sys
import threading
import time
import weakref
from array import array as _array

import torch as _torch

from ._forward_tap import tap_forward
from .agent import Agent, now_ns

__all__ = ["observe", "Observer", "MoELayer"]

# Names of submodules that play a multimodal part, as the transformers families call them.
_ENCODER_NAMES = ("vision_tower", "vision_model", "visual", "image_encoder", "audio_tower",
                  "vision_encoder")
_CONNECTOR_NAMES = ("multi_modal_projector", "mm_projector", "connector", "vision_projection",
                    "merger", "projector")
_BACKBONE_NAMES = ("language_model", "text_model", "llm")
# Attribute names that hold the routed experts / the router in a MoE block.
_EXPERTS_ATTRS = ("experts",)
_ROUTER_ATTRS = ("gate", "router")
_SHARED_ATTRS = ("shared_expert", "shared_experts", "shared_mlp")
_LAYER_INDEX = re.compile(r"(?:^|\.)(?:layers|h|blocks|block)\.(\d+)(?:\.|$)")
# Config attributes for the expert count and top-k, across families.
_NUM_EXPERTS_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")
_TOP_K_KEYS = ("num_experts_per_tok", "moe_topk", "top_k", "num_selected_experts")
# How an experts module's forward names the router's top-k ids (transformers 5 and others).
_TOPK_ARG_NAMES = ("top_k_index", "topk_idx", "topk_ids", "top_k_indices", "topk_indices",
                   "selected_experts", "router_indices")
# Groups of steps whose counts may be in flight to the host at once: at least 8 steps and at
# least 2 groups; a group ending with this many in flight is dropped (counted), never waited.
_PENDING_STEPS = 8
_PENDING_GROUPS_MIN = 2
_STEPS_PER_COPY_MAX = 256  # the buffers are K rows: device [K, bins] int32, pinned the same
_DEFERRED_IDS_MAX = 1 << 20  # ids kept for the step's end before they are counted early
# Steps whose ids (all layers) fit an ids buffer of this many int64 for K steps (2 MiB; at
# most 4 such buffers, one per shape) wait for one count at the group's end (decode steps);
# bigger ones (prefills) are counted at their own end.
_RUN_BUFFER_IDS = 1 << 18
# Parts of the step hook's cost, each its own stats()["hook_ns_step_<part>"].
_STEP_PARTS = ("range", "memory", "count", "copy", "drain")
_INT64 = _torch.int64
_Tensor = _torch.Tensor
# The per-layer capture is timed on one step in this many, counted that many times: a clock
# read per call is a cost of its own (two per MoE layer per step otherwise).
_MOE_TIMING_EVERY = 8
_MEMORY_INTERVAL_NS = 1_000_000_000  # cache bytes at most every second (and at flush, generate end)


def _normal_tensors(method):
    """Runs `method` outside inference mode: the buffers and the views of them it makes and
    keeps are normal tensors, updated in place both inside a forward under
    torch.inference_mode() and outside it (flush(), close(): an inference tensor, or a view
    made in inference mode, refuses in-place updates there)."""
    @functools.wraps(method)
    def normal(*args, **kwargs):
        with _torch.inference_mode(False):
            return method(*args, **kwargs)
    return normal


class _IdsRun:
    """Consecutive steps of one group, rows start.. start+count-1, whose router ids (same
    layers, same shape) are counted together at the group's end (_flush_run). The ids are
    kept as the router's own tensors (`tensors`, step after step, layer after layer; with
    `versions`, their version counters at their step's end, None where they have none), or,
    once a model was seen changing them in place (kept=False), copied into buf[row] at each
    step's end."""

    __slots__ = ("plan", "key", "buf", "start", "count", "first_row", "tensors", "versions")

    def __init__(self, plan, key, buf, start, first_row, kept):
        # key: (layers, ids shape); buf: (the ids buffer, its rows)
        self.plan, self.key, self.buf, self.start, self.count = plan, key, buf, start, 0
        self.first_row = first_row  # the row in Observer.layers of the run's first layer
        self.tensors = [] if kept else None
        self.versions = [] if kept else None


class MoELayer:
    """One observed MoE layer: where its top-k ids come from and where they are counted."""

    __slots__ = ("name", "layer", "num_experts", "top_k", "source", "offset", "tokens", "trusted",
                 "shared_experts", "views", "row")

    def __init__(self, name, layer, num_experts, top_k, source, trusted, shared_experts=0):
        self.name, self.layer, self.num_experts, self.top_k = name, layer, num_experts, top_k
        self.source, self.trusted, self.shared_experts = source, trusted, shared_experts
        self.offset = 0  # first bin of this layer in a step's row of the device buffer
        self.row = 0  # its index in Observer.layers (the order of the rows' layer slices)
        self.views = ()  # its slice of each step row of the device buffer, made when used
        self.tokens = 0  # tokens routed through the layer in the current step (host-side)

    def __repr__(self):
        return (f"MoELayer({self.name!r}, layer={self.layer}, experts={self.num_experts}, "
                f"top_k={self.top_k}, source={self.source!r})")


def observe(model, agent=None, *, model_name=None, moe="auto", memory=True, stages=True,
            requests=True, layer_ranges=False, step_ranges=True, steps="auto", steps_per_copy=8):
    """Attaches to `model` (a torch.nn.Module) and returns an Observer.

    agent: an inferscope.Agent (default: one from the environment, closed with the observer).
    model_name: the `model` label of its metrics (default: the config's name_or_path, else its
        model_type, else the class name); sent with the layer/expert layout in the hello.
    moe: "auto" (find the transformers MoE layers) or False (only watch_moe()/record_topk()).
    memory / stages / requests: the cache bytes, the multimodal ranges, generate() requests.
    layer_ranges: an NVTX/agent range per decoder layer (for CUPTI attribution to layers;
        costs two C calls per layer per step, off by default).
    step_ranges: a range "forward" around each step and "generate" around each generate()
        (two C calls each): with CUPTI on, kernels outside every stage and layer (embeddings,
        lm_head, generate()'s token selection and stopping checks) are attributed too.
    steps: "auto" (each forward of `model` is a step) or "manual" (call obs.end_step()).
    steps_per_copy: K, the steps whose expert counts are copied from the device and sent to the
        agent together (one copy, one event, one C call per K steps instead of per step; each
        step keeps its own counts and step number). Counts reach the agent up to K steps late;
        a partial group is sent at generate()'s end, flush(), close() and when a MoE layer is
        added. 1 sends every step.
    """
    return Observer(model, agent, model_name=model_name, moe=moe, memory=memory, stages=stages,
                    requests=requests, layer_ranges=layer_ranges, step_ranges=step_ranges,
                    steps=steps, steps_per_copy=steps_per_copy)


def _timed(part):
    """Adds the host time spent inside an observer hook to stats()["hook_ns"] and to
    stats()["hook_ns_<part>"] (moe: counting ids; step: a step's start and end, which sends
    the counts of earlier steps; stage: the multimodal ranges): what observing costs the
    thread that runs the model, measured where it is spent (two perf_counter_ns reads, ~0.1 us,
    per hook), so the overhead can be told apart from run-to-run noise. stats() adds the parts
    up into "hook_ns"."""
    key = f"hook_ns_{part}"
    perf = time.perf_counter_ns

    def wrap(method):
        @functools.wraps(method)
        def timed(self, *args, **kwargs):
            start = perf()
            try:
                return method(self, *args, **kwargs)
            finally:
                self._stats[key] += perf() - start
        return timed
    return wrap


class Observer:
    """What observe() returns; close() (or `with`) removes every hook and flushes."""

    def __init__(self, model, agent=None, *, model_name=None, moe="auto", memory=True,
                 stages=True, requests=True, layer_ranges=False, step_ranges=True,
                 steps="auto", steps_per_copy=8):
        if not isinstance(model, _torch.nn.Module):
            raise TypeError(f"observe() needs a torch.nn.Module, not {type(model).__name__}")
        if steps not in ("auto", "manual"):
            raise ValueError(f"steps must be 'auto' or 'manual', not {steps!r}")
        if (isinstance(steps_per_copy, bool) or not isinstance(steps_per_copy, int) or
                not 1 <= steps_per_copy <= _STEPS_PER_COPY_MAX):
            raise ValueError(f"steps_per_copy must be an int in [1, {_STEPS_PER_COPY_MAX}], not "
                             f"{steps_per_copy!r}")
        self._k = steps_per_copy
        self._pending_max = max(_PENDING_GROUPS_MIN, -(-_PENDING_STEPS // steps_per_copy))
        self.model = model
        self._own_agent = agent is None
        self.agent = Agent() if agent is None else agent
        self.layers = []  # MoELayer, in registration order
        self._by_layer = {}  # layer index -> MoELayer
        self._handles = []
        self._lock = threading.Lock()
        self._step = 0
        self._moe_timed = [True]  # whether this step's per-layer captures are timed
        self._depth = 0  # nesting of the root forward (a model may call itself)
        # Device buffer [K, bins], int32: row j holds step j of the group; in a row, one bin
        # per expert per layer + one bin of dropped ids per layer.
        self._counts = None
        self._slot = 0  # the row the current step counts into
        self._slot_views = ()  # self._counts[j] for each j, made when first used
        self._group_steps = []  # step numbers of the group's finished steps (rows 0..)
        self._group_tokens = []  # their tokens, len(self.layers) per step
        self._meta = None  # the layer arrays of the C call, per layer set
        self._ones = None
        self._ones_by_n = {}
        # The router ids of this step, counted at its end; mutated in place (the hooks hold
        # these lists), emptied at every step's end: never kept across steps.
        self._deferred = []  # the id tensors
        self._deferred_keys = []  # (row of its layer, numel) of each
        self._deferred_ids = 0
        self._plans = {}  # tuple of deferred keys -> how to count them (_plan)
        self._run = None  # _IdsRun: steps whose ids wait for the group's end
        # Router ids are kept (not copied) until the group's end, until a model is seen
        # changing them in place after their step; that group is then dropped (counted).
        self._keep_ids = True
        self._group_spoiled = False
        self._run_bufs = {}  # (layers, ids shape) -> (ids buffer, its rows)
        self._run_views = {}  # the views _flush_run counts through, per shape of run
        self._pending = collections.deque()  # (steps, tokens, host rows, event or None, meta)
        self._free_host = []
        self._stage_events = []  # (request_id, stage, start_ns, end_ns, start_ev, end_ev)
        self._open_stage = {}
        self._generate = None  # the generate() being observed: dict of its state
        self._next_request_id = 1
        self._stats = {"steps": 0, "steps_dropped": 0, "hook_errors": 0, "moe_calls": 0,
                       "invalid_expert_ids": 0, "shared_expert_tokens": 0,
                       "stages_dropped": 0, "hook_ns_moe": 0,
                       "hook_ns_step": 0, "hook_ns_stage": 0, **{
                           f"hook_ns_step_{part}": 0 for part in _STEP_PARTS}}
        self._errors_reported = set()
        self._closed = False
        self._layout = []  # experts per layer as described to the collector ([]: not sent)
        self._layer_ranges = layer_ranges
        self._step_ranges = step_ranges
        self._step_scope = None  # the open "forward" range
        self._scopes = {}  # (name, request id) -> agent range scope, reused
        self._memory = memory
        self._memory_at = -(1 << 62)  # perf_counter_ns of the last cache walk
        self._memory_dirty = False
        self._last_cache = None
        config = getattr(model, "config", None)
        self._config = config
        if moe == "auto":
            self._discover_moe(model)
        elif moe not in (False, None):
            raise ValueError(f"moe must be 'auto' or False, not {moe!r}")
        self.model_name = model_name or _model_name(model, config)
        self._describe()
        if steps == "auto":
            # always: a forward that raises still ends its step, so the nesting count comes
            # back to 0.
            self._hook(tap_forward(model, before=self._root_pre, after=self._root_post,
                                   always=True))
        if stages:
            self._discover_stages(model)
        if layer_ranges:
            self._attach_layer_ranges(model)
        if requests and callable(getattr(model, "generate", None)):
            self._wrap_generate(model)

    # [SECTION] public API ---------------------------------------------------------

    def watch_moe(self, module, layer, num_experts, top_k=None, indices=None):
        """Observes a MoE module you name. indices(module, args, kwargs, output) returns the
        top-k expert ids tensor ([tokens, k]); by default they are taken from the module's
        output (a router returning ids, or logits of num_experts columns -> top-k)."""
        if not isinstance(module, _torch.nn.Module):
            raise TypeError("watch_moe() needs a torch.nn.Module")
        entry = self._register(MoELayer(type(module).__name__, _check_layer(layer),
                                        _check_experts(num_experts), top_k, "custom",
                                        trusted=False))
        if indices is None:
            def extract(m, args, kwargs, out):
                return _ids_from_router(entry, out)
        else:
            extract = indices
        def tap(m, args, kwargs, out):
            self._count_from(entry, extract, m, args, kwargs, out)
        self._hook(tap_forward(module, after=tap))
        return entry

    def record_topk(self, layer, topk_ids, num_experts=None):
        """Counts top-k expert ids you computed yourself (for example a fused-MoE kernel's
        topk_ids) for `layer` in the current step. Ids outside [0, num_experts) (such as -1
        for a token a capacity limit dropped) are counted as dropped, never crash the device."""
        entry = self._by_layer.get(layer)
        if entry is None:
            if num_experts is None:
                raise ValueError(f"layer {layer} is not known yet: pass num_experts")
            entry = self._register(MoELayer("record_topk", _check_layer(layer),
                                            _check_experts(num_experts), None, "record_topk",
                                            trusted=False))
        self._count(entry, topk_ids)

    def end_step(self):
        """Closes the current step (steps="manual"): its counts go to the host asynchronously."""
        self._finish_step()

    def flush(self, timeout=5.0):
        """Records every finished step (waits for their copies) and flushes the agent."""
        self._send_group_now()
        self._drain(wait=True)
        self._resolve_stages(wait=True)
        if self._memory_dirty:
            self._report_memory(None, force=True)
        return self.agent.flush(timeout)

    def stats(self):
        out = dict(self._stats)
        out["hook_ns"] = out["hook_ns_moe"] + out["hook_ns_step"] + out["hook_ns_stage"]
        out["moe_layers"] = len(self.layers)
        out["pending_steps"] = sum(len(p[0]) for p in self._pending)
        out["steps_per_copy"] = self._k
        return out

    def close(self):
        if self._closed:
            return
        self._closed = True
        for h in self._handles:
            h.remove()
        self._handles.clear()
        if self._generate is not None or "generate" in vars(self.model):
            self.model.__dict__.pop("generate", None)
        self._finish_step()
        self._send_group_now()
        self._drain(wait=True)
        self._resolve_stages(wait=True)
        if self._memory_dirty:
            self._report_memory(None, force=True)
        if self._own_agent:
            self.agent.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def _describe(self):
        """The hello's model description, sent once: the name, and the layout (experts per
        layer, mixers, top-k) when MoE layers were found. The collector takes a model's layout
        from its first description and checks every expert_load against it, so layers added
        later must agree with it (_register says so), and without found layers only the name
        is sent (any later layer is then accepted)."""
        text = getattr(self._config, "text_config", None) or self._config
        experts, mixers, top_k, shared = [], None, 0, 0
        if self.layers:
            n = max([e.layer + 1 for e in self.layers] +
                    [getattr(text, "num_hidden_layers", 0) or 0])
            experts = [0] * n
            for e in self.layers:
                experts[e.layer] = e.num_experts
            kinds = getattr(text, "layers_block_type", None)
            if isinstance(kinds, (list, tuple)) and len(kinds) == n:
                mixers = ["ssm" if str(k).lower() in ("mamba", "mamba2", "ssm",
                                                      "linear_attention") else "attention"
                          for k in kinds]
            top_k = next((e.top_k for e in self.layers if e.top_k), 0)
            shared = max(e.shared_experts for e in self.layers)
        self._layout = experts
        self.agent.set_model(self.model_name, experts, mixers, top_k, shared)

    # [SECTION] discovery ----------------------------------------------------------

    def _discover_moe(self, model):
        """A MoE block is a module with an `experts` child and a `gate`/`router` child; its
        layer index comes from its path (model.layers.<i>.mlp)."""
        for name, module in model.named_modules():
            experts = _first_attr(module, _EXPERTS_ATTRS)
            router_name, router = _first_named_attr(module, _ROUTER_ATTRS)
            if experts is None or router is None or not isinstance(router, _torch.nn.Module):
                continue
            m = _LAYER_INDEX.search(name)
            if m is None:
                continue
            layer = int(m.group(1))
            if layer in self._by_layer:
                continue  # a nested block of the same layer (e.g. a wrapper): keep the outer
            num_experts = _num_experts(module, router, experts, self._config)
            if not num_experts:
                continue
            top_k = _top_k(module, router, self._config)
            shared = _first_attr(module, _SHARED_ATTRS)
            entry = MoELayer(f"{name}.{router_name}", layer, num_experts, top_k, "", trusted=True,
                             shared_experts=0 if shared is None else 1)
            # Taps on forward, not forward hooks: a module with hooks takes PyTorch's slow
            # call path, paid outside the hook (_forward_tap.py).
            if _takes_topk_ids(experts):
                # transformers 5: the experts module receives the router's top-k ids.
                entry.source = "experts(top_k_index)"
                self._register(entry)
                self._hook(tap_forward(experts, before=self._router_hook(entry, _topk_of_call)))
            else:
                entry.source = "router output"
                self._register(entry)
                self._hook(tap_forward(router, after=self._router_hook(
                    entry, _ids_of_router_call(entry))))
            if shared is not None:
                self._hook(tap_forward(shared, before=self._shared_pre))

    def _discover_stages(self, model):
        found = {}
        for name, module in model.named_modules():
            leaf = name.rsplit(".", 1)[-1]
            for stage, names in (("encoder", _ENCODER_NAMES), ("connector", _CONNECTOR_NAMES),
                                 ("backbone", _BACKBONE_NAMES)):
                if leaf in names and stage not in found and module is not model:
                    found[stage] = module
        if "encoder" not in found and "connector" not in found:
            return  # not multimodal: the whole model is the backbone, timed by the steps
        for stage, module in found.items():
            self._hook(tap_forward(module, before=lambda m, args, kwargs, s=stage:
                                   self._stage_begin(s),
                                   after=lambda m, args, kwargs, out, s=stage:
                                   self._stage_end(s)))

    def _attach_layer_ranges(self, model):
        for name, module in model.named_modules():
            m = re.fullmatch(r"(?:.*\.)?(?:layers|h|blocks)\.(\d+)", name)
            if m is None:
                continue
            scope = self.agent.range(f"layer.{int(m.group(1))}")
            # always: a layer that raises still closes its range.
            self._hook(tap_forward(module, before=lambda mod, args, kwargs, s=scope:
                                   s.__enter__(),
                                   after=lambda mod, args, kwargs, out, s=scope:
                                   s.__exit__(None, None, None), always=True))

    # [SECTION] counting on the device ---------------------------------------------

    def _register(self, entry):
        with self._lock:
            if entry.layer in self._by_layer:
                raise ValueError(f"MoE layer {entry.layer} is already observed "
                                 f"({self._by_layer[entry.layer]!r})")
            if self._layout and (entry.layer >= len(self._layout) or
                                 self._layout[entry.layer] != entry.num_experts):
                raise ValueError(
                    f"layer {entry.layer} with {entry.num_experts} experts disagrees with the "
                    f"layout already sent to the collector ({len(self._layout)} layers, "
                    f"experts per layer {self._layout}); the collector would refuse its loads. "
                    "Observe with moe=False to declare every MoE layer yourself.")
            entry.offset = sum(e.num_experts + 1 for e in self.layers)
            entry.row = len(self.layers)
            self.layers.append(entry)
            self._by_layer[entry.layer] = entry
            if self._counts is not None:  # grown in place: counts of this step are kept
                self._grow(self._counts.device)
        return entry

    def _router_hook(self, entry, extract):
        """The forward tap of a discovered router: extract(*tap args) gives its top-k
        ids, kept for the step's end (_count_deferred). The hot path of observing: one call
        per MoE layer per forward, so it is one function with its state in locals; anything
        unusual (not an int64 tensor, an extractor's error) takes the general path."""
        deferred, keys, stats = self._deferred, self._deferred_keys, self._stats
        row, perf, count, timed = entry.row, time.perf_counter_ns, self._count, self._moe_timed
        # transformers calls experts modules positionally: (hidden, top_k_index, weights); that
        # call needs no extractor's frame.
        positional = extract is _topk_of_call

        def hook(*hook_args):
            start = perf() if timed[0] else 0
            try:
                args = hook_args[1]
                if positional and len(args) > 1 and not hook_args[2]:
                    ids = args[1]
                else:
                    ids = extract(*hook_args)
                if ids.__class__ is _Tensor and ids.dtype is _INT64:
                    n = ids.numel()
                    if n:
                        shape = ids.shape
                        k = shape[-1] if len(shape) > 1 else (entry.top_k or 1)
                        if entry.top_k is None:
                            entry.top_k = k
                        entry.tokens += n // k
                        deferred.append(ids)  # counted in moe_calls by _count_deferred
                        keys.append((row, n))
                        self._deferred_ids += n
                        if self._deferred_ids >= _DEFERRED_IDS_MAX:  # bounded: long prefills
                            self._count_deferred()
                elif ids is not None:
                    count(entry, ids)
            except Exception as e:  # noqa: BLE001 -- never into the model
                self._hook_error(f"MoE layer {entry.layer} ids", e)
            finally:
                if start:
                    stats["hook_ns_moe"] += (perf() - start) * _MOE_TIMING_EVERY
        return hook

    @_timed("moe")
    def _count_from(self, entry, extract, *args):
        """Counts the ids extract(*args) returns; an extractor's error is counted, not raised."""
        try:
            ids = extract(*args)
        except Exception as e:  # noqa: BLE001 -- never into the model
            self._hook_error(f"MoE layer {entry.layer} ids", e)
            return
        if ids is not None:
            self._count(entry, ids)

    def _count(self, entry, ids):
        """The general path: ids of any integer dtype and shape, trusted (a router's: kept for
        the step's end) or not (watch_moe() / record_topk(): range-checked, counted now)."""
        try:
            if not isinstance(ids, _torch.Tensor):
                raise TypeError(f"top-k ids must be a tensor, not {type(ids).__name__}")
            if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == _torch.bool:
                raise TypeError(f"top-k ids must be integers, not {ids.dtype}")
            n = ids.numel()
            if n == 0:
                return
            k = ids.shape[-1] if ids.dim() > 1 else (entry.top_k or 1)
            if entry.top_k is None:
                entry.top_k = k
            entry.tokens += n // k
            if entry.trusted:  # kept for the step's end; moe_calls counted there
                self._deferred.append(ids if ids.dtype == _INT64 else ids.to(_INT64))
                self._deferred_keys.append((entry.row, n))
                self._deferred_ids += n
                if self._deferred_ids >= _DEFERRED_IDS_MAX:
                    self._count_deferred()
                return
            counts = self._counts
            if counts is None or counts.device != ids.device:
                self._grow(ids.device)
            # Ids from outside: anything not in [0, E) lands in the layer's last bin
            # (dropped) instead of tripping a device-side assert.
            e = entry.num_experts
            flat = ids.reshape(-1).to(_INT64).clamp(-1, e).remainder(e + 1)
            self._layer_view(entry, self._slot).index_add_(0, flat, self._ones_n(n))
            self._stats["moe_calls"] += 1
        except Exception as e:  # noqa: BLE001 -- never into the model
            self._hook_error(f"MoE layer {entry.layer}", e)

    def _count_deferred(self, step_end=False):
        """Counts the kept router ids of the step into its row. Each PyTorch op costs tens of
        us of host time on a GPU host: their number is the cost. The usual step (every MoE
        layer, in order, the same number of ids), at its end: ONE op, a cat of its ids into
        its row of an ids buffer (a copy: the router's tensors are not kept), counted for all
        the group's steps at once at the group's end (_flush_run: one scatter_add_). Mid-step
        (early, flush) the same step takes a stack and a scatter_add_ into its row; other steps
        one cat, one add of each id's layer offset (a device tensor cached per step shape),
        one index_add_."""
        tensors, keys = self._deferred, self._deferred_keys
        if not tensors:
            return
        self._stats["moe_calls"] += len(tensors)
        try:
            counts = self._counts
            if counts is None:
                counts = self._grow(tensors[0].device)
            key = tuple(keys)
            plan = self._plans.get(key)
            if plan is None:
                plan = self._plan(key)
            stacked, target, ones, shape = plan[:4]
            if stacked:
                if step_end and shape[0] * shape[1] * self._k <= _RUN_BUFFER_IDS:
                    run = self._run
                    ids_shape = tensors[0].shape
                    if (run is None or run.plan is not plan or run.key[1] != ids_shape or
                            run.start + run.count != self._slot):
                        if run is not None:
                            self._flush_run()
                        run = self._start_run(plan, ids_shape, keys[0][0])
                    kept = run.tensors
                    if kept is not None:  # no op now: the tensors wait for the group's end
                        kept += tensors
                        if run.versions is not None:
                            try:
                                run.versions += [t._version for t in tensors]
                            except RuntimeError:  # inference tensors have no version counter
                                run.versions = None
                    else:
                        # cat along dim 0 lays [T, k] ids out as stack would (layer-major),
                        # without an unsqueeze per layer; other shapes raise (one by one).
                        _torch.cat(tensors, out=run.buf[1][self._slot])
                    run.count += 1
                    return
                idx = _torch.stack(tensors)
                if idx.dim() != 2:
                    idx = idx.view(shape)
                offset, experts = plan[4:]
                self._slot_view(self._slot).narrow(0, offset, shape[0] * (experts + 1)).view(
                    shape[0], experts + 1).scatter_add_(1, idx, ones)
            else:
                idx = _torch.cat([t.reshape(-1) for t in tensors])
                idx += target
                self._slot_view(self._slot).index_add_(0, idx, ones)
        except (RuntimeError, IndexError):
            # Ids on another device than the buffer (a model moved, or split over devices), or
            # of one size with different shapes (or none: 0-d): one layer at a time.
            self._count_one_by_one(list(zip(tensors, keys)))
        finally:
            tensors.clear()
            keys.clear()
            self._deferred_ids = 0

    @_normal_tensors
    def _plan(self, key):
        """How a step with these deferred (row, numel) keys is counted: (True, None, ones
        [L, n], (L, n), the first layer's offset, E) when the layers are rows r0..r0+L-1 in
        order with the same expert count E and id count n; else (False, the ids' layer
        offsets, ones [total], None)."""
        if len(self._plans) >= 64:
            self._plans.clear()
        rows = [r for r, _ in key]
        sizes = [n for _, n in key]
        entries = [self.layers[r] for r in rows]
        experts = entries[0].num_experts
        if (rows == list(range(rows[0], rows[0] + len(rows))) and len(set(sizes)) == 1 and
                all(e.num_experts == experts for e in entries)):
            n_layers, n = len(rows), sizes[0]
            ones = self._ones_n(n).expand(n_layers, n)
            plan = (True, None, ones, (n_layers, n), entries[0].offset, experts)
        else:
            offsets = _torch.repeat_interleave(
                _torch.tensor([e.offset for e in entries], dtype=_INT64),
                _torch.tensor(sizes, dtype=_INT64)).to(self._counts.device)
            plan = (False, offsets, self._ones_n(sum(sizes)), None)
        self._plans[key] = plan
        return plan

    def _start_run(self, plan, ids_shape, first_row):
        """A run of consecutive steps (from the current row) whose ids are counted together by
        _flush_run, through an ids buffer [K, layers * ids_shape[0], *ids_shape[1:]] (kept per
        shape, a few at most)."""
        n_layers = plan[3][0]
        bkey = (n_layers, tuple(ids_shape))
        buf = self._run_bufs.get(bkey)
        if buf is None:
            buf = self._new_run_buf(bkey, ids_shape)
        run = self._run = _IdsRun(plan, bkey, buf, self._slot, first_row, self._keep_ids)
        return run

    @_normal_tensors
    def _new_run_buf(self, bkey, ids_shape):
        if len(self._run_bufs) >= 4:
            self._run_bufs.clear()
            self._run_views.clear()
        buf = _torch.empty((self._k, bkey[0] * ids_shape[0], *ids_shape[1:]), dtype=_INT64,
                           device=self._counts.device)
        buf = self._run_bufs[bkey] = (buf, buf.unbind(0))  # buf[row]: made once
        return buf

    def _flush_run(self):
        """Counts the run's ids into their rows: one cat of the kept tensors of all its steps
        into the ids buffer, one scatter_add_ (the rows' layer bins viewed as [steps, layers,
        experts + 1]). Kept tensors changed in place since their step spoil the group
        (_send_group drops it)."""
        run, self._run = self._run, None
        if run is None or not run.count:
            return
        _, _, _, (n_layers, n), offset, experts = run.plan
        start, count = run.start, run.count
        vkey = (run.key, offset, experts, start, count)
        views = self._run_views.get(vkey)
        if views is None:  # made once per shape of run: a full group's is the usual one
            views = self._make_run_views(vkey, run.buf[0], n_layers, n)
        target, idx, ones, flat = views
        kept = run.tensors
        if kept is not None:
            if run.versions is not None and [t._version for t in kept] != run.versions:
                self._ids_changed()
                return
            try:
                _torch.cat(kept, out=flat)
            except (RuntimeError, IndexError):  # other shapes of one size, other devices
                self._count_run_one_by_one(run)
                return
        target.scatter_add_(2, idx, ones)

    def _ids_changed(self):
        self._group_spoiled = True
        self._keep_ids = False
        self._hook_error("kept top-k ids", RuntimeError(
            "the model changed a router's top-k ids in place after its step: this group's "
            "steps are dropped (stats()['steps_dropped']); from now on each step's ids are "
            "copied at its end"))

    def _count_run_one_by_one(self, run):
        n_layers = run.plan[3][0]
        kept = run.tensors
        for i in range(run.count):
            self._count_one_by_one(
                [(t, (run.first_row + j, t.numel()))
                 for j, t in enumerate(kept[i * n_layers:(i + 1) * n_layers])], run.start + i)

    @_normal_tensors
    def _make_run_views(self, vkey, buf, n_layers, n):
        _, offset, experts, start, count = vkey
        if len(self._run_views) >= 64:
            self._run_views.clear()
        rows = buf[start:start + count]
        views = self._run_views[vkey] = (
            self._counts[start:start + count].narrow(1, offset, n_layers * (experts + 1))
            .view(count, n_layers, experts + 1),
            rows.view(count, n_layers, n),
            self._ones_n(n).expand(count, n_layers, n),
            rows.flatten(0, 1))  # what the cat of the kept ids of `count` steps fills
        return views

    def _count_one_by_one(self, items, slot=None):
        """Counts (ids, (layer row, numel)) items into step row `slot` (default: the current
        step's) one layer at a time: ids of any shape, on any device."""
        if not items:
            return
        device = items[0][0].device
        if (slot is None and device != self._counts.device and
                all(t.device == device for t, _ in items)):
            self._deferred.clear()
            self._deferred_keys.clear()
            self._grow(device)  # the model moved: the buffer follows it
        counts = self._counts
        slot = self._slot if slot is None else slot
        for t, (row, n) in items:
            self._layer_view(self.layers[row], slot).index_add_(
                0, t.reshape(-1).to(counts.device), self._ones_n(n))

    def _slot_view(self, slot):
        """Step row `slot` of the device buffer (a view made once per row, when first used:
        an observer that only counts full groups never makes one)."""
        view = self._slot_views[slot]
        return view if view is not None else self._make_slot_view(slot)

    @_normal_tensors
    def _make_slot_view(self, slot):
        view = self._slot_views[slot] = self._counts[slot]
        return view

    def _layer_view(self, entry, slot):
        """The layer's bins in step row `slot` (made once, when first used)."""
        view = entry.views[slot]
        return view if view is not None else self._make_layer_view(entry, slot)

    @_normal_tensors
    def _make_layer_view(self, entry, slot):
        view = entry.views[slot] = self._slot_view(slot).narrow(0, entry.offset,
                                                                entry.num_experts + 1)
        return view

    def _ones_n(self, n):
        """A length-n view of a ones buffer, kept per n (a handful of batch shapes) so the hot
        path makes no new tensor."""
        view = self._ones_by_n.get(n)
        if view is not None:
            return view
        return self._new_ones_view(n)

    @_normal_tensors
    def _new_ones_view(self, n):
        if self._ones.numel() < n:
            self._ones = _torch.ones(max(n, 2 * self._ones.numel()), dtype=_torch.int32,
                                     device=self._ones.device)
            self._ones_by_n.clear()
            self._plans.clear()  # their ones are views of the old buffer
            self._run_views.clear()
        if len(self._ones_by_n) >= 256:
            self._ones_by_n.clear()
        view = self._ones_by_n[n] = self._ones[:n]
        return view

    @_normal_tensors
    def _grow(self, device):
        """(Re)allocates the buffer for every registered layer on `device`. The finished steps
        of the group are sent first (in the old layout); the step in progress keeps its counts
        (copied into row 0 of the new buffer, stream-ordered) and becomes row 0."""
        old = self._counts
        current = None
        if old is not None:
            if self._deferred:
                self._count_deferred()  # into the old buffer, copied below
            current = self._slot_view(self._slot)
            self._send_group()
        self._run = None
        self._run_bufs = {}
        self._run_views = {}
        size = sum(e.num_experts + 1 for e in self.layers)
        # int32: a step's count per expert stays far below 2**31, and the host reads the rows
        # as the C API's uint32 with no conversion.
        counts = _torch.zeros(self._k, size, dtype=_torch.int32, device=device)
        if current is not None and old.device == device:
            counts[0, :current.numel()].copy_(current)
        self._counts = counts
        self._slot = 0
        # Views made when first used (a view is a PyTorch op: tens of us on a GPU host).
        self._slot_views = [None] * self._k
        for e in self.layers:  # each layer's slice: its experts, then one bin for dropped ids
            e.views = [None] * self._k
        if self._ones is None or self._ones.device != device:
            self._ones = _torch.ones(1024, dtype=_torch.int32, device=device)
            self._ones_by_n = {}
        self._plans = {}
        self._free_host = []  # pinned buffers (and their events) of the old size are not reused
        arrays = (_array("I", [e.layer for e in self.layers]),
                  _array("I", [e.offset for e in self.layers]),
                  _array("I", [e.num_experts for e in self.layers]))
        self._meta = (len(self.layers), [a.buffer_info()[0] for a in arrays], size, arrays)
        return counts

    @_timed("moe")
    def _shared_pre(self, module, args, kwargs):
        try:
            x = args[0] if args else kwargs.get("hidden_states", kwargs.get("x"))
            if isinstance(x, _torch.Tensor):
                self._stats["shared_expert_tokens"] += x.numel() // max(1, x.shape[-1])
        except Exception as e:  # noqa: BLE001
            self._hook_error("shared expert", e)

    # [SECTION] steps ----------------------------------------------------------------

    @_timed("step")
    def _root_pre(self, module, args, kwargs):
        self._depth += 1
        t = time.perf_counter_ns()
        if self._depth == 1 and self._step_ranges:
            # One range around the whole forward: every kernel the model launches has an
            # enclosing range (lm_head and embeddings too, outside any stage or layer), so
            # with CUPTI on, its time is attributed (inferscope_gpu_kernel_seconds_total).
            self._step_scope = self._open_range("forward", self._request_id())
            self._lap("hook_ns_step_range", t)
        if self._depth == 1 and self._generate is not None:
            g = self._generate
            g["forwards"] += 1
            if g["forwards"] == 2 and g["first_token_ns"] == 0:
                # generate() synchronised on the first token (its stopping check) before
                # calling the model again: the first token is on the host now.
                g["first_token_ns"] = now_ns()

    @_timed("step")
    def _root_post(self, module, args, kwargs, output):
        self._depth -= 1
        if self._depth != 0:
            return
        scope, self._step_scope = self._step_scope, None
        t = time.perf_counter_ns()
        if scope is not None:
            self._close_range(scope, "forward")
            t = self._lap("hook_ns_step_range", t)
        if self._memory and output is not None:  # None: the forward raised (always_call)
            self._report_memory(output)
            t = self._lap("hook_ns_step_memory", t)
        self._finish_step(t)

    def _lap(self, key, start):
        """Adds the time since start to stats()[key] (the step hook's cost broken down:
        hook_ns_step_<range, memory, count, copy, drain>) and returns now."""
        now = time.perf_counter_ns()
        self._stats[key] += now - start
        return now

    def _finish_step(self, t=None):
        """Ends a step: its kept ids are counted into its row, and its step number and tokens
        join the group; the K-th step sends the group (_send_group)."""
        if t is None:
            t = time.perf_counter_ns()
        try:
            if self._pending or self._stage_events:
                self._drain(wait=False)
                self._resolve_stages(wait=False)
                t = self._lap("hook_ns_step_drain", t)
            if self._deferred:
                self._count_deferred(step_end=True)
            step = self._step
            self._step += 1
            self._moe_timed[0] = self._step % _MOE_TIMING_EVERY == 0
            self._stats["steps"] += 1
            layers = self.layers
            tokens = [e.tokens for e in layers]
            if self._counts is None or not any(tokens):
                if self._run is not None:  # its row is not the next step's: count it now
                    self._flush_run()
                self._lap("hook_ns_step_count", t)
                return
            for e in layers:
                e.tokens = 0
            self._group_steps.append(step)
            self._group_tokens += tokens
            if len(self._group_steps) < self._k:
                self._slot = len(self._group_steps)
                self._lap("hook_ns_step_count", t)
                return
            t = self._lap("hook_ns_step_count", t)
            self._send_group()
            t = self._lap("hook_ns_step_copy", t)
            self._drain(wait=False)
            self._lap("hook_ns_step_drain", t)
        except Exception as e:  # noqa: BLE001
            self._hook_error("step end", e)

    def _send_group_now(self):
        """Sends the finished steps of a partial group (flush, close, generate()'s end). A step
        in progress (ids counted, its end not reached) moves to row 0."""
        try:
            used = len(self._group_steps)
            if not used:
                return
            if self._deferred:
                self._count_deferred()
            in_progress = any(e.tokens for e in self.layers)
            self._send_group()
            if in_progress:
                self._slot_view(0).copy_(self._slot_view(used))
                self._slot_view(used).zero_()
        except Exception as e:  # noqa: BLE001
            self._hook_error("step end", e)

    def _send_group(self):
        """One asynchronous copy of the group's rows to the host, one event, one zero_(); the
        rows are sent to the agent once the event has completed (_drain). With too many groups
        in flight (the device far behind the host) the group is dropped and counted instead:
        never a wait."""
        used = len(self._group_steps)
        if not used:
            return
        if self._run is not None:
            self._flush_run()
        steps, tokens = self._group_steps, self._group_tokens
        self._group_steps, self._group_tokens = [], []
        self._slot = 0
        counts = self._counts
        rows = counts if used == self._k else counts[:used]
        spoiled, self._group_spoiled = self._group_spoiled, False
        if spoiled or len(self._pending) >= self._pending_max:
            self._stats["steps_dropped"] += used
            rows.zero_()
            return
        host, event = self._copy_to_host(rows)
        rows.zero_()  # stream-ordered after the copy
        self._pending.append((steps, tokens, host, event, self._meta))

    def _copy_to_host(self, rows):
        """(host tensor whose first rows will hold `rows`, an event completing with the copy, or
        None where the copy is synchronous)."""
        if not rows.is_cuda:
            return rows.clone(), None
        # Pinned buffer and event reused together (a new cudaEvent per copy cost host time
        # for nothing; at most _pending_max pairs ever exist).
        host, event = self._free_host.pop() if self._free_host else self._new_host_buffer()
        (host if rows.shape[0] == self._k else host[:rows.shape[0]]).copy_(rows,
                                                                            non_blocking=True)
        event.record()
        return host, event

    @_normal_tensors
    def _new_host_buffer(self):
        return (_torch.empty(self._counts.shape, dtype=_torch.int32, pin_memory=True),
                _torch.cuda.Event())

    def _drain(self, wait):
        """Sends each completed group: one C call for all its steps and layers, reading the
        host rows where the copy put them (int32 counts are the C API's uint32)."""
        pending = self._pending
        while pending:
            steps, tokens, host, event, meta = pending[0]
            if event is not None:
                if not wait and not event.query():
                    return
                event.synchronize()
            pending.popleft()
            n_layers, addr, row_size, _ = meta
            step_array = _array("Q", steps)
            try:
                token_array = _array("I", tokens)
            except OverflowError:  # more than 2**32 tokens in a step: saturate
                token_array = _array("I", [min(t, 2**32 - 1) for t in tokens])
            dropped = self.agent._expert_loads_steps(
                len(steps), step_array.buffer_info()[0], n_layers, addr[0], addr[1], addr[2],
                host.data_ptr(), row_size, token_array.buffer_info()[0])
            if dropped:
                self._stats["invalid_expert_ids"] += dropped
            if event is not None and meta is self._meta:
                self._free_host.append((host, event))

    # [SECTION] memory ----------------------------------------------------------------

    def _report_memory(self, output, force=False):
        try:
            cache = _cache_of(output) if output is not None else None
            if cache is None:
                cache = self._last_cache() if self._last_cache is not None else None
                if cache is None:
                    return
            elif self._last_cache is None or self._last_cache() is not cache:
                try:
                    self._last_cache = weakref.ref(cache)  # never keeps the cache alive
                except TypeError:
                    self._last_cache = None
            now = time.perf_counter_ns()  # an interval only: no C call for the agent's clock
            if not force and now - self._memory_at < _MEMORY_INTERVAL_NS:
                self._memory_dirty = True
                return
            self._memory_at, self._memory_dirty = now, False
            kv, ssm = cache_bytes(cache)
            self.agent.memory("kv_cache", kv)
            if ssm:
                self.agent.memory("ssm_state", ssm)
        except Exception as e:  # noqa: BLE001
            self._hook_error("cache memory", e)

    # [SECTION] stages and requests -------------------------------------------------

    def _request_id(self):
        g = self._generate
        return g["ids"][0] if g is not None else 0

    @_timed("stage")
    def _stage_begin(self, stage):
        try:
            scope = self.agent.range(stage, request_id=self._request_id())
            scope.__enter__()
            ev = None
            if _torch.cuda.is_available() and _torch.cuda.is_initialized():
                ev = _torch.cuda.Event(enable_timing=True)
                ev.record()
            self._open_stage[stage] = (scope, now_ns(), ev)
        except Exception as e:  # noqa: BLE001
            self._hook_error(f"stage {stage}", e)

    @_timed("stage")
    def _stage_end(self, stage):
        try:
            opened = self._open_stage.pop(stage, None)
            if opened is None:
                return
            scope, start_ns, start_ev = opened
            scope.__exit__(None, None, None)
            end_ev = None
            if start_ev is not None:
                end_ev = _torch.cuda.Event(enable_timing=True)
                end_ev.record()
            wire_stage = stage
            if stage == "backbone":
                g = self._generate
                wire_stage = "prefill" if g is None or g["forwards"] <= 1 else "decode"
            self._stage_events.append((self._request_id(), wire_stage, start_ns, now_ns(),
                                       start_ev, end_ev))
            if len(self._stage_events) > 4096:  # bounded: the GPU is far behind; count, drop
                self._stage_events.pop(0)
                self._stats["stages_dropped"] += 1
        except Exception as e:  # noqa: BLE001
            self._hook_error(f"stage {stage}", e)

    def _resolve_stages(self, wait):
        while self._stage_events:
            rid, stage, start_ns, end_ns, start_ev, end_ev = self._stage_events[0]
            gpu_ns, device = 0, "cpu"
            if end_ev is not None:
                if not wait and not end_ev.query():
                    return
                end_ev.synchronize()
                gpu_ns, device = int(start_ev.elapsed_time(end_ev) * 1e6), "gpu"
            self._stage_events.pop(0)
            self.agent.stage(rid, stage, start_ns, end_ns, device=device, gpu_ns=gpu_ns)

    def _wrap_generate(self, model):
        original = model.generate
        observer = self

        def generate(*args, **kwargs):
            if observer._closed or observer._generate is not None:
                return original(*args, **kwargs)  # closed, or a nested generate(): untouched
            ids_in = kwargs.get("input_ids", args[0] if args else None)
            batch = ids_in.shape[0] if isinstance(ids_in, _torch.Tensor) and ids_in.dim() > 1 \
                else 1
            first = observer._next_request_id
            observer._next_request_id += batch
            g = observer._generate = {"ids": list(range(first, first + batch)),
                                      "arrival_ns": now_ns(), "first_token_ns": 0,
                                      "forwards": 0}
            status = "error"
            out = None
            # A range around the whole call: generate()'s own kernels between forwards (the
            # greedy argmax / sampling, appending the token, stopping checks) are attributed
            # to it, not left without a range (6 % of Llava's kernel time on the H100).
            scope = observer._open_range("generate", first) if observer._step_ranges else None
            try:
                out = original(*args, **kwargs)
                status = "ok"
                return out
            finally:
                if scope is not None:
                    observer._close_range(scope, "generate")
                observer._generate = None
                finish = now_ns()
                # The last group's steps go now (generate() has synchronised on its tokens),
                # not at the next generate()'s Kth step.
                observer._send_group_now()
                observer._drain(wait=False)
                try:
                    observer._report_requests(g, ids_in, kwargs.get("attention_mask"), out,
                                              finish, status)
                except Exception as e:  # noqa: BLE001
                    observer._hook_error("generate request", e)

        model.generate = generate

    def _report_requests(self, g, ids_in, mask, out, finish_ns, status):
        self._resolve_stages(wait=True)  # generate() has synchronised: these are done
        if self._memory_dirty:
            self._report_memory(None, force=True)
        seqs = getattr(out, "sequences", out)
        prompt_len = ids_in.shape[-1] if isinstance(ids_in, _torch.Tensor) else 0
        if isinstance(mask, _torch.Tensor) and mask.dim() == 2:
            prompts = [int(v) for v in mask.sum(-1).tolist()]
        else:
            prompts = [prompt_len] * len(g["ids"])
        out_len = seqs.shape[-1] - prompt_len if isinstance(seqs, _torch.Tensor) else 0
        first = g["first_token_ns"] or (finish_ns if out_len > 0 else 0)
        for i, rid in enumerate(g["ids"]):
            self.agent.request(rid, arrival_ns=g["arrival_ns"], finish_ns=finish_ns,
                               first_token_ns=first, prompt_tokens=prompts[i],
                               output_tokens=max(0, out_len), status=status)

    # [SECTION] plumbing ----------------------------------------------------------

    def _hook(self, handle):
        self._handles.append(handle)

    def _open_range(self, name, request_id):
        """An entered agent range, or None when the agent refused it (counted, never raised).
        The scope objects are kept per (name, request id) (re-entrant; a step's "forward" is
        one per generate()), so a step does not build one."""
        try:
            scope = self._scopes.get((name, request_id))
            if scope is None:
                if len(self._scopes) >= 64:
                    self._scopes.clear()
                scope = self._scopes[(name, request_id)] = self.agent.range(
                    name, request_id=request_id)
            scope.__enter__()
            return scope
        except Exception as e:  # noqa: BLE001
            self._hook_error(f"{name} range", e)
            return None

    def _close_range(self, scope, name):
        try:
            scope.__exit__(None, None, None)
        except Exception as e:  # noqa: BLE001
            self._hook_error(f"{name} range", e)

    def _hook_error(self, where, exc):
        self._stats["hook_errors"] += 1
        if where not in self._errors_reported:
            self._errors_reported.add(where)
            print(f"inferscope.torch: {where}: {type(exc).__name__}: {exc} (counted; the model "
                  f"runs on)", file=sys.stderr)


# [SECTION] helpers -------------------------------------------------------------------

def cache_bytes(cache):
    """(attention key/value bytes, convolution/SSM state bytes) held by a cache object:
    tensors found under its attributes, classified by the attribute's name. Shapes only."""
    kv = ssm = 0
    seen = set()
    stack = [(cache, "", 0)]
    while stack:
        obj, name, depth = stack.pop()
        if isinstance(obj, _torch.Tensor):
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            size = obj.numel() * obj.element_size()
            low = name.lower()
            if any(w in low for w in ("conv", "ssm", "recurrent", "state")):
                ssm += size
            elif any(w in low for w in ("key", "value", "k_cache", "v_cache")):
                kv += size
            continue
        if depth > 5 or id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, (list, tuple)):
            stack.extend((v, name, depth + 1) for v in obj)
        elif isinstance(obj, dict):
            stack.extend((v, f"{name}.{k}", depth + 1) for k, v in obj.items())
        elif hasattr(obj, "__dict__") and not isinstance(obj, (_torch.nn.Module, type)):
            stack.extend((v, f"{name}.{k}", depth + 1) for k, v in vars(obj).items()
                         if not k.startswith("__"))
    return kv, ssm


def _cache_of(output):
    cache = getattr(output, "past_key_values", None)
    if cache is None and isinstance(output, dict):
        cache = output.get("past_key_values")
    return cache


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
    return any(p in params for p in _TOPK_ARG_NAMES)


def _topk_of_call(module, args, kwargs=None):
    """The top-k ids an experts module is called with (its forward tap's arguments): a
    keyword of _TOPK_ARG_NAMES, else the second positional argument."""
    if kwargs:
        for key in _TOPK_ARG_NAMES:
            if key in kwargs:
                return kwargs[key]
    return args[1] if len(args) > 1 else None


def _ids_of_router_call(entry):
    """The extractor of a router's forward tap: the position in its output tuple where an
    int64 tensor was found is remembered (a router returns the same kind of tuple every call),
    so the usual call is one index and two checks; anything else takes _ids_from_router."""
    where = [None]

    def extract(module, args, kwargs, out):
        i = where[0]
        if i is not None and out.__class__ is tuple and len(out) > i:
            t = out[i]
            if t.__class__ is _Tensor and t.dtype is _INT64:
                return t
        ids = _ids_from_router(entry, out)
        if isinstance(out, tuple):
            where[0] = next((j for j, t in enumerate(out) if t is ids), None)
        return ids
    return extract


def _ids_from_router(entry, out):
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


def _model_name(model, config):
    for key in ("name_or_path", "_name_or_path", "model_type"):
        v = getattr(config, key, None)
        if isinstance(v, str) and v:
            return v
    return type(model).__name__


def _check_layer(layer):
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < 2**32:
        raise ValueError(f"layer must be an int in [0, 2**32), not {layer!r}")
    return layer


def _check_experts(n):
    if isinstance(n, bool) or not isinstance(n, int) or not 0 < n <= 4096:
        raise ValueError(f"num_experts must be an int in [1, 4096], not {n!r}")
    return n

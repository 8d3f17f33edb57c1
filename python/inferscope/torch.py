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

import functools
import inspect
import re
import sys
import threading
import time
import weakref

import torch as _torch

from ._expert_counts import CAPTURED_MAX, STEPS_PER_COPY_MAX, ExpertCounts, MoELayer
from ._forward_tap import capture_argument, tap_forward
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
_Tensor = _torch.Tensor
_INT64 = _torch.int64
# Parts of the step hook's cost, each its own stats()["hook_ns_step_<part>"].
_STEP_PARTS = ("range", "memory", "count", "copy", "drain")
perf_ns = time.perf_counter_ns  # the hooks' timers (a bench may swap in thread_time_ns first)
_MEMORY_INTERVAL_NS = 1_000_000_000  # cache bytes at most every second (and at flush, generate end)


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
                not 1 <= steps_per_copy <= STEPS_PER_COPY_MAX):
            raise ValueError(f"steps_per_copy must be an int in [1, {STEPS_PER_COPY_MAX}], not "
                             f"{steps_per_copy!r}")
        self.model = model
        self._own_agent = agent is None
        self.agent = Agent() if agent is None else agent
        self._handles = []
        self._lock = threading.Lock()
        self._depth = 0  # nesting of the root forward (a model may call itself)
        self._stats = {"steps": 0, "steps_dropped": 0, "hook_errors": 0, "moe_calls": 0,
                       "invalid_expert_ids": 0, "shared_expert_tokens": 0,
                       "stages_dropped": 0, "hook_ns_moe": 0,
                       "hook_ns_step": 0, "hook_ns_stage": 0, **{
                           f"hook_ns_step_{part}": 0 for part in _STEP_PARTS}}
        self._moe = ExpertCounts(self.agent, steps_per_copy, self._stats, self._hook_error)
        self.layers = self._moe.layers  # MoELayer, in registration order
        self._stage_events = []  # (request_id, stage, start_ns, end_ns, start_ev, end_ev)
        self._open_stage = {}
        self._generate = None  # the generate() being observed: dict of its state
        self._next_request_id = 1
        self._errors_reported = set()
        self._closed = False
        self._layout = []  # experts per layer as described to the collector ([]: not sent)
        self._layer_ranges = layer_ranges
        self._step_ranges = step_ranges
        self._step_range_calls = {}  # request id -> the "forward" range's (begin, end)
        self._step_range_end = None  # the open "forward" range's end
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
        entry = self._moe.by_layer.get(layer)
        if entry is None:
            if num_experts is None:
                raise ValueError(f"layer {layer} is not known yet: pass num_experts")
            entry = self._register(MoELayer("record_topk", _check_layer(layer),
                                            _check_experts(num_experts), None, "record_topk",
                                            trusted=False))
        self._moe.count(entry, topk_ids)

    def end_step(self):
        """Closes the current step (steps="manual"): its counts go to the host asynchronously."""
        self._finish_step()

    def flush(self, timeout=5.0):
        """Records every finished step (waits for their copies) and flushes the agent."""
        self._send_group_now()
        self._moe.drain(wait=True)
        self._resolve_stages(wait=True)
        if self._memory_dirty:
            self._report_memory(None, force=True)
        return self.agent.flush(timeout)

    def stats(self):
        out = dict(self._stats)
        out["hook_ns"] = out["hook_ns_moe"] + out["hook_ns_step"] + out["hook_ns_stage"]
        out["moe_layers"] = len(self.layers)
        out["pending_steps"] = self._moe.pending_steps()
        out["steps_per_copy"] = self._moe.k
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
        self._moe.drain(wait=True)
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
            if layer in self._moe.by_layer:
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
                moe = self._moe
                self._hook(capture_argument(experts, moe.captured, entry.row, 1, _TOPK_ARG_NAMES,
                                            CAPTURED_MAX, moe.overflow))
            else:
                entry.source = "router output"
                self._register(entry)
                self._hook(tap_forward(router, after=functools.partial(
                    self._count_from, entry, _ids_of_router_call(entry))))
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

    # [SECTION] MoE layers ------------------------------------------------------------

    def _register(self, entry):
        with self._lock:
            if entry.layer in self._moe.by_layer:
                raise ValueError(f"MoE layer {entry.layer} is already observed "
                                 f"({self._moe.by_layer[entry.layer]!r})")
            if self._layout and (entry.layer >= len(self._layout) or
                                 self._layout[entry.layer] != entry.num_experts):
                raise ValueError(
                    f"layer {entry.layer} with {entry.num_experts} experts disagrees with the "
                    f"layout already sent to the collector ({len(self._layout)} layers, "
                    f"experts per layer {self._layout}); the collector would refuse its loads. "
                    "Observe with moe=False to declare every MoE layer yourself.")
            return self._moe.register(entry)

    @_timed("moe")
    def _count_from(self, entry, extract, *args):
        """Counts the ids extract(*args) returns; an extractor's error is counted, not raised."""
        try:
            ids = extract(*args)
        except Exception as e:  # noqa: BLE001 -- never into the model
            self._hook_error(f"MoE layer {entry.layer} ids", e)
            return
        if ids is not None:
            self._moe.count(entry, ids)

    @_timed("moe")
    def _shared_pre(self, module, args, kwargs):
        try:
            x = args[0] if args else kwargs.get("hidden_states", kwargs.get("x"))
            if isinstance(x, _torch.Tensor):
                self._stats["shared_expert_tokens"] += x.numel() // max(1, x.shape[-1])
        except Exception as e:  # noqa: BLE001
            self._hook_error("shared expert", e)

    # [SECTION] steps ----------------------------------------------------------------

    def _root_pre(self, module, args, kwargs):
        t = perf_ns()
        self._depth += 1
        if self._depth == 1:
            if self._step_ranges:
                # One range around the whole forward: every kernel the model launches has an
                # enclosing range (lm_head and embeddings too, outside any stage or layer), so
                # with CUPTI on, its time is attributed (inferscope_gpu_kernel_seconds_total).
                self._open_step_range()
                self._stats["hook_ns_step_range"] += perf_ns() - t
            g = self._generate
            if g is not None:
                g["forwards"] += 1
                if g["forwards"] == 2 and g["first_token_ns"] == 0:
                    # generate() synchronised on the first token (its stopping check) before
                    # calling the model again: the first token is on the host now.
                    g["first_token_ns"] = now_ns()
        self._stats["hook_ns_step"] += perf_ns() - t

    def _root_post(self, module, args, kwargs, output):
        start = t = perf_ns()
        self._depth -= 1
        if self._depth == 0:
            if self._step_range_end is not None:
                end, self._step_range_end = self._step_range_end, None
                try:
                    end()
                except Exception as e:  # noqa: BLE001
                    self._hook_error("forward range", e)
                t = self._lap("hook_ns_step_range", t)
            if self._memory and output is not None:  # None: the forward raised (always)
                self._report_memory(output)
                t = self._lap("hook_ns_step_memory", t)
            self._finish_step(t)
        self._stats["hook_ns_step"] += perf_ns() - start

    def _open_step_range(self):
        """Opens the step's "forward" range: two C calls prepared once per request id
        (Agent._range_calls), no range object per step."""
        rid = self._request_id()
        calls = self._step_range_calls.get(rid)
        try:
            if calls is None:
                if len(self._step_range_calls) >= 64:
                    self._step_range_calls.clear()
                calls = self._step_range_calls[rid] = self.agent._range_calls("forward", rid)
            calls[0]()
            self._step_range_end = calls[1]
        except Exception as e:  # noqa: BLE001
            self._hook_error("forward range", e)

    def _lap(self, key, start):
        """Adds the time since start to stats()[key] (the step hook's cost broken down:
        hook_ns_step_<range, memory, count, copy, drain>) and returns now."""
        now = perf_ns()
        self._stats[key] += now - start
        return now

    def _finish_step(self, t=None):
        """Ends a step: completed groups are sent, the step's ids counted (ExpertCounts)."""
        if t is None:
            t = perf_ns()
        try:
            moe = self._moe
            if moe.pending or self._stage_events:
                moe.drain(wait=False)
                self._resolve_stages(wait=False)
                t = self._lap("hook_ns_step_drain", t)
            moe.end_step(t, self._lap)
        except Exception as e:  # noqa: BLE001
            self._hook_error("step end", e)

    def _send_group_now(self):
        try:
            self._moe.send_group_now()
        except Exception as e:  # noqa: BLE001
            self._hook_error("step end", e)

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
                observer._moe.drain(wait=False)
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

"""inferscope.torch: observe a PyTorch / Hugging Face transformers model with one call.

    import inferscope, inferscope.torch
    obs = inferscope.torch.observe(model)           # agent from the INFERSCOPE_* environment
    model.generate(**inputs)                        # per-expert load, KV / SSM memory,
    obs.close()                                     # stages and requests reach the collector

What it attaches (the model's code is not changed): taps on the forward of the model, of its
MoE layers' modules, multimodal parts and (layer_ranges) decoder layers (_forward_tap.py: no
forward hooks, so PyTorch keeps its fast call path for them), and a wrapper of generate():
  * every MoE layer it can find (_discovery.py: the transformers MoE families, or modules you
    name with watch_moe()): the top-k expert ids of each forward are kept (the router's own
    tensors, no op) and counted ON THE DEVICE for K steps at once (_expert_counts.py;
    steps_per_copy, default 16: one stack, one scatter_add_ into a buffer of K rows, one row per
    step); the rows are copied to pinned host memory with one asynchronous copy and an event,
    and sent once the event has completed (checked without blocking at a later step), each
    step with its own step number. No host sync.
  * the model's cache objects after a step, at most every second (and at generate()'s end,
    flush(), close()): bytes of attention keys/values ("kv_cache") and of convolution/SSM
    state ("ssm_state"), from tensor shapes only (_cache_memory.py).
  * multimodal parts (vision tower, projector, language model): NVTX-named ranges
    "encoder" / "connector" / "backbone", and stage records timed by CUDA events.
  * generate(): one request record per sequence (arrival, first token, finish, tokens)
    (_requests.py).

This module wires them together: observe(), the Observer's public API, the step (the model's
forward: its range, its end) and generate(). Hooks never raise into the model: an error
inside one is counted (stats()["hook_errors"]), reported once on stderr, and that hook stops
observing. See docs/integrations.md.
"""

import functools
import sys
import threading

import torch as _torch

from . import _discovery
from ._cache_memory import CacheMemory, cache_bytes
from ._expert_counts import (CAPTURED_MAX, STEPS_PER_COPY_DEFAULT, STEPS_PER_COPY_MAX,
                             ExpertCounts, MoELayer)
from ._forward_tap import capture_argument, tap_forward
from ._hook_time import perf_ns, timed
from ._requests import Requests
from .agent import MAX_EXPERTS, Agent, now_ns

__all__ = ["observe", "Observer", "MoELayer", "cache_bytes"]

# Parts of the step hook's cost, each its own stats()["hook_ns_step_<part>"].
_STEP_PARTS = ("range", "memory", "count", "copy", "drain")


def observe(model, agent=None, *, model_name=None, moe="auto", memory=True, stages=True,
            requests=True, layer_ranges=False, step_ranges=True, steps="auto",
            steps_per_copy=STEPS_PER_COPY_DEFAULT):
    """Attaches to `model` (a torch.nn.Module) and returns an Observer.

    agent: an inferscope.Agent (default: one from the environment, closed with the observer).
    model_name: the `model` label of its metrics (default: the config's name_or_path, else its
        model_type, else the class name); sent with the layer/expert layout in the hello.
    moe: "auto" (find the transformers MoE layers) or False (only watch_moe()/record_topk()).
    memory / stages / requests: the cache bytes, the multimodal ranges, generate() requests.
    layer_ranges: an NVTX/agent range per decoder layer (for CUPTI attribution to layers;
        costs two C calls per layer per step, off by default).
    step_ranges: a range "forward" around each step and "generate" around each generate()
        (two C calls each), so that with CUPTI on, kernels outside every stage and layer
        (embeddings, lm_head, generate()'s token selection and stopping checks) are attributed
        too. True (default): the "forward" ranges while the agent traces the GPU
        (INFERSCOPE_GPU_TRACE sampled, triggered or full; read at each generate() and every
        256 steps), none with the trace off, where they would only cost; "always": every
        step (a "forward" CPU span and NVTX range per step in any mode); False: neither.
    steps: "auto" (each forward of `model` is a step) or "manual" (call obs.end_step()).
    steps_per_copy: K, the steps whose expert counts are copied from the device and sent to the
        agent together (one copy, one event, one C call per K steps instead of per step; each
        step keeps its own counts and step number; default 16). Counts reach the agent up to K
        steps late; a partial group is sent at generate()'s end, flush(), close() and when a
        MoE layer is added. 1 sends every step.
    """
    return Observer(model, agent, model_name=model_name, moe=moe, memory=memory, stages=stages,
                    requests=requests, layer_ranges=layer_ranges, step_ranges=step_ranges,
                    steps=steps, steps_per_copy=steps_per_copy)


class Observer:
    """What observe() returns; close() (or `with`) removes every hook and flushes."""

    def __init__(self, model, agent=None, *, model_name=None, moe="auto", memory=True,
                 stages=True, requests=True, layer_ranges=False, step_ranges=True,
                 steps="auto", steps_per_copy=STEPS_PER_COPY_DEFAULT):
        if not isinstance(model, _torch.nn.Module):
            raise TypeError(f"observe() needs a torch.nn.Module, not {type(model).__name__}")
        if steps not in ("auto", "manual"):
            raise ValueError(f"steps must be 'auto' or 'manual', not {steps!r}")
        if (isinstance(steps_per_copy, bool) or not isinstance(steps_per_copy, int) or
                not 1 <= steps_per_copy <= STEPS_PER_COPY_MAX):
            raise ValueError(f"steps_per_copy must be an int in [1, {STEPS_PER_COPY_MAX}], not "
                             f"{steps_per_copy!r}")
        if moe not in ("auto", False, None):
            raise ValueError(f"moe must be 'auto' or False, not {moe!r}")
        if step_ranges not in (True, False, "always"):
            raise ValueError(f"step_ranges must be True, False or 'always', not {step_ranges!r}")
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
        self._errors_reported = set()
        self._closed = False
        self._moe = ExpertCounts(self.agent, steps_per_copy, self._stats, self._hook_error)
        self.layers = self._moe.layers  # MoELayer, in registration order
        self._requests = Requests(self.agent, self._stats, self._hook_error)
        self._cache = CacheMemory(self.agent, self._hook_error) if memory else None
        self._layout = []  # experts per layer as described to the collector ([]: not sent)
        self._step_ranges = step_ranges
        self._step_range_on = False  # whether steps open a "forward" range now
        self._range_check = 0  # steps until the agent's GPU trace mode is read again
        self._step_range = None  # the "forward" range's (begin, end) for the request id
        self._step_range_end = None  # the open "forward" range's end
        config = getattr(model, "config", None)
        self._config = config
        if moe == "auto":
            self._discover_moe(model, steps == "manual")
        self.model_name = model_name or _discovery.model_name(model, config)
        self._layout, mixers, top_k, shared = _discovery.layout(self.layers, config)
        self.agent.set_model(self.model_name, self._layout, mixers, top_k, shared)
        if steps == "auto":
            # always: a forward that raises still ends its step, so the nesting count comes
            # back to 0.
            self._hook(tap_forward(model, before=self._root_pre, after=self._root_post,
                                   always=True))
        if stages:
            self._attach_stages(model)
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
                return _discovery.ids_from_router(entry, out)
        else:
            extract = indices
        self._hook(tap_forward(module, after=functools.partial(self._count_from, entry,
                                                                extract)))
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
        self._send_everything()
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
        if self._requests.current is not None or "generate" in vars(self.model):
            self.model.__dict__.pop("generate", None)
        self._finish_step()
        self._send_everything()
        if self._own_agent:
            self.agent.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def _send_everything(self):
        """Every finished step's counts (waiting for their copies), stage and cache bytes."""
        self._send_group_now()
        self._moe.drain(wait=True)
        self._requests.resolve_stages(wait=True)
        if self._cache is not None:
            self._cache.flush()

    # [SECTION] attaching ---------------------------------------------------------------

    def _discover_moe(self, model, manual_steps):
        moe = self._moe
        # A step's captured ids are bounded by its forward with steps="auto"; with "manual",
        # by CAPTURED_MAX (counted early), in case end_step() is not called.
        limit = CAPTURED_MAX if manual_steps else None
        for block in _discovery.find_moe_blocks(model, self._config):
            entry = MoELayer(f"{block.name}.{block.router_name}", block.layer,
                             block.num_experts, block.top_k, "", trusted=True,
                             shared_experts=0 if block.shared is None else 1)
            # Taps on forward, not forward hooks: a module with hooks takes PyTorch's slow
            # call path, paid outside the hook (_forward_tap.py).
            if block.takes_ids:
                # transformers 5: the experts module receives the router's top-k ids; its
                # tap only appends them (checked and counted at the step's end).
                entry.source = "experts(top_k_index)"
                self._register(entry)
                self._hook(capture_argument(block.experts, moe.captured, entry.row, 1,
                                            _discovery.TOPK_ARG_NAMES, limit, moe.overflow))
            else:
                entry.source = "router output"
                self._register(entry)
                self._hook(tap_forward(block.router, after=functools.partial(
                    self._count_from, entry, _discovery.ids_of_router_call(entry))))
            if block.shared is not None:
                self._hook(tap_forward(block.shared, before=self._shared_pre))

    def _attach_stages(self, model):
        requests = self._requests
        for stage, module in _discovery.find_stages(model).items():
            self._hook(tap_forward(module, before=lambda m, args, kwargs, s=stage:
                                   requests.stage_begin(s),
                                   after=lambda m, args, kwargs, out, s=stage:
                                   requests.stage_end(s)))

    def _attach_layer_ranges(self, model):
        for index, module in _discovery.find_decoder_layers(model):
            scope = self.agent.range(f"layer.{index}")
            # always: a layer that raises still closes its range.
            self._hook(tap_forward(module, before=lambda mod, args, kwargs, s=scope:
                                   s.__enter__(),
                                   after=lambda mod, args, kwargs, out, s=scope:
                                   s.__exit__(None, None, None), always=True))

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

    @timed("moe")
    def _count_from(self, entry, extract, *args):
        """Counts the ids extract(*args) returns; an extractor's error is counted, not raised."""
        try:
            ids = extract(*args)
        except Exception as e:  # noqa: BLE001 -- never into the model
            self._hook_error(f"MoE layer {entry.layer} ids", e)
            return
        if ids is not None:
            self._moe.count(entry, ids)

    @timed("moe")
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
            self._range_check -= 1
            if self._range_check <= 0:
                self._refresh_step_range()
            if self._step_range_on:
                # One range around the whole forward: every kernel the model launches has an
                # enclosing range (lm_head and embeddings too, outside any stage or layer), so
                # with CUPTI on, its time is attributed (inferscope_gpu_kernel_seconds_total).
                try:
                    pair = self._step_range or self._new_step_range()
                    pair[0]()
                    self._step_range_end = pair[1]
                except Exception as e:  # noqa: BLE001
                    self._hook_error("forward range", e)
                self._stats["hook_ns_step_range"] += perf_ns() - t
            if self._requests.current is not None:
                self._requests.forward()
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
            if self._cache is not None and output is not None:  # None: the forward raised
                self._cache.after(output)
                t = self._lap("hook_ns_step_memory", t)
            self._finish_step(t)
        self._stats["hook_ns_step"] += perf_ns() - start

    def _refresh_step_range(self):
        """Whether steps open a "forward" range: always, never, or (step_ranges=True) while
        the agent traces the GPU, read from it every 256 steps and at each generate()."""
        self._range_check = 256
        mode = self._step_ranges
        try:
            self._step_range_on = mode == "always" or (
                bool(mode) and self.agent.gpu_trace_mode() != "off")
        except Exception as e:  # noqa: BLE001
            self._hook_error("forward range", e)

    def _new_step_range(self):
        """The "forward" range of the current request id: two C calls prepared once per
        generate() (Agent._range_calls), no range object per step."""
        pair = self._step_range = self.agent._range_calls("forward",
                                                          self._requests.request_id())
        return pair

    def _lap(self, key, start):
        """Adds the time since start to stats()[key] (the step hook's cost broken down:
        hook_ns_step_<range, memory, count, copy, drain>) and returns now."""
        now = perf_ns()
        self._stats[key] += now - start
        return now

    def _finish_step(self, t=None):
        """Ends a step: completed groups and stages are sent, the step's ids counted."""
        if t is None:
            t = perf_ns()
        try:
            moe = self._moe
            if moe.pending or self._requests.stage_events:
                moe.drain(wait=False)
                self._requests.resolve_stages(wait=False)
                t = self._lap("hook_ns_step_drain", t)
            moe.end_step(t, self._lap)
        except Exception as e:  # noqa: BLE001
            self._hook_error("step end", e)

    def _send_group_now(self):
        try:
            self._moe.send_group_now()
        except Exception as e:  # noqa: BLE001
            self._hook_error("step end", e)

    # [SECTION] generate() ---------------------------------------------------------------

    def _wrap_generate(self, model):
        original = model.generate
        observer, requests = self, self._requests

        def generate(*args, **kwargs):
            if observer._closed or requests.current is not None:
                return original(*args, **kwargs)  # closed, or a nested generate(): untouched
            ids_in = kwargs.get("input_ids", args[0] if args else None)
            g = requests.begin(ids_in)
            observer._step_range = None  # the next step's range carries this request id
            observer._range_check = 0  # and the GPU trace mode is read again
            if observer._cache is not None:
                observer._cache.new_call()
            status = "error"
            out = None
            # A range around the whole call: generate()'s own kernels between forwards (the
            # greedy argmax / sampling, appending the token, stopping checks) are attributed
            # to it, not left without a range (6 % of Llava's kernel time on the H100).
            scope = observer._open_range("generate", g["ids"][0]) \
                if observer._step_ranges else None
            try:
                out = original(*args, **kwargs)
                status = "ok"
                return out
            finally:
                if scope is not None:
                    observer._close_range(scope, "generate")
                finish = now_ns()
                observer._step_range = None
                # The last group's steps go now (generate() has synchronised on its tokens),
                # not at the next generate()'s Kth step.
                observer._send_group_now()
                observer._moe.drain(wait=False)
                try:
                    requests.end(g, ids_in, kwargs.get("attention_mask"), out, finish, status)
                    if observer._cache is not None:
                        observer._cache.flush()
                except Exception as e:  # noqa: BLE001
                    observer._hook_error("generate request", e)

        model.generate = generate

    # [SECTION] plumbing ----------------------------------------------------------

    def _hook(self, handle):
        self._handles.append(handle)

    def _open_range(self, name, request_id):
        """An entered agent range, or None when the agent refused it (counted, never raised)."""
        try:
            scope = self.agent.range(name, request_id=request_id)
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


def _check_layer(layer):
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < 2**32:
        raise ValueError(f"layer must be an int in [0, 2**32), not {layer!r}")
    return layer


def _check_experts(n):
    if isinstance(n, bool) or not isinstance(n, int) or not 0 < n <= MAX_EXPERTS:
        raise ValueError(f"num_experts must be an int in [1, {MAX_EXPERTS}], not {n!r}")
    return n

"""inferscope.Agent: the C API (agent.h) for Python, through ctypes.

Every call costs one ctypes call (a few hundred ns) on top of the agent's own
few ns; nothing blocks, and records are shipped by the agent's C++ thread.
Bad arguments raise ValueError or TypeError before anything is recorded; calls
on a closed agent are no-ops (like the C API's NULL agent).
"""

import array
import ctypes
import functools
import os
import threading

from . import _lib

MEMORY_KINDS = {"kv_cache": 0, "ssm_state": 1, "ssm_checkpoints": 2, "weights": 3,
                "activations": 4}
STAGES = {"encoder": 0, "connector": 1, "prefill": 2, "decode": 3}
DEVICES = {"cpu": 0, "gpu": 1}
REQUEST_STATUSES = {"ok": 0, "cancelled": 1, "error": 2, "rejected": 3}
GPU_TRACE_MODES = ("off", "sampled", "triggered", "full")  # INFERSCOPE_GPU_TRACE_*
MAX_EXPERTS = 4096  # wire::kMaxExperts
_MAX_PENDING = 4096  # CUDA-tensor expert loads waiting for their copy
_U32_MAX = 2**32 - 1
_U64_MAX = 2**64 - 1

_names = {}
_names_lock = threading.Lock()


def intern(name):
    """The process-wide id of a name (cached here, so repeated names are a dict lookup)."""
    nid = _names.get(name)
    if nid is not None:
        return nid
    if not isinstance(name, str):
        raise TypeError(f"a name must be a str, not {type(name).__name__}")
    with _names_lock:
        nid = _lib.load().inferscope_intern(name.encode())
        _names[name] = nid
    return nid


def now_ns():
    """CLOCK_MONOTONIC in ns: the time base of every record (same as time.monotonic_ns())."""
    return _lib.load().inferscope_now_ns()


def _enum(table, value, what):
    if isinstance(value, str):
        try:
            return table[value]
        except KeyError:
            raise ValueError(f"unknown {what} {value!r}; one of {sorted(table)}") from None
    if isinstance(value, int) and not isinstance(value, bool) and value in table.values():
        return value
    raise ValueError(f"unknown {what} {value!r}; one of {sorted(table)}")


def _count(value, what):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    if value < 0 or value > _U64_MAX:
        raise ValueError(f"{what} out of range: {value}")
    return value


def _u32(value, what):
    _count(value, what)
    if value > _U32_MAX:
        raise ValueError(f"{what} out of range for 32 bits: {value}")
    return value


class _RangeScope:
    """What Agent.range() returns: a context manager (re-entrant: each `with`
    pushes its own range) and a decorator. Enter and exit on the same thread."""

    __slots__ = ("_agent", "_name_id", "_request_id")

    def __init__(self, agent, name_id, request_id):
        self._agent, self._name_id, self._request_id = agent, name_id, request_id

    def __enter__(self):
        agent = self._agent
        storage = _lib.Range()  # the C ScopedRange lives in here until __exit__
        # Begun even on a closed agent (the C API then marks it empty), so that
        # __exit__ is always safe.
        agent._lib.inferscope_range_begin(agent._handle, storage, self._name_id,
                                          self._request_id)
        agent._tls_stack().append(storage)
        return self

    def __exit__(self, *exc):
        self._agent._lib.inferscope_range_end(self._agent._tls_stack().pop())
        return False

    def __call__(self, fn):
        scope = self

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with scope:
                return fn(*args, **kwargs)
        return wrapper


class Agent:
    """One agent: a connection to the collector and per-thread buffers.

    Agent() reads the INFERSCOPE_* environment variables, as the C API's
    inferscope_agent_create_from_env(); with collector/service/rank/world_size
    given, those override the environment (inferscope_agent_create). collector
    "" records nothing. Close it (close(), or use it as a context manager) to
    flush and stop its thread; calls after close() are no-ops.
    """

    def __init__(self, collector=None, service=None, rank=None, world_size=None):
        self._lib = _lib.load()
        self._tls = threading.local()
        self._pending = []  # (step, layer, host tensor, event, tokens, dropped, rerouted)
        self._pending_dropped = 0  # CUDA-tensor loads dropped because too many were in flight
        if collector is None and service is None and rank is None and world_size is None:
            handle = self._lib.inferscope_agent_create_from_env()
        else:
            if collector is None:
                collector = os.environ.get("INFERSCOPE_COLLECTOR", "tcp://127.0.0.1:7431")
            if not isinstance(collector, str) or (service is not None and
                                                  not isinstance(service, str)):
                raise TypeError("collector and service must be str")
            rank = _u32(0 if rank is None else rank, "rank")
            world_size = _u32(1 if world_size is None else world_size, "world_size")
            if world_size and rank >= world_size:
                raise ValueError(f"rank {rank} is not below world_size {world_size}")
            handle = self._lib.inferscope_agent_create(
                collector.encode(), service.encode() if service is not None else None, rank,
                world_size)
        if not handle:
            raise MemoryError("inferscope_agent_create failed (out of memory)")
        self._handle = ctypes.c_void_p(handle)

    # [SECTION] lifetime -------------------------------------------------------

    def close(self, timeout=None):
        """Flushes (bounded by the agent's shutdown timeout) and frees. Idempotent."""
        if self._handle:
            self._drain_pending(wait=True)
            # NULL in place: calls prepared with this handle object (_range_calls) see a
            # closed agent (no-ops in the C API), never a freed one.
            handle, self._handle.value = self._handle.value, None
            self._lib.inferscope_agent_destroy(handle)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: modules may be gone
            pass

    @property
    def closed(self):
        return not self._handle

    def flush(self, timeout=5.0):
        """True when everything recorded so far was sent within timeout seconds."""
        self._drain_pending(wait=True)
        if not self._handle:
            return True
        ms = max(0, min(int(timeout * 1000), _U32_MAX))
        return bool(self._lib.inferscope_agent_flush(self._handle, ms))

    def stats(self):
        """Counters of this agent: records_recorded/sent/dropped, bytes_sent, reconnects, connected."""
        s = _lib.Stats()
        self._lib.inferscope_agent_stats(self._handle, ctypes.byref(s))
        out = {name: getattr(s, name) for name, _ in _lib.Stats._fields_}
        out["connected"] = bool(out["connected"])
        out["pending_cuda_loads"] = len(self._pending)
        out["pending_cuda_dropped"] = self._pending_dropped
        return out

    def gpu_trace_mode(self):
        """The agent's GPU tracing mode now (INFERSCOPE_GPU_TRACE, or as switched at run time):
        "off", "sampled", "triggered" or "full"; "off" once closed."""
        mode = self._lib.inferscope_gpu_trace_mode(self._handle)
        return GPU_TRACE_MODES[mode] if 0 <= mode < len(GPU_TRACE_MODES) else "off"

    def set_model(self, name, experts_per_layer=(), mixers=None, top_k=0, shared_experts=0):
        """Describes the observed model: `name` becomes the `model` label of every metric;
        experts_per_layer[i] is layer i's routed experts (0: dense), mixers[i] "attention" or
        "ssm". Sent in the hello record (on the next connection if already connected)."""
        if not isinstance(name, str):
            raise TypeError("the model name must be a str")
        experts = [_u32(e, "experts") for e in experts_per_layer]
        if len(experts) > 1024 or any(e > MAX_EXPERTS for e in experts):
            raise ValueError("at most 1024 layers of at most 4096 experts each")
        kinds = {"attention": 0, "ssm": 1}
        mix = None
        if mixers is not None:
            if len(mixers) != len(experts):
                raise ValueError("mixers must have one entry per layer")
            mix = (ctypes.c_int * len(experts))(*[_enum(kinds, m, "mixer") for m in mixers])
        arr = (ctypes.c_uint32 * len(experts))(*experts)
        if not self._lib.inferscope_agent_set_model(
                self._handle, name.encode(), arr, mix, len(experts), _u32(top_k, "top_k"),
                _u32(shared_experts, "shared_experts")) and self._handle:
            raise ValueError(f"the agent refused the model description of {name!r}")

    # [SECTION] ranges and spans ---------------------------------------------

    def _tls_stack(self):
        try:
            return self._tls.stack
        except AttributeError:
            self._tls.stack = []
            return self._tls.stack

    def range(self, name, request_id=0):
        """A CPU range (and NVTX range): `with agent.range("decode"):` or `@agent.range("decode")`.
        Ranges nest; enter and exit on the same thread."""
        return _RangeScope(self, intern(name), _count(request_id, "request_id"))

    def _range_calls(self, name, request_id=0):
        """(begin, end): callables without arguments that open and close one range `name`,
        one at a time (the range's storage is theirs): the C calls with their arguments
        converted once, no Python frame (functools.partial over the ctypes functions). For a
        hook that opens the same range every step (inferscope.torch's "forward"): a ctypes
        call's argument conversion and the range object of range() are most of its cost on a
        host whose caches the model's own work evicts. After close() they record nothing."""
        storage = _lib.Range()
        ref = ctypes.byref(storage)  # holds `storage`
        # The ids as ctypes objects already: argtypes takes them as they are (a Python int is
        # converted at every call).
        begin = functools.partial(self._lib.inferscope_range_begin, self._handle, ref,
                                  ctypes.c_uint32(intern(name)),
                                  ctypes.c_uint64(_count(request_id, "request_id")))
        return begin, functools.partial(self._lib.inferscope_range_end, ref)

    def span(self, name, start_ns, end_ns, request_id=0):
        """A span that already happened, in now_ns() time."""
        if end_ns < start_ns:
            raise ValueError(f"span ends before it starts ({start_ns} > {end_ns})")
        self._lib.inferscope_span(self._handle, intern(name), start_ns, end_ns,
                                  _count(request_id, "request_id"))

    # [SECTION] MoE ------------------------------------------------------------

    def expert_load(self, step, layer, routed, tokens, dropped=0, rerouted=0):
        """One MoE layer's routing for one step: routed[e] = assignments to expert e.

        routed: a list/tuple of ints, a 1-D numpy integer array, anything with
        the buffer protocol of uint32, or a 1-D torch integer tensor. A CUDA
        tensor is copied asynchronously into pinned memory and recorded once
        the copy has finished (checked without blocking at the next call and
        at flush/close), so the caller's stream is never synchronised.
        """
        # One combined check on the hot path; the precise error only when it fails.
        if not (type(step) is int and type(layer) is int and type(tokens) is int and
                type(dropped) is int and type(rerouted) is int and 0 <= step <= _U64_MAX and
                0 <= layer <= _U32_MAX and 0 <= tokens <= _U32_MAX and
                0 <= dropped <= _U32_MAX and 0 <= rerouted <= _U32_MAX):
            _count(step, "step"), _u32(layer, "layer"), _u32(tokens, "tokens")
            _u32(dropped, "dropped"), _u32(rerouted, "rerouted")
        if self._pending:
            self._drain_pending(wait=False)
        if _is_torch(routed):
            if routed.is_cuda:
                self._queue_cuda(step, layer, routed, tokens, dropped, rerouted)
                return
            routed = routed.detach().contiguous().numpy()
        ptr, n, keep = _as_u32_buffer(routed)
        self._lib.inferscope_expert_load(self._handle, step, layer, ptr, n, tokens, dropped,
                                         rerouted)
        del keep

    def _expert_loads_steps(self, n_steps, steps, n_layers, layers, offsets, experts, counts,
                            row_stride, tokens):
        """inferscope.torch's per-group path: n_steps steps of n_layers layers in one C call;
        steps (uint64), layers / offsets / experts (uint32, n_layers each), counts (uint32 rows
        of row_stride, each layer's dropped bin after its experts) and tokens (uint32,
        n_steps * n_layers) are addresses. Returns the dropped ids of the loads sent."""
        return self._lib.inferscope_expert_loads_steps(self._handle, n_steps, steps, n_layers,
                                                       layers, offsets, experts, counts,
                                                       row_stride, tokens)

    def _queue_cuda(self, step, layer, t, tokens, dropped, rerouted):
        import torch
        _check_1d(t.dim(), t.numel())
        if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
            raise TypeError(f"routed must hold integers, not {t.dtype}")
        if len(self._pending) >= _MAX_PENDING:  # the GPU is far behind: drop, count, never wait
            self._pending_dropped += 1
            return
        # Widen on the device (stream-ordered, async), then one async copy into
        # pinned memory; the event says when the counts are on the host.
        src = t.reshape(-1).to(torch.int64)
        host = torch.empty(t.numel(), dtype=torch.int64, pin_memory=True)
        host.copy_(src, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self._pending.append((step, layer, host, event, tokens, dropped, rerouted))

    def _drain_pending(self, wait):
        while self._pending:
            step, layer, host, event, tokens, dropped, rerouted = self._pending[0]
            if not wait and not event.query():
                return
            event.synchronize()
            self._pending.pop(0)
            ptr, n, keep = _as_u32_buffer(host.numpy())
            self._lib.inferscope_expert_load(self._handle, step, layer, ptr, n, tokens, dropped,
                                             rerouted)
            del keep

    # [SECTION] memory, caches, stages, requests, counters ---------------------

    def memory(self, kind, used_bytes, capacity_bytes=0):
        """kind: "kv_cache", "ssm_state", "ssm_checkpoints", "weights" or "activations"."""
        self._lib.inferscope_memory(self._handle, _enum(MEMORY_KINDS, kind, "memory kind"),
                                    _count(used_bytes, "used_bytes"),
                                    _count(capacity_bytes, "capacity_bytes"))

    def prefix_cache(self, attention_queried, attention_hit, ssm_queried=0, ssm_hit=0):
        """Token counts since the previous call (deltas)."""
        if attention_hit > attention_queried or ssm_hit > ssm_queried:
            raise ValueError("a prefix cache cannot hit more tokens than were queried")
        self._lib.inferscope_prefix_cache(self._handle, _count(attention_queried, "queried"),
                                          _count(attention_hit, "hit"),
                                          _count(ssm_queried, "ssm_queried"),
                                          _count(ssm_hit, "ssm_hit"))

    def stage(self, request_id, stage, start_ns, end_ns, device="cpu", gpu_ns=0):
        """stage: "encoder", "connector", "prefill" or "decode"; device "cpu" or "gpu"."""
        if end_ns < start_ns:
            raise ValueError(f"stage ends before it starts ({start_ns} > {end_ns})")
        self._lib.inferscope_stage(self._handle, _count(request_id, "request_id"),
                                   _enum(STAGES, stage, "stage"), start_ns, end_ns,
                                   _enum(DEVICES, device, "device"), gpu_ns)

    def request(self, request_id, arrival_ns, finish_ns, first_token_ns=0, prompt_tokens=0,
                output_tokens=0, image_tokens=0, cached_tokens=0, status="ok"):
        """A finished request; first_token_ns 0 when no token was produced."""
        e = _lib.RequestEvent(_count(request_id, "request_id"), arrival_ns, first_token_ns,
                              finish_ns, _u32(prompt_tokens, "prompt_tokens"),
                              _u32(output_tokens, "output_tokens"),
                              _u32(image_tokens, "image_tokens"),
                              _u32(cached_tokens, "cached_tokens"),
                              _enum(REQUEST_STATUSES, status, "request status"))
        self._lib.inferscope_request(self._handle, ctypes.byref(e))

    def counter(self, name, delta):
        self._lib.inferscope_counter(self._handle, intern(name), float(delta))

    def gauge(self, name, value):
        self._lib.inferscope_gauge(self._handle, intern(name), float(value))


# [SECTION] array conversion ----------------------------------------------------

def _is_torch(x):
    return type(x).__module__.split(".")[0] == "torch" and hasattr(x, "is_cuda")


def _check_1d(ndim, n):
    if ndim != 1:
        raise ValueError(f"routed must be 1-D (one count per expert), got {ndim} dimensions")
    if n > MAX_EXPERTS:
        raise ValueError(f"routed has {n} experts; at most {MAX_EXPERTS}")


def _as_u32_buffer(routed):
    """(pointer, count, object keeping the memory alive) for the C call."""
    if isinstance(routed, array.array) and routed.typecode == "I" and routed.itemsize == 4:
        _check_1d(1, len(routed))
        return routed.buffer_info()[0], len(routed), routed
    if isinstance(routed, (list, tuple)):
        _check_1d(1, len(routed))
        try:
            # array.array converts in C: negative, too large and non-int values raise.
            arr = array.array("I", routed)
        except OverflowError:
            raise ValueError("routed counts must be in [0, 2**32)") from None
        except TypeError:
            if any(isinstance(v, (list, tuple)) for v in routed):
                raise ValueError("routed must be 1-D (one count per expert), got nested "
                                 "lists") from None
            bad = next(v for v in routed if isinstance(v, bool) or not isinstance(v, int))
            raise TypeError(f"routed must hold ints, found {type(bad).__name__}") from None
        return arr.buffer_info()[0], len(arr), arr
    if hasattr(routed, "__array_interface__"):  # numpy, without importing it
        import numpy as np
        a = np.asarray(routed)
        _check_1d(a.ndim, a.size)
        if a.dtype.kind not in "iu":
            raise TypeError(f"routed must hold integers, not {a.dtype}")
        if a.dtype != np.uint32 and a.size and (a.min() < 0 or a.max() > _U32_MAX):
            raise ValueError("routed counts out of range for uint32")
        a = np.ascontiguousarray(a, dtype=np.uint32)
        # __array_interface__, not a.ctypes: the latter builds objects per call (~10 us).
        return a.__array_interface__["data"][0], a.size, a
    try:
        mv = memoryview(routed)
    except TypeError:
        raise TypeError("routed must be a list of ints, a numpy array, a torch tensor or a "
                        f"uint32 buffer, not {type(routed).__name__}") from None
    _check_1d(mv.ndim, mv.shape[0] if mv.ndim == 1 else 0)
    if mv.format not in ("I", "=I", "<I") or mv.itemsize != 4 or not mv.c_contiguous:
        raise TypeError(f"a buffer for routed must be contiguous uint32 ('I'), not {mv.format!r}")
    arr = array.array("I", mv.tobytes())
    return arr.buffer_info()[0], len(arr), arr

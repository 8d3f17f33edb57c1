"""KV cache vs SSM state bytes of a transformers cache object (inferscope.torch): a walk of
its attributes, classified by name, from tensor shapes only (no sync), at most once a second
after a step, and at generate()'s end, flush() and close()."""

import time
import weakref

import torch as _torch

__all__ = ["CacheMemory", "cache_bytes"]

_INTERVAL_NS = 1_000_000_000  # cache bytes at most every second (and at flush, generate end)
# The output's cache is looked at on one step in this many (and on a generate()'s first): a
# model keeps one cache object through a generate(), and the look is a cost of its own.
_LOOK_EVERY = 16
_SSM_WORDS = ("conv", "ssm", "recurrent", "state")
_KV_WORDS = ("key", "value", "k_cache", "v_cache")


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
            if any(w in low for w in _SSM_WORDS):
                ssm += size
            elif any(w in low for w in _KV_WORDS):
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


class CacheMemory:
    """Reports the bytes of the cache a model's forward returned ("kv_cache", "ssm_state"
    through the agent): after(output) at each step's end (looks at the output's cache on one
    step in 16 and after new_call(), walks it at most once a second; the cache is held by a
    weak reference, never kept alive), flush() when a step was not walked."""

    def __init__(self, agent, hook_error):
        self.agent, self._hook_error = agent, hook_error
        self._at = -(1 << 62)  # perf_counter_ns of the last walk
        self.dirty = False  # a step's cache was not walked (the interval)
        self._last = None  # weakref to the last cache seen
        self._look_in = 0  # steps until the output's cache is looked at

    def new_call(self):
        """A generate() starts: its first step's cache is looked at (a new cache object)."""
        self._look_in = 0

    def after(self, output, force=False):
        if not force:
            self._look_in -= 1
            if self._look_in > 0:
                self.dirty = True
                return
            self._look_in = _LOOK_EVERY
        try:
            cache = _cache_of(output) if output is not None else None
            if cache is None:
                cache = self._last() if self._last is not None else None
                if cache is None:
                    return
            elif self._last is None or self._last() is not cache:
                try:
                    self._last = weakref.ref(cache)
                except TypeError:
                    self._last = None
            now = time.perf_counter_ns()  # an interval only: no C call for the agent's clock
            if not force and now - self._at < _INTERVAL_NS:
                self.dirty = True
                return
            self._at, self.dirty = now, False
            kv, ssm = cache_bytes(cache)
            self.agent.memory("kv_cache", kv)
            if ssm:
                self.agent.memory("ssm_state", ssm)
        except Exception as e:  # noqa: BLE001 -- never into the model
            self._hook_error("cache memory", e)

    def flush(self):
        """The last cache's bytes, if a step's were skipped since the last walk."""
        if self.dirty:
            self.after(None, force=True)


def _cache_of(output):
    cache = getattr(output, "past_key_values", None)
    if cache is None and isinstance(output, dict):
        cache = output.get("past_key_values")
    return cache

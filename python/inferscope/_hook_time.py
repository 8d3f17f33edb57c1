"""The host time inferscope.torch's hooks spend, measured where it is spent: what observing
costs the thread that runs the model, told apart from run-to-run noise. Each part adds to
stats()["hook_ns_<part>"]; stats() adds them up into "hook_ns"."""

import functools
import time

# The hooks' clock. Bound at import, so a bench may swap in time.thread_time_ns first.
perf_ns = time.perf_counter_ns


def timed(part):
    """Adds the time inside a method of an object with a `_stats` dict to
    _stats["hook_ns_<part>"] (two clock reads, ~0.1 us, per call)."""
    key = f"hook_ns_{part}"
    perf = perf_ns

    def wrap(method):
        @functools.wraps(method)
        def timed_method(self, *args, **kwargs):
            start = perf()
            try:
                return method(self, *args, **kwargs)
            finally:
                self._stats[key] += perf() - start
        return timed_method
    return wrap

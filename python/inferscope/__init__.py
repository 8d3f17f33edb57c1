"""inferscope: MoE routing, memory, cache and request telemetry from a Python serving process.

A thin layer (ctypes) over the agent's C API in libinferscope_agent.so:

    import inferscope
    with inferscope.Agent(service="my-engine") as agent:   # or Agent() for the environment
        with agent.range("decode_step", request_id=7):
            ...
        agent.expert_load(step, layer, counts, tokens=n)    # list, numpy or torch tensor
        agent.memory("kv_cache", used, capacity)

See docs/integrations.md. The library is found through $INFERSCOPE_AGENT_LIBRARY, a
copy in inferscope/_lib/, or the dynamic loader's search path.
"""

from ._lib import LibraryNotFoundError, load as load_library
from .agent import (DEVICES, MAX_EXPERTS, MEMORY_KINDS, REQUEST_STATUSES, STAGES, Agent, intern,
                    now_ns)

__version__ = "0.1.0"
__all__ = ["Agent", "LibraryNotFoundError", "load_library", "intern", "now_ns", "MEMORY_KINDS",
           "STAGES", "DEVICES", "REQUEST_STATUSES", "MAX_EXPERTS"]

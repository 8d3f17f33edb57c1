"""Finding and loading libinferscope_agent.so, and the C API's prototypes (agent.h).

Where the library is looked for, first hit wins:
  1. $INFERSCOPE_AGENT_LIBRARY: a path (or soname); when set nothing else is tried;
  2. a copy next to this package (inferscope/_lib/), for a self-contained install;
  3. the library of the same `cmake --install` (inferscope/_install_paths.py);
  4. libinferscope_agent.so.0 through the dynamic loader's search (LD_LIBRARY_PATH,
     ld.so.cache: after `cmake --install` into /usr/local and ldconfig).
"""

import ctypes
import os
import pathlib
import threading

SONAME = "libinferscope_agent.so.0"


class LibraryNotFoundError(OSError):
    """libinferscope_agent.so could not be loaded; the message lists what was tried."""


class Range(ctypes.Structure):
    # inferscope_range: 48 opaque bytes, 8-byte aligned (agent.h).
    _fields_ = [("opaque", ctypes.c_uint64 * 6)]


class Stats(ctypes.Structure):
    _fields_ = [("records_recorded", ctypes.c_uint64), ("records_sent", ctypes.c_uint64),
                ("records_dropped", ctypes.c_uint64), ("bytes_sent", ctypes.c_uint64),
                ("reconnects", ctypes.c_uint64), ("connected", ctypes.c_int)]


class RequestEvent(ctypes.Structure):
    _fields_ = [("request_id", ctypes.c_uint64), ("arrival_ns", ctypes.c_int64),
                ("first_token_ns", ctypes.c_int64), ("finish_ns", ctypes.c_int64),
                ("prompt_tokens", ctypes.c_uint32), ("output_tokens", ctypes.c_uint32),
                ("image_tokens", ctypes.c_uint32), ("cached_tokens", ctypes.c_uint32),
                ("status", ctypes.c_int)]


_P = ctypes.c_void_p
_u32, _u64, _i64, _int = ctypes.c_uint32, ctypes.c_uint64, ctypes.c_int64, ctypes.c_int
_PROTOTYPES = {
    "inferscope_agent_create_from_env": (_P, []),
    "inferscope_agent_create": (_P, [ctypes.c_char_p, ctypes.c_char_p, _u32, _u32]),
    "inferscope_agent_destroy": (None, [_P]),
    "inferscope_agent_flush": (_int, [_P, _u32]),
    "inferscope_agent_stats": (None, [_P, ctypes.POINTER(Stats)]),
    "inferscope_intern": (_u32, [ctypes.c_char_p]),
    "inferscope_now_ns": (_i64, []),
    "inferscope_range_begin": (None, [_P, ctypes.POINTER(Range), _u32, _u64]),
    "inferscope_range_end": (None, [ctypes.POINTER(Range)]),
    "inferscope_span": (None, [_P, _u32, _i64, _i64, _u64]),
    "inferscope_expert_load": (None, [_P, _u64, _u32, _P, ctypes.c_size_t, _u32, _u32, _u32]),
    "inferscope_expert_loads": (None, [_P, _u64, ctypes.c_size_t, _P, _P, _P, _P, _P, _P]),
    "inferscope_expert_loads_steps": (_u64, [_P, ctypes.c_size_t, _P, ctypes.c_size_t, _P, _P, _P,
                                             _P, ctypes.c_size_t, _P]),
    "inferscope_memory": (None, [_P, _int, _u64, _u64]),
    "inferscope_prefix_cache": (None, [_P, _u64, _u64, _u64, _u64]),
    "inferscope_stage": (None, [_P, _u64, _int, _i64, _i64, _int, _i64]),
    "inferscope_request": (None, [_P, ctypes.POINTER(RequestEvent)]),
    "inferscope_counter": (None, [_P, _u32, ctypes.c_double]),
    "inferscope_gauge": (None, [_P, _u32, ctypes.c_double]),
    "inferscope_gpu_trace_mode": (_int, [_P]),
    "inferscope_agent_set_model": (_int, [_P, ctypes.c_char_p, ctypes.POINTER(_u32),
                                          ctypes.POINTER(_int), ctypes.c_size_t, _u32, _u32]),
}

_lock = threading.Lock()
_lib = None


def _candidates():
    env = os.environ.get("INFERSCOPE_AGENT_LIBRARY")
    if env:
        return [env], True
    here = pathlib.Path(__file__).resolve().parent
    found = [here / "_lib" / SONAME]
    try:
        from . import _install_paths
        found.append(pathlib.Path(os.path.normpath(here / _install_paths.LIBDIR / SONAME)))
    except ImportError:
        pass
    return [str(p) for p in found if p.exists()] + [SONAME], False


def load():
    """The loaded library with prototypes set; LibraryNotFoundError if it cannot be loaded."""
    global _lib
    with _lock:
        if _lib is not None:
            return _lib
        names, from_env = _candidates()
        tried = []
        for name in names:
            try:
                lib = ctypes.CDLL(name)
            except OSError as e:
                tried.append(f"{name}: {e}")
                continue
            missing = [f for f in _PROTOTYPES if not hasattr(lib, f)]
            if missing:
                tried.append(f"{name}: not the inferscope agent (lacks {', '.join(missing[:3])})")
                continue
            for fname, (restype, argtypes) in _PROTOTYPES.items():
                fn = getattr(lib, fname)
                fn.restype, fn.argtypes = restype, argtypes
            _lib = lib
            return lib
        hint = ("INFERSCOPE_AGENT_LIBRARY is set, so nothing else was tried; fix or unset it"
                if from_env else
                "install the agent (cmake --install <build> --prefix /usr/local && ldconfig), "
                "add its lib directory to LD_LIBRARY_PATH, or set INFERSCOPE_AGENT_LIBRARY "
                "to the path of libinferscope_agent.so.0")
        raise LibraryNotFoundError("libinferscope_agent could not be loaded; tried:\n  " +
                                   "\n  ".join(tried) + "\n" + hint)

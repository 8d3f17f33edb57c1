"""Makes a Python process a quieter instrument for timing the thread that runs a model, and
gives it a counter that preemption does not move (tests/python/decode_overhead.py).

    blocking = cuda_blocking_sync()     # before the CUDA context exists: syncs sleep, not spin
    sync_mode()                          # "blocking" / "spin" / "yield" / "auto" / "no CUDA"
    pin_this_thread()                    # this thread on one CPU, the process's others elsewhere
    counter = Instructions()             # user-space instructions of this thread, or .error

Why: on a GPU host the thread that launches kernels waits for the device in CUDA's syncs; by
default (CU_CTX_SCHED_AUTO with few contexts) it spins there, so its CPU time equals the wall
time and says nothing about the host work a hook adds. With the context made to block, the
thread sleeps in the syncs and its CPU time (and its instruction count) is the host work.
"""

import ctypes
import os
import platform
import threading

__all__ = ["cuda_blocking_sync", "sync_mode", "pin_this_thread", "Instructions"]

# CUctx_flags' scheduling bits (cuda.h)
_SCHED = {0: "auto", 1: "spin", 2: "yield", 4: "blocking"}
_SCHED_MASK = 0x7
_CU_CTX_SCHED_BLOCKING_SYNC = 0x4


def _cuda():
    lib = ctypes.CDLL("libcuda.so.1")
    if lib.cuInit(0) != 0:
        raise OSError("cuInit failed")
    dev = ctypes.c_int()
    if lib.cuDeviceGet(ctypes.byref(dev), 0) != 0:
        raise OSError("cuDeviceGet(0) failed")
    return lib, dev


def cuda_blocking_sync():
    """Sets CU_CTX_SCHED_BLOCKING_SYNC on device 0's primary context, the one PyTorch's
    runtime uses; call it before anything makes that context. Returns sync_mode() after."""
    lib, dev = _cuda()
    # cuda.h maps cuDevicePrimaryCtxSetFlags to its _v2 since CUDA 11.
    set_flags = getattr(lib, "cuDevicePrimaryCtxSetFlags_v2", None) or \
        lib.cuDevicePrimaryCtxSetFlags
    rc = set_flags(dev, ctypes.c_uint(_CU_CTX_SCHED_BLOCKING_SYNC))
    if rc != 0:
        raise OSError(f"cuDevicePrimaryCtxSetFlags: CUresult {rc}")
    return sync_mode()


def sync_mode():
    """How device 0's primary context waits in syncs, read back from the driver."""
    try:
        lib, dev = _cuda()
    except OSError as e:
        return f"no CUDA ({e})"
    flags, active = ctypes.c_uint(), ctypes.c_int()
    if lib.cuDevicePrimaryCtxGetState(dev, ctypes.byref(flags), ctypes.byref(active)) != 0:
        return "unknown"
    return _SCHED.get(flags.value & _SCHED_MASK, hex(flags.value))


_allowed = None


def pin_this_thread():
    """Pins the calling thread to the last CPU it may use and every other thread of the process
    (CUDA's, the agent's sender, PyTorch's pools) to the others, so the measured thread neither
    migrates nor shares its CPU with them. Threads made later inherit their maker's CPUs: call
    it once they exist. Returns what it did."""
    global _allowed
    if _allowed is None:  # a second call sees this thread's one CPU: keep the first set
        _allowed = sorted(os.sched_getaffinity(0))
    allowed = _allowed
    if len(allowed) < 2:
        return "not pinned (one CPU allowed)"
    cpu, rest = allowed[-1], set(allowed[:-1])
    me = threading.get_native_id()
    others = 0
    for name in os.listdir("/proc/self/task"):
        tid = int(name)
        try:
            os.sched_setaffinity(tid, {cpu} if tid == me else rest)
            others += tid != me
        except OSError:  # a thread that ended meanwhile
            pass
    return f"pinned to CPU {cpu} (of {len(allowed)}), {others} other threads off it"


class _PerfEventAttr(ctypes.Structure):
    # struct perf_event_attr up to config1 (PERF_ATTR_SIZE_VER0, 64 bytes)
    _fields_ = [("type", ctypes.c_uint32), ("size", ctypes.c_uint32),
                ("config", ctypes.c_uint64), ("sample_period", ctypes.c_uint64),
                ("sample_type", ctypes.c_uint64), ("read_format", ctypes.c_uint64),
                ("flags", ctypes.c_uint64), ("wakeup_events", ctypes.c_uint32),
                ("bp_type", ctypes.c_uint32), ("config1", ctypes.c_uint64)]


_PERF_SYSCALL = {"x86_64": 298, "aarch64": 241}
_EXCLUDE_KERNEL_HV = (1 << 5) | (1 << 6)
_PERF_FLAG_FD_CLOEXEC = 8


class Instructions:
    """User-space instructions retired by the thread that made it (perf_event_open, through
    ctypes): a count, so neither preemption nor the clock moves it. Where the kernel, the
    container or the machine refuse it, `error` says why and read() returns None."""

    def __init__(self):
        self.fd, self.error = None, None
        number = _PERF_SYSCALL.get(platform.machine())
        if number is None:
            self.error = f"no perf_event_open number for {platform.machine()}"
            return
        attr = _PerfEventAttr(type=0, size=ctypes.sizeof(_PerfEventAttr), config=1,  # HW, instr.
                              flags=_EXCLUDE_KERNEL_HV)
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        fd = libc.syscall(ctypes.c_long(number), ctypes.byref(attr), ctypes.c_int(0),
                          ctypes.c_int(-1), ctypes.c_int(-1), ctypes.c_ulong(_PERF_FLAG_FD_CLOEXEC))
        if fd < 0:
            err = ctypes.get_errno()
            self.error = f"perf_event_open: {os.strerror(err)}"
            return
        self.fd = fd
        if self.read() is None:
            self.error = "perf_event_open: the counter cannot be read"

    def read(self):
        if self.fd is None:
            return None
        try:
            data = os.read(self.fd, 8)
        except OSError:
            return None
        return int.from_bytes(data, "little") if len(data) == 8 else None

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

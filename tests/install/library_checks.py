"""Checks on a built or installed libinferscope_agent.so (standard library + binutils).

- exports: `nm -D --defined-only` lists only the public API: the C functions
  (inferscope_*), the C++ API (inferscope::agent::*, not its Impl or detail::)
  and wire::to_string. No std:: instantiation, no asio, no wire internals.
- dependencies: `readelf -d` shows the versioned soname and no DT_NEEDED on
  libcupti, libcudart or libcuda (they are dlopen'ed when tracing is asked for).
"""

import re
import subprocess

ALLOWED = [
    re.compile(r"^inferscope_[a-z_]+$"),                               # C API
    re.compile(r"^inferscope::agent::(?!detail::)(?!Agent::Impl)\S"),  # C++ API
    re.compile(r"^inferscope::wire::to_string\(inferscope::wire::\w+\)$"),
]
REQUIRED = ["inferscope_agent_create", "inferscope_range_begin", "inferscope_expert_load",
            "inferscope::agent::Agent::Agent(inferscope::agent::Config)",
            # ScopedRange is inline (hot_path.hpp); its slow path and the
            # thread cache the inline code reads must be exported.
            "inferscope::agent::ScopedRange::open_slow(inferscope::agent::Agent&, unsigned int, "
            "unsigned long)",
            "inferscope::agent::ScopedRange::close_slow(inferscope::agent::Agent&, unsigned long, "
            "unsigned int, unsigned long, unsigned short, unsigned char)",
            "inferscope::agent::hot::tl_thread"]
FORBIDDEN_NEEDED = ("libcupti", "libcudart", "libcuda.", "libnvToolsExt")


class Failure(Exception):
    pass


def run(argv):
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def exported_symbols(lib):
    names = []
    for line in run(["nm", "-D", "--defined-only", "--demangle", str(lib)]).splitlines():
        parts = line.split(None, 2)
        if len(parts) == 3:
            names.append(parts[2])
    return sorted(set(names))


def check_exports(lib):
    names = exported_symbols(lib)
    stray = [n for n in names if not any(p.match(n) for p in ALLOWED)]
    if stray:
        raise Failure(f"{lib} exports {len(stray)} non-API symbols, e.g.:\n  " +
                      "\n  ".join(stray[:20]))
    missing = [n for n in REQUIRED if n not in names]
    if missing:
        raise Failure(f"{lib} does not export the API symbols {missing}")
    return names


def dynamic_section(lib):
    needed, soname = [], None
    for line in run(["readelf", "-d", str(lib)]).splitlines():
        m = re.search(r"\((NEEDED|SONAME)\).*\[(.+)\]", line)
        if m and m.group(1) == "NEEDED":
            needed.append(m.group(2))
        elif m:
            soname = m.group(2)
    return needed, soname


def check_dependencies(lib, expect_soname=None):
    needed, soname = dynamic_section(lib)
    bad = [n for n in needed if n.startswith(FORBIDDEN_NEEDED)]
    if bad:
        raise Failure(f"{lib} has DT_NEEDED on {bad}: CUDA must be loaded with dlopen")
    if expect_soname and soname != expect_soname:
        raise Failure(f"{lib} has soname {soname!r}, expected {expect_soname!r}")
    return needed, soname


if __name__ == "__main__":
    import sys
    lib = sys.argv[1]
    try:
        names = check_exports(lib)
        needed, soname = check_dependencies(lib, sys.argv[2] if len(sys.argv) > 2 else None)
    except Failure as e:
        print(f"FAIL: {e}", flush=True)
        sys.exit(1)
    print(f"ok: {lib}: {len(names)} exported API symbols, soname {soname}, needs {needed}")

"""The installed agent, used the way an outside project uses it.

1. `cmake --install` of the build tree into a fresh prefix; the expected files
   are there (library with soname, headers, CMake package, .pc, programs).
2. The installed library exports only the public API and needs no CUDA
   library (library_checks.py).
3. consumer/ (C++, find_package(inferscope) + inferscope::agent) is configured
   and built against the prefix; consumer.c is built with
   `pkg-config --cflags --libs inferscope` and nothing else.
4. Both run against the *installed* inferscope-collector, which must then show
   their records on /metrics (each program's memory gauge, prefix-cache
   counters and routed tokens).
5. CUPTI asked for with a wrong INFERSCOPE_CUPTI_LIBRARY: a clear message on
   stderr, and the program still ships its records.
"""

import argparse
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.dont_write_bytecode = True
HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "e2e"))
import library_checks  # noqa: E402
from harness import Failure, Harness, log  # noqa: E402


def sh(argv, env=None, cwd=None, what=None):
    """Runs argv; Failure with its output when it fails."""
    p = subprocess.run([str(a) for a in argv], env=env, cwd=cwd, capture_output=True, text=True)
    if p.returncode != 0:
        raise Failure(f"{what or argv[0]} failed ({p.returncode}): {' '.join(map(str, argv))}\n"
                      f"{p.stdout[-4000:]}\n{p.stderr[-4000:]}")
    return p


def libdir_of(prefix):
    for cand in sorted(prefix.glob("lib*/**/libinferscope_agent.so.0")):
        return cand.parent
    raise Failure(f"no libinferscope_agent.so.0 under {prefix}/lib*")


def check_tree(prefix, cuda):
    libdir = libdir_of(prefix)
    expected = [libdir / "libinferscope_agent.so", libdir / "libinferscope_agent.so.0",
                prefix / "include/inferscope/agent.h", prefix / "include/inferscope/agent.hpp",
                prefix / "include/inferscope/export.h",
                prefix / "include/inferscope/hot_path.hpp",
                prefix / "include/inferscope/wire/records.hpp",
                libdir / "cmake/inferscope/inferscopeConfig.cmake",
                libdir / "cmake/inferscope/inferscopeConfigVersion.cmake",
                libdir / "pkgconfig/inferscope.pc",
                prefix / "bin/inferscope-collector", prefix / "bin/inferscope-export",
                prefix / "lib/python3/dist-packages/inferscope/__init__.py",
                prefix / "lib/python3/dist-packages/inferscope/_install_paths.py"]
    if cuda:
        expected += [libdir / "libinferscope_agent_cuda.so.0",
                     prefix / "include/inferscope/agent_cuda.hpp"]
    missing = [str(p) for p in expected if not p.exists()]
    if missing:
        raise Failure("cmake --install did not install:\n  " + "\n  ".join(missing))
    if (prefix / "include/inferscope/agent_cuda.hpp").exists() != cuda:
        raise Failure("agent_cuda.hpp installed without the CUDA library (or the reverse)")
    if cuda:
        dyn = library_checks.run(["readelf", "-d", libdir / "libinferscope_agent_cuda.so.0"])
        if not re.search(r"\((RUNPATH|RPATH)\).*\$ORIGIN", dyn):
            raise Failure("libinferscope_agent_cuda.so.0 has no $ORIGIN runpath: it would not "
                          "find libinferscope_agent.so.0 beside it")
    return libdir


def build_cxx(args, prefix, work):
    build = work / "consumer-build"
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    sh(["cmake", "-S", HERE / "consumer", "-B", build, *gen, f"-DCMAKE_PREFIX_PATH={prefix}",
        f"-DCMAKE_CXX_COMPILER={args.cxx}", "-DCMAKE_BUILD_TYPE=Release"],
       what="configuring the find_package consumer")
    sh(["cmake", "--build", build], what="building the find_package consumer")
    return build / "consumer_cxx", build / "consumer_cuda"


def build_c(args, libdir, work):
    env = dict(os.environ, PKG_CONFIG_PATH=str(libdir / "pkgconfig"))
    flags = sh(["pkg-config", "--cflags", "--libs", "inferscope"], env=env).stdout.split()
    if any(re.search(r"cupti|cudart|-lcuda\b", f) for f in flags):
        raise Failure(f"inferscope.pc asks for CUDA libraries: {flags}")
    exe = work / "consumer_c"
    sh([args.cc, "-std=c11", "-Wall", "-Wextra", "-Werror", HERE / "consumer/consumer.c",
        *flags, "-o", exe], what="building the pkg-config consumer")
    needed, _ = library_checks.dynamic_section(exe)
    if "libinferscope_agent.so.0" not in needed:
        raise Failure(f"consumer_c does not need libinferscope_agent.so.0: {needed}")
    return exe, env


def scrape(metrics_addr):
    with urllib.request.urlopen(f"http://{metrics_addr}/metrics", timeout=5) as r:
        text = r.read().decode()
    samples = []
    for line in text.splitlines():
        m = re.match(r"^(\w+)(\{[^}]*\})?\s+(\S+)$", line)
        if m:
            samples.append((m.group(1), m.group(2) or "", float(m.group(3))))
    return samples


def wait_for_metrics(metrics_addr, expectations, timeout=20):
    """expectations: (description, predicate over samples). Failure naming what is missing."""
    deadline = time.time() + timeout
    missing = [d for d, _ in expectations]
    while time.time() < deadline:
        samples = scrape(metrics_addr)
        missing = [d for d, pred in expectations if not pred(samples)]
        if not missing:
            return samples
        time.sleep(0.5)
    raise Failure("the collector's /metrics never showed: " + "; ".join(missing))


def has(name, value=None, labels=()):
    def pred(samples):
        return any(n == name and all(l in lab for l in labels) and
                   (value is None or abs(v - value) < 0.5) for n, lab, v in samples)
    return pred


def total(name, labels=()):
    def fn(samples):
        return sum(v for n, lab, v in samples if n == name and all(l in lab for l in labels))
    return fn


PYTHON_CONSUMER = """
import inferscope, sys
print("library:", inferscope.load_library()._name)
with inferscope.Agent(service="install-consumer-py", rank=2, world_size=3) as agent:
    with agent.range("consumer_py_step"):
        agent.expert_load(0, 0, [2, 2, 2, 10], tokens=16)
    agent.memory("weights", 777777, 888888)
    ok = agent.flush(10)
    st = agent.stats()
print("consumer_py:", st)
sys.exit(0 if ok and st["records_sent"] >= 3 else 1)
"""


def run_consumers(h, prefix, libdir, cxx, cxx_cuda, c_exe, c_env):
    collector, addrs = h.start_collector(prefix / "bin/inferscope-collector", "collector",
                                         ["--window", "1s"])
    env = dict(os.environ, INFERSCOPE_COLLECTOR=addrs["ingest"])
    env.pop("LD_LIBRARY_PATH", None)
    # The CMake consumer finds the library through its RUNPATH; the C one
    # through LD_LIBRARY_PATH, as a user of a non-system prefix would.
    p = sh([cxx], env=env, what="consumer_cxx")
    log(p.stdout.strip())
    c_run_env = dict(env, LD_LIBRARY_PATH=str(libdir))
    p = sh([c_exe], env=c_run_env, what="consumer_c")
    log(p.stdout.strip())
    # The installed Python package finds the installed library by itself.
    py_env = dict(env, PYTHONPATH=str(prefix / "lib/python3/dist-packages"))
    py_env.pop("INFERSCOPE_AGENT_LIBRARY", None)
    p = sh([sys.executable, "-c", PYTHON_CONSUMER], env=py_env, what="the installed Python package")
    log(p.stdout.strip())
    if f"library: {libdir.resolve()}" not in p.stdout:
        raise Failure(f"the installed Python package did not load {libdir}:\n{p.stdout}")

    wait_for_metrics(addrs["metrics"], [
        ("memory_used_bytes{kind=weights} == 111111 (C++ consumer)",
         has("inferscope_memory_used_bytes", 111111, ['kind="weights"'])),
        ("memory_used_bytes{kind=weights} == 333333 (C consumer)",
         has("inferscope_memory_used_bytes", 333333, ['kind="weights"'])),
        ("prefix_cache_queried_tokens_total{layer_kind=attention} summing to 150",
         lambda s: total("inferscope_prefix_cache_queried_tokens_total",
                         ['layer_kind="attention"'])(s) == 150),
        ("memory_used_bytes{kind=weights} == 777777 (Python package)",
         has("inferscope_memory_used_bytes", 777777, ['kind="weights"'])),
        ("moe_routed_tokens_total summing to 336 (2 programs x 10 steps x 16, Python 16)",
         lambda s: total("inferscope_moe_routed_tokens_total")(s) == 336),
    ])
    log("collector /metrics shows both consumers' records")

    # CUPTI requested, library missing: a message that names the problem and
    # the fix; the records still arrive.
    bad = dict(c_run_env, INFERSCOPE_CUPTI="1",
               INFERSCOPE_CUPTI_LIBRARY="/nonexistent/libcupti.so")
    p = subprocess.run([str(c_exe)], env=bad, capture_output=True, text=True)
    if p.returncode != 0:
        raise Failure(f"consumer_c with CUPTI requested but absent exited {p.returncode}:\n"
                      f"{p.stdout}\n{p.stderr}")
    want = ("libcupti could not be loaded", "/nonexistent/libcupti.so",
            "INFERSCOPE_CUPTI_LIBRARY") if h.cuda else ("no CUDA support",)
    if not all(w in p.stderr for w in want):
        raise Failure(f"CUPTI-absent message should contain {want}; stderr was:\n{p.stderr}")
    log("CUPTI absent: " + p.stderr.strip().replace("\n", " | "))

    if cxx_cuda.exists():
        p = sh([cxx_cuda], env=env, what="consumer_cuda")
        log(p.stdout.strip())
    h.stop(collector)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build-dir", required=True)
    ap.add_argument("--cuda", choices=["ON", "OFF"], default="OFF")
    ap.add_argument("--cxx", default="c++")
    ap.add_argument("--cc", default="cc")
    ap.add_argument("--keep", action="store_true", help="keep the temporary prefix")
    args = ap.parse_args()
    cuda = args.cuda == "ON"

    work = pathlib.Path(tempfile.mkdtemp(prefix="inferscope-install-"))
    h = Harness(work)
    h.cuda = cuda
    try:
        prefix = work / "prefix"
        sh(["cmake", "--install", args.build_dir, "--prefix", prefix], what="cmake --install")
        libdir = check_tree(prefix, cuda)
        log(f"installed into {prefix} (libdir {libdir.relative_to(prefix)})")
        lib = libdir / "libinferscope_agent.so.0"
        names = library_checks.check_exports(lib)
        needed, soname = library_checks.check_dependencies(lib, "libinferscope_agent.so.0")
        log(f"{len(names)} exported symbols, soname {soname}, needs {needed}")

        cxx, cxx_cuda = build_cxx(args, prefix, work)
        if cuda and not cxx_cuda.exists():
            raise Failure("inferscope::agent_cuda was not found by the consumer")
        c_exe, c_env = build_c(args, libdir, work)
        run_consumers(h, prefix, libdir, cxx, cxx_cuda, c_exe, c_env)
        print("PASS", flush=True)
        return 0
    except Failure as e:
        h.dump_logs()
        print(f"FAIL: {e}", flush=True)
        return 1
    finally:
        h.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

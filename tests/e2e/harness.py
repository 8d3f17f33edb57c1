"""Process and Prometheus helpers for the end-to-end tests (standard library only).

Every process started here runs in its own process group, gets SIGTERM if this
Python process dies (prctl PDEATHSIG, so a ctest timeout that kills us leaves
nothing behind), and is stopped by Harness.close() -- TERM, then KILL.
"""

import ctypes
import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

sys.dont_write_bytecode = True

_PR_SET_PDEATHSIG = 1


def _die_with_parent():
    os.setpgrp()
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


class Failure(Exception):
    """A check failed; the message says what and where to look."""


def log(msg):
    print(f"[e2e {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def free_port():
    # Bind port 0 and release it: the kernel picks a free one. A small race
    # remains until the server binds it; callers retry on a failed start.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_binary(build_dir, name, hint):
    """The built executable `name` under build_dir, or Failure naming the target."""
    build_dir = pathlib.Path(build_dir)
    candidates = [build_dir / hint / name] + sorted(build_dir.glob(f"**/{name}"))
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return c
    raise Failure(f"{name} is not built: expected {build_dir / hint / name} "
                  f"(build it: ninja -C {build_dir} {name})")


class Proc:
    def __init__(self, name, popen, log_path):
        self.name, self.popen, self.log_path = name, popen, log_path

    def alive(self):
        return self.popen.poll() is None

    def log_tail(self, n=40):
        try:
            lines = pathlib.Path(self.log_path).read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])


class Harness:
    def __init__(self, workdir):
        self.workdir = pathlib.Path(workdir)
        self.procs = []

    # [SECTION] processes ----------------------------------------------------

    def start(self, name, argv, stdout=None, env=None):
        log_path = self.workdir / f"{name}.log"
        logf = open(log_path, "wb")
        p = subprocess.Popen([str(a) for a in argv], stdout=stdout or logf, stderr=logf,
                             stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent,
                             env=env, cwd=self.workdir)
        logf.close()
        proc = Proc(name, p, log_path)
        self.procs.append(proc)
        return proc

    def stop(self, proc, timeout=5):
        if proc.alive():
            try:
                os.killpg(proc.popen.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.popen.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.popen.wait()
        if proc.popen.stdout:
            proc.popen.stdout.close()

    def close(self):
        for proc in reversed(self.procs):
            self.stop(proc)
        self.procs.clear()

    def dump_logs(self):
        for proc in self.procs:
            tail = proc.log_tail()
            if tail:
                print(f"---- {proc.name} (last lines of {proc.log_path})\n{tail}", flush=True)

    # [SECTION] collector ----------------------------------------------------

    def start_collector(self, binary, name, extra_args, timeout=15):
        """Starts inferscope-collector on free ports; returns (proc, {ingest, metrics, viewer})."""
        trace_dir = self.workdir / f"{name}-trace"
        trace_dir.mkdir(exist_ok=True)
        argv = [binary, "--listen", "tcp://127.0.0.1:0", "--metrics", "127.0.0.1:0",
                "--viewer", "127.0.0.1:0", "--trace-dir", trace_dir, *extra_args]
        proc = self.start(name, argv, stdout=subprocess.PIPE)
        addrs = {}
        lines = []

        def reader():
            for raw in proc.popen.stdout:
                line = raw.decode(errors="replace").strip()
                lines.append(line)
                m = re.match(r"listening (\w+) (\S+)", line)
                if m:
                    addrs[m.group(1)] = m.group(2)
        t = threading.Thread(target=reader, daemon=True)
        t.start()
        deadline = time.time() + timeout
        while time.time() < deadline and not {"ingest", "metrics", "viewer"} <= addrs.keys():
            if not proc.alive():
                raise Failure(f"{name} exited with {proc.popen.returncode}:\n{proc.log_tail()}")
            time.sleep(0.05)
        if not {"ingest", "metrics", "viewer"} <= addrs.keys():
            raise Failure(f"{name} did not print its 'listening ingest/metrics/viewer' lines "
                          f"within {timeout}s; got {lines}")
        addrs["trace_dir"] = str(trace_dir)
        log(f"{name}: ingest {addrs['ingest']} metrics {addrs['metrics']} viewer {addrs['viewer']}")
        return proc, addrs

    # [SECTION] prometheus ---------------------------------------------------

    def start_prometheus(self, binary, targets, rule_files, scrape_interval="1s", timeout=30):
        """Starts a real Prometheus scraping `targets` (host:port list) as
        job="inferscope-collector" with `rule_files` loaded; returns Prometheus."""
        for attempt in range(3):
            port = free_port()
            cfg = self.workdir / "prometheus.yml"
            cfg.write_text(
                "global:\n"
                f"  scrape_interval: {scrape_interval}\n"
                f"  evaluation_interval: {scrape_interval}\n"
                "rule_files:\n" + "".join(f"  - {json.dumps(str(r))}\n" for r in rule_files) +
                "scrape_configs:\n"
                "  - job_name: inferscope-collector\n"
                "    static_configs:\n"
                f"      - targets: {json.dumps(list(targets))}\n")
            data = self.workdir / f"prometheus-data-{attempt}"
            proc = self.start(f"prometheus-{attempt}", [
                binary, f"--config.file={cfg}", f"--storage.tsdb.path={data}",
                f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn",
                "--storage.tsdb.retention.time=1h"])
            prom = Prometheus(f"http://127.0.0.1:{port}")
            deadline = time.time() + timeout
            while time.time() < deadline and proc.alive():
                if prom.ready():
                    log(f"prometheus ready at {prom.base}")
                    return prom
                time.sleep(0.2)
            tail = proc.log_tail()
            self.stop(proc)
            if "address already in use" not in tail:
                raise Failure(f"prometheus did not become ready on 127.0.0.1:{port}:\n{tail}")
        raise Failure("prometheus could not bind a free port in 3 attempts")


class Prometheus:
    """The bits of Prometheus' HTTP API the tests use."""

    def __init__(self, base):
        self.base = base

    def ready(self):
        try:
            with urllib.request.urlopen(self.base + "/-/ready", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, ConnectionError, OSError):
            return False

    def get(self, path, **params):
        url = self.base + path
        if params:
            url += "?" + urllib.parse.urlencode(params, doseq=True)
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                body = json.load(r)
        except urllib.error.HTTPError as e:
            body = json.loads(e.read() or b"{}")
            raise Failure(f"GET {path} {params}: HTTP {e.code}: {body.get('error', body)}") from e
        if body.get("status") != "success":
            raise Failure(f"GET {path} {params}: {body}")
        return body["data"]

    def query(self, expr, at=None):
        if at is None:
            return self.get("/api/v1/query", query=expr)["result"]
        return self.get("/api/v1/query", query=expr, time=f"{at:.3f}")["result"]

    def query_range(self, expr, seconds, step, end=None):
        end = end or time.time()
        return self.get("/api/v1/query_range", query=expr, start=f"{end - seconds:.3f}",
                        end=f"{end:.3f}", step=step)["result"]

    def label_values(self, label, match):
        return self.get(f"/api/v1/label/{label}/values", **{"match[]": match})

    def targets_up(self):
        active = self.get("/api/v1/targets")["activeTargets"]
        return [t for t in active if t.get("health") == "up"], active

    def alerts(self):
        return self.get("/api/v1/alerts")["alerts"]

    def rules(self):
        return self.get("/api/v1/rules")["groups"]


def finite_values(result):
    """Number of finite sample values in an instant or range query result."""
    n = 0
    for series in result:
        samples = series.get("values") or ([series["value"]] if "value" in series else [])
        for _, v in samples:
            if v not in ("NaN", "+Inf", "-Inf"):
                n += 1
    return n


def run_checks(checks, on_error=None):
    """Runs each named check (a callable raising on failure); an error fails that check, not
    the run. Returns the names that failed; on_error(name) is called for each."""
    failed = []
    for name, check in checks.items():
        try:
            check()
            log(f"ok   {name}")
        except Exception as e:  # noqa: BLE001 -- any error fails this check, not the run
            failed.append(name)
            if on_error:
                on_error(name)
            log(f"FAIL {name}: {type(e).__name__}: {str(e)[:2000]}")
    return failed


def wait_until(what, fn, timeout, interval=1.0):
    """Polls fn() until it returns a truthy value; Failure after timeout."""
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise Failure(f"timed out after {timeout:.0f}s waiting for {what}")

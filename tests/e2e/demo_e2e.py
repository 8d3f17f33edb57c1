#!/usr/bin/env python3
"""End-to-end: the demo ends well on Ctrl-C.

Runs scripts/run-demo.sh as a user would (no --duration: it serves until
stopped), on free ports with its results in a temporary directory, waits until
the collector has expert loads in Prometheus, then sends SIGINT to the script's
process group (what Ctrl-C on a terminal does) and checks that

  1. the script said at the start where the summary, dashboard, trace export
     and screenshots go, and printed a status block and the stop message;
  2. it exits 0 after draining, with every end-of-run step done: the engine's
     summary (text and JSON, requests finished), the dashboard page, the
     Chrome/Perfetto trace export (events of the run), and one viewer screenshot
     per view (PNG files with the viewer's layout facts beside them).

Needs the release build (collector, engine, export, viewer), prometheus and
xvfb-run; a missing one fails the test with its name.
"""

import argparse
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request

sys.dont_write_bytecode = True
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from harness import Failure, find_binary, log  # noqa: E402

VIEWS = ("all", "experts", "timeline", "memory")


def prom_value(base, expr):
    url = base + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            res = json.load(r)["data"]["result"]
    except OSError:
        return None
    return float(res[0]["value"][1]) if res else None


def run(build, src, work):
    for name, hint in (("inferscope-collector", "collector"), ("inferscope-engine", "reference_engine"),
                       ("inferscope-export", "collector"), ("inferscope-viewer", "viewer")):
        find_binary(build, name, hint)
    for tool in ("prometheus", "xvfb-run"):
        if not shutil.which(tool):
            raise Failure(f"{tool} is not installed (scripts/install-deps.sh)")
    out = work / "out"
    cmd = [str(src / "scripts" / "run-demo.sh"), "--build", str(build), "--out", str(out),
           "--free-ports", "--no-alertmanager"]
    log("starting " + " ".join(cmd))
    env = dict(os.environ)
    env.pop("DISPLAY", None)  # headless, as in CI: screenshots, no live viewer
    proc = subprocess.Popen(cmd, cwd=src, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, start_new_session=True)
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        # The Prometheus URL the script printed (free port).
        prom = None
        deadline = time.monotonic() + 120
        while prom is None and time.monotonic() < deadline and proc.poll() is None:
            m = re.search(r"Prometheus\s+(http://127\.0\.0\.1:\d+)/alerts", "".join(lines))
            prom = m.group(1) if m else None
            time.sleep(0.5)
        if prom is None:
            raise Failure("the demo never printed its Prometheus URL:\n" + "".join(lines)[-3000:])
        # Run until Prometheus has per-expert loads from the collector (a closed window).
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            if (prom_value(prom, "count(inferscope_moe_expert_load_share)") or 0) > 0:
                break
            time.sleep(1)
        else:
            raise Failure("no expert loads reached Prometheus before the stop:\n" + "".join(lines)[-3000:])
        log("expert loads in Prometheus; sending SIGINT (Ctrl-C) to the demo's process group")
        os.killpg(proc.pid, signal.SIGINT)
        try:
            rc = proc.wait(timeout=240)
        except subprocess.TimeoutExpired:
            raise Failure("the demo did not finish within 240 s of SIGINT:\n" + "".join(lines)[-3000:])
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        reader.join(timeout=5)
    text = "".join(lines)
    print(text[-6000:])
    if rc != 0:
        raise Failure(f"the demo exited {rc} after SIGINT (expected 0: drained, every end-of-run step done)")
    return out, text


def check(out, text):
    demo = out / "demo"
    stop_at = text.find("run-demo: stopping")
    if stop_at < 0:
        raise Failure("no stop message after SIGINT")
    start = text[:stop_at]
    # 1. Said at the start where everything goes, and showed a status block.
    for what, path in (("summary", demo / "engine.out"), ("dashboard", demo / "dashboard-moe.html"),
                       ("trace export", out / "demo-trace.json")):
        if str(path) not in start:
            raise Failure(f"the start message does not say where the {what} goes ({path})")
    if f"{out}/viewer-{{" not in start:
        raise Failure("the start message does not say where the screenshots go")
    if "worst expert per layer:" not in text or "memory:" not in text or "prefix-cache hits:" not in text:
        raise Failure("no status block (worst expert per layer, memory, prefix-cache hits) was printed")

    # 2. Every end-of-run step.
    summary = (demo / "engine.out").read_text()
    if "prefix" not in summary or "evicted" not in summary:
        raise Failure("the engine's summary is missing from engine.out:\n" + summary[-2000:])
    sj = json.loads((demo / "engine-summary.json").read_text())
    finished = sj.get("requests", {}).get("finished", sj.get("requests_finished"))
    if not finished:
        raise Failure(f"the summary JSON counts no finished requests: {json.dumps(sj)[:500]}")
    page = (demo / "dashboard-moe.html").read_text()
    if "<svg" not in page:
        raise Failure("the dashboard page has no panels (no <svg>)")
    trace = json.loads((out / "demo-trace.json").read_text())
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    if len(events) < 100:
        raise Failure(f"the trace export has only {len(events)} events")
    for view in VIEWS:
        png = out / f"viewer-{view}.png"
        if not png.is_file() or png.read_bytes()[:8] != b"\x89PNG\r\n\x1a\n":
            raise Failure(f"no screenshot {png}")
        facts = json.loads(pathlib.Path(str(png) + ".json").read_text())
        if facts["spans"] <= 0:
            raise Failure(f"{png}: the viewer loaded no spans from the run's trace")
    log(f"summary ({finished} requests), dashboard, export ({len(events)} events) and "
        f"{len(VIEWS)} screenshots present after SIGINT")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build-dir", required=True)
    ap.add_argument("--source-dir", required=True)
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    a = ap.parse_args()
    work = pathlib.Path(tempfile.mkdtemp(prefix="inferscope-demo-e2e-"))
    try:
        out, text = run(pathlib.Path(a.build_dir).resolve(), pathlib.Path(a.source_dir).resolve(), work)
        check(out, text)
    except Failure as e:
        print(f"FAILED: {e}\n(files under {work})", file=sys.stderr)
        return 1
    if not a.keep:
        shutil.rmtree(work, ignore_errors=True)
    else:
        log(f"kept {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

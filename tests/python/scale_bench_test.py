#!/usr/bin/env python3
"""CPU dry run of bench/engine/scale_bench.py (scripts/gpu-check --scale): its --tiny mode
end to end with the real engine (bench/engine/hf_bench on the cpu backend), so the GPU run
does not find a broken script. Debian's python3 has torch but no transformers: the build
stage writes the checkpoint by hand and the two PyTorch paths must report themselves
skipped, never ok. Also: the OLMoE-1B-7B arithmetic against the published sizes, and
hf_bench's refusals of bad input.

Exit 0 pass, 1 a failed check, 77 (ctest: skipped) without torch.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys

try:
    import torch  # noqa: F401 - the hand-written checkpoint needs it
except ImportError:
    print("SKIPPED: %s has no torch (apt-get install python3-torch)" % sys.executable)
    sys.exit(77)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "bench", "engine"))
import scale_bench  # noqa: E402

FAILS = []


def check(cond, what):
    print("%s %s" % ("ok  " if cond else "FAIL", what))
    if not cond:
        FAILS.append(what)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hf-bench", required=True)
    ap.add_argument("--workdir", required=True)
    a = ap.parse_args()
    shutil.rmtree(a.workdir, ignore_errors=True)
    os.makedirs(a.workdir)

    # OLMoE-1B-7B: 6.9B total, 1.3B active (the model card's "1B active / 7B total" rounds
    # these); 64 experts of 3 x 2048 x 1024 in 16 layers are 6.44B of the total.
    total, active = scale_bench.param_counts(scale_bench.SCALE)
    check(6.85e9 < total < 6.95e9, "OLMoE-1B-7B total parameters %.3fB in 6.85..6.95B" % (total / 1e9))
    check(1.25e9 < active < 1.32e9, "active parameters %.3fB in 1.25..1.32B" % (active / 1e9))
    fb = scale_bench.floor_bytes(scale_bench.SCALE)
    check(fb == 2 * (active - 50304 * 2048 + 2048),
          "floor bytes %.3f GB = bf16 active parameters less the embedding table but one row"
          % (fb / 1e9))

    out = os.path.join(a.workdir, "scale.json")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "engine", "scale_bench.py"),
                        "--tiny", "--engine", a.hf_bench, "--workdir", a.workdir, "--json", out,
                        "--threads", "2"], capture_output=True, text=True, timeout=600)
    print(r.stdout[-3000:], r.stderr[-2000:])
    check(r.returncode == 0, "scale_bench --tiny exits 0 (rc %d)" % r.returncode)
    res = json.load(open(out)) if os.path.exists(out) else {"stages": {}}
    st = res["stages"]
    check(st.get("build", {}).get("status") == "ok", "build stage ok")
    b = st.get("build", {})
    check(b.get("params_counted") == b.get("params_total") and b.get("params_total"),
          "the written checkpoint holds exactly the OLMoE arithmetic's parameters (%s vs %s)"
          % (b.get("params_counted"), b.get("params_total")))
    e = st.get("engine", {})
    check(e.get("status") == "ok", "engine stage ok")
    rows = {x["batch"]: x for x in e.get("rows", [])}
    check(sorted(rows) == [1, 4], "engine rows for batches 1 and 4 (%s)" % sorted(rows))
    check(all(x["decode_tps"] > 0 and x["prefill_tps"] > 0 for x in rows.values()),
          "engine tok/s positive")
    # The cpu backend keeps fp32 weights: 4 bytes a parameter, nothing more, nothing less.
    check(e.get("footprint", {}).get("weights") == 4 * b.get("params_total", -1),
          "engine weight bytes = 4 x parameters on the cpu backend (%s)"
          % e.get("footprint", {}).get("weights"))
    check(e.get("gemm_dtype") == "f32" and e.get("checkpoint_dtype") == "BF16",
          "bf16 checkpoint, widened on the cpu backend")
    # engine+graphs: the same hf_bench process (--modes eager,graphs), its own stage. The cpu
    # backend has no graphs: the padded steps run eagerly, with async routing (1 wait a step
    # against the eager path's MoE layers + 1), and the table must say so.
    g = st.get("engine+graphs", {})
    check(g.get("status") == "ok", "engine+graphs stage ok (%s)" % g.get("status"))
    grows = {x["batch"]: x for x in g.get("rows", [])}
    check(sorted(grows) == [1, 4], "engine+graphs rows for batches 1 and 4 (%s)" % sorted(grows))
    check(all(x["decode_tps"] > 0 and x["prefill_tps"] > 0 for x in grows.values()),
          "engine+graphs tok/s positive")
    check(g.get("routing") == "async" and g.get("graphs") is True and g.get("graphs_eager") is True,
          "engine+graphs: async routing, graphs on, run eagerly on cpu (%s, %s, %s)"
          % (g.get("routing"), g.get("graphs"), g.get("graphs_eager")))
    check(e.get("routing") == "sync" and e.get("graphs") is False,
          "engine: sync routing, no graphs (%s, %s)" % (e.get("routing"), e.get("graphs")))
    check(all(x["host_syncs_per_step"] == 1.0 for x in grows.values()),
          "engine+graphs: 1 host wait per decode step (%s)"
          % [x["host_syncs_per_step"] for x in grows.values()])
    check(all(x["host_syncs_per_step"] == 3.0 for x in rows.values()),
          "engine: MoE layers + 1 = 3 host waits per decode step (%s)"
          % [x["host_syncs_per_step"] for x in rows.values()])
    check(all(x["graph_launches"] == 0 for x in list(rows.values()) + list(grows.values()))
          and g.get("graph_error") == "", "no graph launches or errors on cpu")
    check("engine+graphs [cpu: no graphs, eager]" in r.stdout and "ran its padded steps eagerly"
          in r.stdout, "table says the cpu graph path ran eagerly")
    check("engine ok" in r.stdout and "engine+graphs ok" in r.stdout, "stages line names both")
    # Observed rows (issue 18 part 6): each engine path and batch again with telemetry on
    # (agent, sampled, full), overhead against that batch's unobserved row. No CUPTI here.
    for name, s in (("engine", e), ("engine+graphs", g)):
        got = sorted((o["batch"], o["observe"]) for o in s.get("observed", []))
        check(got == sorted((bb, o) for bb in (1, 4) for o in ("agent", "sampled", "full")),
              "%s: observed rows for agent/sampled/full at B=1 and 4 (%s)" % (name, got))
        base = {x["batch"]: x["decode_tps"] for x in s.get("rows", [])}
        check(all(o["decode_tps"] > 0 and o["records_dropped"] == 0 and not o["cupti_active"]
                  and abs(o["overhead_pct"] - 100 * (1 - o["decode_tps"] / base[o["batch"]]))
                  < 1e-6 for o in s.get("observed", [])),
              "%s: observed rows measured, nothing dropped, overhead against the off row" % name)
    check("observability overhead" in r.stdout and "(no CUPTI here)" in r.stdout,
          "table shows the observed rows")

    # Per-phase timeouts of one process: the marker restarts the timeout at the phase's cap.
    status, rc, _, phase = scale_bench.run_capped(
        ["sh", "-c", "echo 'hf_bench: mode graphs start'; sleep 60"], 300, "t",
        phases=[("hf_bench: mode graphs start", 1)])
    check(status == "timeout" and phase == "hf_bench: mode graphs start",
          "run_capped: a phase's own timeout kills the process (%s, phase '%s')" % (status, phase))
    status, rc, _, phase = scale_bench.run_capped(["sh", "-c", "exit 3"], 300, "t")
    check(status == "failed" and rc == 3 and phase == "", "run_capped: rc kept (%s, %d)"
          % (status, rc))

    for name in ("eager", "compile"):
        s = st.get(name, {}).get("status", "")
        check(s.startswith("skipped"), "%s reports itself skipped without transformers (%s)"
              % (name, s))
    check("engine (hf_bench" in r.stdout and "stages: build ok" in r.stdout, "table printed")

    # hf_bench refuses bad input with a usage error (exit 2) naming the problem.
    ckpt = b.get("dir", "")
    bad = os.path.join(a.workdir, "bad-prompts.json")
    with open(bad, "w") as f:
        json.dump([[1, 2, 999999]], f)
    for args, words in ((["--batches", "0"], "--batches"),
                        (["--batches", "1", "--prompts", bad, "--prompt-len", "3"], "token id"),
                        (["--batches", "2", "--prompts", bad, "--prompt-len", "3"], "at least 2"),
                        (["--prompt-len", "250", "--steps", "10"], "exceeds"),
                        (["--modes", "eager,fast"], "--modes"),
                        (["--modes", "eager,eager"], "twice")):
        r = subprocess.run([a.hf_bench, "--model", ckpt, "--backend", "cpu"] + args,
                           capture_output=True, text=True, timeout=120)
        check(r.returncode == 2 and words in r.stderr,
              "hf_bench %s -> exit 2 naming '%s' (rc %d: %s)"
              % (" ".join(args), words, r.returncode, r.stderr.strip()[-160:]))
    r = subprocess.run([a.hf_bench, "--model", os.path.join(a.workdir, "none"), "--backend", "cpu"],
                       capture_output=True, text=True, timeout=60)
    check(r.returncode == 1 and "config.json" in r.stderr,
          "hf_bench on a missing checkpoint fails naming config.json (rc %d: %s)"
          % (r.returncode, r.stderr.strip()[-160:]))

    print("\n%d checks failed" % len(FAILS) if FAILS else "\nall checks passed")
    return 1 if FAILS else 0


if __name__ == "__main__":
    sys.exit(main())

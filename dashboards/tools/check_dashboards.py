#!/usr/bin/env python3
"""Static checks of the Grafana dashboards, and the panel-query extractor.

    check_dashboards.py [--dir dashboards/grafana] [--rules FILE ...]
                        [--promtool PATH] [--check-generated]
    check_dashboards.py --list-queries          # JSON of every panel query

Checks, per dashboard: valid JSON; uid, title, schemaVersion >= 38; a
${DS_PROMETHEUS} datasource input; template variables model and rank (layer on
the MoE dashboard) with label_values queries; every panel has a unique id, a
type, a title, a description, a gridPos inside the 24-column grid that overlaps
no other panel, the ${DS_PROMETHEUS} datasource and at least one PromQL target;
every $variable a query uses is defined; every metric a query names is in the
metric catalog (docs: the shared contract) or is a recording rule defined in the
rule files; only catalog labels are used. With --promtool every query (variables
filled with sample values) is parsed by `promtool check rules`, so a PromQL
syntax error fails here rather than in Grafana. With --check-generated the JSON
must equal what tools/generate_dashboards.py produces.

The e2e test imports this module (load_dashboards, panel_queries, variable
queries, substitute) to run every panel query against a real Prometheus.
Standard library only.
"""

import argparse
import json
import pathlib
import re
import subprocess
import sys
import tempfile

sys.dont_write_bytecode = True  # keep the source tree clean

HERE = pathlib.Path(__file__).resolve().parent
DEFAULT_DIR = HERE.parent / "grafana"
DEFAULT_RULES = sorted((HERE.parent / "prometheus" / "rules").glob("*.yml"))

# [SECTION] The metric catalog (shared contract) ------------------------------------
COUNTERS = """
inferscope_moe_routed_tokens_total inferscope_moe_dropped_tokens_total
inferscope_moe_rerouted_tokens_total inferscope_moe_batch_tokens_total
inferscope_moe_expert_tokens_total inferscope_moe_expert_episodes_total
inferscope_prefix_cache_queried_tokens_total inferscope_prefix_cache_hit_tokens_total
inferscope_stage_gpu_seconds_total inferscope_moe_layer_gpu_seconds_total
inferscope_ssm_checkpoint_evictions_total
inferscope_requests_total inferscope_request_tokens_total
inferscope_collector_frames_total inferscope_collector_records_total
inferscope_collector_bytes_received_total inferscope_collector_rejected_frames_total
inferscope_collector_connections_total inferscope_collector_trace_write_errors_total
inferscope_agent_records_dropped_total inferscope_agent_records_sent_total
inferscope_agent_reconnects_total inferscope_collector_viewer_dropped_frames_total
inferscope_agent_records_unconfirmed_total
inferscope_collector_label_overflow_total
inferscope_ep_dispatch_seconds_total inferscope_ep_expert_compute_seconds_total
inferscope_ep_combine_seconds_total inferscope_ep_idle_seconds_total
inferscope_ep_rows_computed_total inferscope_ep_rows_sent_total inferscope_ep_layer_steps_total
inferscope_ep_straggler_steps_total inferscope_ep_joined_steps_total
inferscope_ep_unjoined_steps_total inferscope_ep_hot_rank_episodes_total
inferscope_ep_traffic_rows_out_total inferscope_ep_traffic_rows_in_total
inferscope_ep_traffic_bytes_out_total inferscope_ep_traffic_bytes_in_total
""".split()
GAUGES = """
inferscope_moe_layer_imbalance_ratio inferscope_moe_layer_load_cv
inferscope_moe_layer_max_utilization_ratio inferscope_moe_layer_min_utilization_ratio
inferscope_moe_layer_experts inferscope_moe_expert_episode
inferscope_moe_expert_utilization_current_ratio inferscope_moe_expert_load_share
inferscope_moe_ep_rank_utilization_ratio inferscope_moe_ep_balancedness_ratio
inferscope_moe_ep_eplb_rank_utilization_ratio inferscope_moe_ep_eplb_balancedness_ratio
inferscope_ep_rank_utilization_ratio inferscope_ep_rank_hot
inferscope_ep_traffic_top_pair_rows_per_second inferscope_ep_eplb_saving_seconds_per_step
inferscope_ep_eplb_layer_saving_seconds_per_step inferscope_ep_eplb_move_bytes
inferscope_ep_eplb_move_stall_seconds inferscope_ep_eplb_break_even_seconds
inferscope_memory_used_bytes inferscope_memory_capacity_bytes
inferscope_collector_connections inferscope_collector_trace_bytes inferscope_agent_connected
inferscope_collector_episode_capture_timestamp_seconds
""".split()
HISTOGRAMS = """
inferscope_moe_expert_utilization_ratio inferscope_stage_duration_seconds
inferscope_request_ttft_seconds inferscope_request_time_per_output_token_seconds
inferscope_request_e2e_seconds
""".split()
CATALOG = set(COUNTERS) | set(GAUGES) | {
    h + s for h in HISTOGRAMS for s in ("_bucket", "_sum", "_count")}
# Series Prometheus makes itself.
PROMETHEUS_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped", "ALERTS",
                     "ALERTS_FOR_STATE"}
LABELS = {"model", "rank", "layer", "expert", "kind", "stage", "layer_kind", "state", "status",
          "reason", "reused", "src", "dst", "episode", "le", "job", "instance", "alertname", "alertstate", "severity"}
GRAFANA_BUILTINS = {"__rate_interval", "__interval", "__range", "__interval_ms", "__range_s"}


# [SECTION] Loading and extraction ----------------------------------------------------

def load_dashboards(directory=DEFAULT_DIR):
    """Returns {file name: parsed JSON}; raises ValueError naming a bad file."""
    out = {}
    for path in sorted(pathlib.Path(directory).glob("*.json")):
        try:
            out[path.name] = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON: {e}") from e
    if not out:
        raise ValueError(f"no dashboards (*.json) in {directory}")
    return out


def all_panels(dash):
    for p in dash.get("panels", []):
        yield p
        for inner in p.get("panels", []):  # collapsed rows keep their panels inside
            yield inner


def panel_queries(dash):
    """Yields (panel, target) for every PromQL target of every panel."""
    for p in all_panels(dash):
        if p.get("type") == "row":
            continue
        for t in p.get("targets", []):
            yield p, t


def variables(dash):
    return {v["name"]: v for v in dash.get("templating", {}).get("list", [])}


def variable_query(var):
    q = var.get("query")
    return q.get("query") if isinstance(q, dict) else q


VAR_RE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")


def used_variables(text):
    return {a or b or c for a, b, c in VAR_RE.findall(text)}


def substitute(expr, values, builtins=None):
    """Fills Grafana variables in expr. values: {name: string already formatted
    for a regex matcher (e.g. "0|1" or ".*")}; builtins default to 1m/5m/15s."""
    b = {"__rate_interval": "1m", "__interval": "15s", "__range": "5m",
         "__interval_ms": "15000", "__range_s": "300"}
    b.update(builtins or {})

    def repl(m):
        name = m.group(1) or m.group(2) or m.group(3)
        if name in b:
            return b[name]
        if name in values:
            return values[name]
        raise KeyError(f"no value for variable ${name} in: {expr}")
    return VAR_RE.sub(repl, expr)


METRIC_RE = re.compile(r"\b(inferscope(?:_[a-z0-9_]+|:[a-z0-9_:]+))")
BY_RE = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
MATCHER_RE = re.compile(r"\{([^}]*)\}")


def recorded_names(rule_files):
    names = set()
    for f in rule_files:
        names |= set(re.findall(r"^\s*-?\s*record:\s*(\S+)", pathlib.Path(f).read_text(), re.M))
    return names


# [SECTION] Checks ------------------------------------------------------------------

def check_dashboard(name, d, recorded, errors):
    def err(msg):
        errors.append(f"{name}: {msg}")

    for key in ("uid", "title", "panels", "templating", "schemaVersion"):
        if key not in d:
            err(f"missing top-level field '{key}'")
    if not isinstance(d.get("schemaVersion"), int) or d.get("schemaVersion", 0) < 38:
        err("schemaVersion must be >= 38 (Grafana 10)")
    if not re.fullmatch(r"[a-zA-Z0-9_-]{1,40}", str(d.get("uid", ""))):
        err("uid must be 1-40 characters of [a-zA-Z0-9_-]")
    inputs = [i for i in d.get("__inputs", []) if i.get("name") == "DS_PROMETHEUS"]
    if not inputs or inputs[0].get("pluginId") != "prometheus":
        err("__inputs needs a DS_PROMETHEUS prometheus datasource input")

    vs = variables(d)
    required = {"model", "rank"} | ({"layer"} if "moe" in d.get("uid", "") else set())
    for r in sorted(required - vs.keys()):
        err(f"template variable '{r}' missing")
    for vname, v in vs.items():
        if v.get("type") == "query":
            q = variable_query(v) or ""
            if not q.startswith("label_values("):
                err(f"variable {vname}: query should be label_values(...), got {q!r}")
            if v.get("datasource", {}).get("uid") != "${DS_PROMETHEUS}":
                err(f"variable {vname}: datasource must be ${{DS_PROMETHEUS}}")
    defined = set(vs) | GRAFANA_BUILTINS

    ids, cells = set(), {}
    for p in all_panels(d):
        pid = p.get("id")
        where = f"panel {pid} '{p.get('title', '?')}'"
        if not isinstance(pid, int) or pid in ids:
            err(f"{where}: id missing or not unique")
        ids.add(pid)
        for key in ("type", "title", "gridPos"):
            if not p.get(key):
                err(f"{where}: missing '{key}'")
        g = p.get("gridPos", {})
        if not all(isinstance(g.get(k), int) for k in ("h", "w", "x", "y")):
            err(f"{where}: gridPos needs integer h, w, x, y")
            continue
        if g["x"] < 0 or g["x"] + g["w"] > 24:
            err(f"{where}: gridPos outside the 24-column grid")
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                if (x, y) in cells:
                    err(f"{where}: overlaps panel {cells[(x, y)]}")
                    break
                cells[(x, y)] = pid
            else:
                continue
            break
        if p.get("type") == "row":
            continue
        if not p.get("description"):
            err(f"{where}: add a description saying what the panel shows")
        if p.get("datasource", {}).get("uid") != "${DS_PROMETHEUS}":
            err(f"{where}: datasource must be ${{DS_PROMETHEUS}}")
        tgts = p.get("targets", [])
        if not tgts:
            err(f"{where}: no targets")
        refs = set()
        for t in tgts:
            expr = t.get("expr", "")
            if not expr.strip():
                err(f"{where}: target {t.get('refId')} has no expr")
                continue
            if t.get("refId") in refs:
                err(f"{where}: duplicate refId {t.get('refId')}")
            refs.add(t.get("refId"))
            check_expr(f"{where} {t.get('refId')}", expr, defined, recorded, err)
        for text in (p.get("title", ""),):
            for v in used_variables(text) - defined:
                err(f"{where}: title uses undefined variable ${v}")


def check_expr(where, expr, defined, recorded, err):
    for v in used_variables(expr) - defined:
        err(f"{where}: uses undefined variable ${v}")
    for m in METRIC_RE.findall(expr):
        if ":" in m:
            if m not in recorded:
                err(f"{where}: recording rule {m} is not defined in the rule files")
        elif m not in CATALOG:
            err(f"{where}: metric {m} is not in the metric catalog")
    for group in BY_RE.findall(expr):
        for label in filter(None, (s.strip() for s in group.split(","))):
            if label not in LABELS:
                err(f"{where}: label '{label}' is not a catalog label")
    for body in MATCHER_RE.findall(expr):
        for label in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", body):
            if label not in LABELS:
                err(f"{where}: matcher on '{label}' is not a catalog label")


def sample_values(dash):
    vals = {name: ".*" if v.get("includeAll") else "0" for name, v in variables(dash).items()}
    vals["model"] = "demo"
    return vals


def promtool_parse(dashboards, promtool, errors):
    """Parses every filled-in panel query with promtool by wrapping each in a
    recording rule; promtool reports the rule and the parse error."""
    lines = ["groups:", "  - name: dashboard-queries", "    rules:"]
    index = []
    for name, d in dashboards.items():
        vals = sample_values(d)
        for p, t in panel_queries(d):
            expr = substitute(t["expr"], vals)
            index.append(f"{name} panel {p['id']} '{p['title']}' {t['refId']}")
            lines.append(f"      - record: dashboard_query_{len(index)}")
            lines.append("        expr: " + json.dumps(expr))
    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as f:
        f.write("\n".join(lines) + "\n")
        path = f.name
    try:
        r = subprocess.run([promtool, "check", "rules", path], capture_output=True, text=True)
    finally:
        pathlib.Path(path).unlink()
    if r.returncode != 0:
        out = r.stdout + r.stderr
        for m in re.finditer(r"dashboard_query_(\d+)", out):
            errors.append(f"PromQL does not parse: {index[int(m.group(1)) - 1]}")
        errors.append("promtool check rules on the panel queries failed:\n" + out.strip())
    return len(index)


def check_generated(directory, errors):
    sys.path.insert(0, str(HERE))
    import generate_dashboards  # noqa: E402  (sibling script)
    for name, text in generate_dashboards.render_all().items():
        path = pathlib.Path(directory) / name
        if not path.exists() or path.read_text() != text:
            errors.append(f"{path} differs from tools/generate_dashboards.py output; "
                          "run python3 dashboards/tools/generate_dashboards.py")


def list_queries(dashboards):
    out = []
    for name, d in dashboards.items():
        for p, t in panel_queries(d):
            out.append({"dashboard": name, "uid": d["uid"], "panel_id": p["id"],
                        "title": p["title"], "refId": t["refId"], "expr": t["expr"],
                        "instant": bool(t.get("instant"))})
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", default=str(DEFAULT_DIR))
    ap.add_argument("--rules", nargs="*", default=[str(p) for p in DEFAULT_RULES])
    ap.add_argument("--promtool", help="promtool binary: parse every panel query")
    ap.add_argument("--check-generated", action="store_true")
    ap.add_argument("--list-queries", action="store_true")
    a = ap.parse_args()

    errors = []
    try:
        dashboards = load_dashboards(a.dir)
    except ValueError as e:
        print(f"FAIL: {e}")
        return 1
    if a.list_queries:
        print(json.dumps(list_queries(dashboards), indent=1))
        return 0
    recorded = recorded_names(a.rules)
    uids = [d.get("uid") for d in dashboards.values()]
    if len(set(uids)) != len(uids):
        errors.append(f"dashboard uids are not unique: {uids}")
    for name, d in dashboards.items():
        check_dashboard(name, d, recorded, errors)
    parsed = promtool_parse(dashboards, a.promtool, errors) if a.promtool else 0
    if a.check_generated:
        check_generated(a.dir, errors)
    if errors:
        for e in errors:
            print(f"FAIL: {e}")
        return 1
    n = sum(1 for d in dashboards.values() for _ in panel_queries(d))
    print(f"OK: {len(dashboards)} dashboards, {n} panel queries"
          + (f", {parsed} parsed by promtool" if parsed else ""))
    for name, d in dashboards.items():
        for p, t in panel_queries(d):
            print(f"  {name} #{p['id']} {t['refId']}: {t['expr']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""The demo's live terminal: one compact status block and one line per episode.

Called by scripts/run-demo.sh every few seconds:

    demo_status.py --prometheus http://127.0.0.1:19090 --state out/demo/status.json [--tty]
                   [--full-every 30]

Each call queries Prometheus and prints
  * one line for every expert episode (hot / cold / dead) or hot EP rank that
    opened or closed since the previous call (the state file remembers the open
    ones), and
  * the status block: the worst expert of each MoE layer ranked by utilization
    (the hottest first, marked HOT while in a hot episode), the dropped share of
    assignments, KV cache / SSM state / SSM checkpoint memory against capacity and
    checkpoint evictions, prefix-cache hit rates by layer kind, requests/s and
    agent health.
With --tty the previous block is erased first (cursor up, clear), so the block
updates in place and the episode lines scroll above it. Without a terminal (a
log, a test) the block is printed only every --full-every seconds.
Standard library only.
"""

import argparse
import json
import pathlib
import sys
import time
import urllib.parse
import urllib.request

sys.dont_write_bytecode = True

WORST_LAYERS = 6  # layers listed in the status block, the worst first
RATE = "[30s]"


def query(base, expr):
    url = base.rstrip("/") + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as r:
        data = json.load(r)
    return [(x["metric"], float(x["value"][1])) for x in data["data"]["result"]]


def scalar(base, expr, default=None):
    rows = query(base, expr)
    return rows[0][1] if rows else default


def mib(b):
    return f"{b / (1 << 20):.1f}"


def pct(x):
    return "-" if x is None or x != x else f"{100 * x:.0f}%"


# [SECTION] Episodes ------------------------------------------------------------------

def open_episodes(base):
    """{key: description} of the episodes open now."""
    out = {}
    for m, _ in query(base, "inferscope_moe_expert_episode == 1"):
        key = f"{m.get('kind')}|{m.get('model')}|{m.get('rank')}|{m.get('layer')}|{m.get('expert')}"
        out[key] = (f"{m.get('kind')} expert: layer {m.get('layer')} expert {m.get('expert')} "
                    f"(rank {m.get('rank')}, {m.get('model')})")
    for m, _ in query(base, "inferscope_ep_rank_hot == 1"):
        out[f"hot_rank|{m.get('model')}|{m.get('rank')}"] = f"hot EP rank {m.get('rank')} ({m.get('model')})"
    return out


def utilization_now(base):
    """{(model, rank, layer, expert): utilization} from the per-expert load shares."""
    shares = query(base, "inferscope_moe_expert_load_share")
    experts = {}
    for m, _ in shares:
        k = (m.get("model"), m.get("rank"), m.get("layer"))
        experts[k] = experts.get(k, 0) + 1
    return {(m.get("model"), m.get("rank"), m.get("layer"), m.get("expert")):
            v * experts[(m.get("model"), m.get("rank"), m.get("layer"))] for m, v in shares}


# [SECTION] Status block --------------------------------------------------------------

def status_lines(base, elapsed, hot_keys):
    lines = []
    req = scalar(base, f"sum(rate(inferscope_requests_total{RATE}))", 0.0)
    drop = scalar(base, f"sum(rate(inferscope_moe_dropped_tokens_total{RATE})) / "
                        f"sum(rate(inferscope_moe_routed_tokens_total{RATE}))")
    agents = query(base, "inferscope_agent_connected")
    connected = sum(1 for _, v in agents if v >= 1)
    agent_drops = scalar(base, f"sum(rate(inferscope_agent_records_dropped_total{RATE}))", 0.0)
    reconnects = scalar(base, "sum(inferscope_agent_reconnects_total)", 0.0)
    lines.append(f"[{time.strftime('%H:%M:%S')}] {elapsed:.0f} s  requests {req:.1f}/s  "
                 f"dropped {pct(drop)} of assignments  agents {connected}/{len(agents)} connected, "
                 f"{agent_drops:.0f} records/s dropped, {reconnects:.0f} reconnects")

    util = utilization_now(base)
    worst = {}
    for (model, rank, layer, expert), u in util.items():
        k = (model, rank, layer)
        if k not in worst or u > worst[k][1]:
            worst[k] = (expert, u)
    ranked = sorted(worst.items(), key=lambda kv: -kv[1][1])
    cells = []
    for (model, rank, layer), (expert, u) in ranked[:WORST_LAYERS]:
        hot = f"hot|{model}|{rank}|{layer}|{expert}" in hot_keys
        cells.append(f"L{layer} e{expert} {u:.2f}x{' HOT' if hot else ''}")
    more = f" (+{len(ranked) - WORST_LAYERS} layers)" if len(ranked) > WORST_LAYERS else ""
    lines.append("  worst expert per layer: " + (", ".join(cells) + more if cells else "no expert loads yet"))

    used = {m["kind"]: v for m, v in query(base, "sum by (kind) (inferscope_memory_used_bytes)")}
    cap = {m["kind"]: v for m, v in query(base, "sum by (kind) (inferscope_memory_capacity_bytes)")}
    mem = []
    for kind, label in (("kv_cache", "KV"), ("ssm_state", "SSM state"), ("ssm_checkpoints", "checkpoints")):
        if kind in cap and cap[kind] > 0:
            mem.append(f"{label} {mib(used.get(kind, 0))}/{mib(cap[kind])} MiB ({pct(used.get(kind, 0) / cap[kind])})")
    ev = {m["reused"]: v for m, v in
          query(base, f"sum by (reused) (rate(inferscope_ssm_checkpoint_evictions_total{RATE}))")}
    if ev:
        total = sum(ev.values())
        unused = ev.get("false", 0.0) / total if total > 0 else None
        mem.append(f"evictions {total:.1f}/s" + (f" ({pct(unused)} never restored)" if unused is not None else ""))
    lines.append("  memory: " + ("  ".join(mem) if mem else "no samples yet"))

    hits = {m["layer_kind"]: v for m, v in query(
        base, f"sum by (layer_kind) (rate(inferscope_prefix_cache_hit_tokens_total{RATE})) / "
              f"sum by (layer_kind) (rate(inferscope_prefix_cache_queried_tokens_total{RATE}))")}
    lines.append("  prefix-cache hits: " + (", ".join(f"{k} {pct(v)}" for k, v in sorted(hits.items()))
                                            if hits else "no lookups yet"))
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prometheus", required=True)
    ap.add_argument("--state", required=True, help="JSON file kept between calls")
    ap.add_argument("--tty", action="store_true", help="update the status block in place")
    ap.add_argument("--full-every", type=float, default=30.0,
                    help="without --tty: seconds between status blocks")
    ap.add_argument("--final", action="store_true", help="print the block whatever the time (end of run)")
    a = ap.parse_args()

    state_path = pathlib.Path(a.state)
    try:
        state = json.loads(state_path.read_text())
    except (OSError, ValueError):
        state = {"open": {}, "block_lines": 0, "last_block": 0.0, "started": time.time()}
    now = time.time()
    try:
        episodes = open_episodes(a.prometheus)
        block = status_lines(a.prometheus, now - state["started"], episodes)
    except (OSError, ValueError, KeyError) as e:  # Prometheus not ready or gone: try next time
        print(f"run-demo: status unavailable ({e})", file=sys.stderr)
        return 0

    out = []
    if a.tty and state["block_lines"]:
        out.append(f"\033[{state['block_lines']}F\033[J")  # up to the block's first line, clear below
    stamp = time.strftime("%H:%M:%S")
    for key, desc in sorted(episodes.items()):
        if key not in state["open"]:
            out.append(f"[{stamp}] episode opened: {desc}\n")
    for key, desc in sorted(state["open"].items()):
        if key not in episodes:
            out.append(f"[{stamp}] episode closed: {desc}\n")
    show = a.tty or a.final or now - state["last_block"] >= a.full_every
    if show:
        out.append("".join(line + "\n" for line in block))
        state["last_block"] = now
    state["block_lines"] = len(block) if (show and a.tty) else 0
    state["open"] = episodes
    sys.stdout.write("".join(out))
    sys.stdout.flush()
    state_path.write_text(json.dumps(state))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env bash
# The inferscope demo, from an existing build (scripts/demo.sh installs and builds first).
#
#   scripts/run-demo.sh [--duration S] [--build DIR] [--model FILE] [--workload NAME]
#                       [--no-viewer] [--no-alertmanager] [--dashboard-image PNG]
#
# Starts, all on loopback:
#   inferscope-collector  ingest 127.0.0.1:7431, /metrics 127.0.0.1:9464, viewer API 127.0.0.1:7433
#   prometheus            127.0.0.1:19090, scraping the collector every 2s with the repository's
#                         recording and alerting rules (alert `for:` shortened to 10s for the demo)
#   alertmanager          127.0.0.1:19093 (when installed; --no-alertmanager to skip)
#   inferscope-engine     the demo model on the skewed multimodal workload
# then prints what to look at, opens the viewer where $DISPLAY exists (otherwise writes viewer
# screenshots to out/), and stops everything it started on Ctrl-C or at the end of --duration.
# Without --duration the engine serves until Ctrl-C. --dashboard-image renders the MoE
# dashboard from this run's Prometheus data (needs chromium) when --duration is reached.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

duration=""
build=build/release
model=reference_engine/models/demo.json
workload=skewed-multimodal
viewer=1
alertmanager=1
dashboard_image=""
while (($#)); do
  case "$1" in
    --duration) duration=${2:?--duration needs seconds}; shift 2 ;;
    --build) build=${2:?}; shift 2 ;;
    --model) model=${2:?}; shift 2 ;;
    --workload) workload=${2:?}; shift 2 ;;
    --no-viewer) viewer=0; shift ;;
    --no-alertmanager) alertmanager=0; shift ;;
    --dashboard-image) dashboard_image=${2:?}; shift 2 ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "run-demo: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [[ -n $duration && ! $duration =~ ^[0-9]+$ ]]; then
  echo "run-demo: --duration takes whole seconds, got '$duration'" >&2; exit 2
fi

collector_bin=$build/collector/inferscope-collector
engine_bin=$build/reference_engine/inferscope-engine
export_bin=$build/collector/inferscope-export
viewer_bin=$build/viewer/inferscope-viewer
for b in "$collector_bin" "$engine_bin"; do
  [[ -x $b ]] || { echo "run-demo: $b is not built (scripts/build.sh release)" >&2; exit 1; }
done
[[ -f $model ]] || { echo "run-demo: model file $model not found" >&2; exit 1; }
command -v prometheus >/dev/null || { echo "run-demo: prometheus is not installed (scripts/install-deps.sh)" >&2; exit 1; }
am_bin=$(command -v prometheus-alertmanager || command -v alertmanager || true)
[[ -n $am_bin ]] || alertmanager=0

port_busy() { (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
ports=(7431 9464 7433 19090)
((alertmanager)) && ports+=(19093)
for p in "${ports[@]}"; do
  if port_busy "$p"; then
    echo "run-demo: 127.0.0.1:$p is already in use (another demo still running?); stop it first" >&2
    exit 1
  fi
done

out=$root/out
demo=$out/demo
rm -rf "$demo"
mkdir -p "$demo/rules" "$demo/trace"

# [SECTION] Stop everything we started, whatever happens ------------------------------
pids=()
names=()
cleanup() {
  trap - EXIT INT TERM
  local i
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill -TERM "${pids[i]}" 2>/dev/null || true
  done
  # The engine finishes the requests it holds on TERM; give everyone 5 s, then KILL.
  for ((i = 0; i < 50; i++)); do
    local alive=0 pid
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    ((alive)) || break
    sleep 0.1
  done
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill -KILL "${pids[i]}" 2>/dev/null || true
    wait "${pids[i]}" 2>/dev/null || true
  done
  ((${#pids[@]})) && echo "run-demo: stopped ${names[*]}"
}
trap cleanup EXIT
trap 'echo; echo "run-demo: interrupted"; exit 130' INT TERM

started() { pids+=("$1"); names+=("$2"); }
wait_http() {  # url seconds
  local i
  for ((i = 0; i < $2 * 5; i++)); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    sleep 0.2
  done
  echo "run-demo: $1 did not answer within $2s" >&2
  return 1
}
prom_query() {  # expr -> JSON result (Prometheus HTTP API)
  curl -fsS http://127.0.0.1:19090/api/v1/query --data-urlencode "query=$1"
}

# [SECTION] Collector ---------------------------------------------------------------
# The engine runs every expert in one process; tell the collector how an
# expert-parallel deployment would place them (expert e on EP rank e % 4), so the
# dashboard's EP rank utilization shows which rank a hot expert would overload.
python3 - "$model" >"$demo/placement.json" <<'PY'
import json, sys
experts = int(json.load(open(sys.argv[1]))["moe"]["experts"])
print(json.dumps({"ranks": 4, "expert_to_rank": [e % 4 for e in range(experts)]}))
PY
"$collector_bin" --listen tcp://127.0.0.1:7431 --metrics 127.0.0.1:9464 --viewer 127.0.0.1:7433 \
  --trace-dir "$demo/trace" --trace-max-bytes $((256 << 20)) \
  --window 2s --hot-windows 3 --per-expert-metrics --placement "$demo/placement.json" \
  >"$demo/collector.out" 2>"$demo/collector.log" &
started $! collector
wait_http http://127.0.0.1:9464/metrics 10 || { cat "$demo/collector.log" >&2; exit 1; }

# [SECTION] Alertmanager (optional) and Prometheus --------------------------------------
alerting=""
if ((alertmanager)); then
  cat >"$demo/alertmanager.yml" <<'EOF'
# Demo Alertmanager: groups inferscope alerts; no receivers are configured, so
# nothing is sent anywhere. See the alerts at http://127.0.0.1:19093.
route:
  receiver: demo-null
  group_by: [alertname, model, layer]
  group_wait: 5s
  group_interval: 30s
receivers:
  - name: demo-null
EOF
  "$am_bin" --config.file="$demo/alertmanager.yml" --storage.path="$demo/alertmanager-data" \
    --web.listen-address=127.0.0.1:19093 --cluster.listen-address= \
    --log.level=warn >"$demo/alertmanager.log" 2>&1 &
  started $! alertmanager
  alerting=$'alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ["127.0.0.1:19093"]\n'
fi

for f in dashboards/prometheus/rules/*.yml; do
  # The demo runs for a minute, not an hour: shorten every alert's `for:`.
  sed -E 's/^([[:space:]]+for:)[[:space:]]*[^[:space:]]+/\1 10s/' "$f" >"$demo/rules/$(basename "$f")"
done
cat >"$demo/prometheus.yml" <<EOF
# Generated by scripts/run-demo.sh from dashboards/prometheus/.
global:
  scrape_interval: 2s
  evaluation_interval: 2s
rule_files:
  - $demo/rules/inferscope-recording.yml
  - $demo/rules/inferscope-alerts.yml
${alerting}scrape_configs:
  - job_name: inferscope-collector
    static_configs:
      - targets: ["127.0.0.1:9464"]
EOF
prometheus --config.file="$demo/prometheus.yml" --storage.tsdb.path="$demo/prometheus-data" \
  --web.listen-address=127.0.0.1:19090 --storage.tsdb.retention.time=1d --log.level=warn \
  >"$demo/prometheus.log" 2>&1 &
started $! prometheus
wait_http http://127.0.0.1:19090/-/ready 30 || { cat "$demo/prometheus.log" >&2; exit 1; }

# [SECTION] Engine ------------------------------------------------------------------
engine_args=(--model "$model" --workload "$workload" --collector tcp://127.0.0.1:7431 --seed 1
             --duration "${duration:-86400}" --summary-json "$demo/engine-summary.json")
"$engine_bin" "${engine_args[@]}" >"$demo/engine.out" 2>"$demo/engine.log" &
engine_pid=$!
started $engine_pid engine

cat <<EOF

inferscope demo running (model $(basename "$model"), workload $workload${duration:+, ${duration}s}).
  Prometheus     http://127.0.0.1:19090/alerts        (rules: dashboards/prometheus/rules)
                 http://127.0.0.1:19090/graph?g0.expr=inferscope_moe_layer_imbalance_ratio&g0.range_input=5m
  Alertmanager   $( ((alertmanager)) && echo "http://127.0.0.1:19093" || echo "not started")
  Collector      http://127.0.0.1:9464/metrics        viewer API 127.0.0.1:7433
  Grafana        import dashboards/grafana/*.json with a Prometheus datasource at http://127.0.0.1:19090
  Trace          $demo/trace    (export: $export_bin $demo/trace -o $out/demo-trace.json)
  Logs           $demo/*.log
  Every panel query: python3 dashboards/tools/check_dashboards.py --list-queries
EOF

viewer_pid=""
if ((viewer)) && [[ -x $viewer_bin && -n ${DISPLAY:-} ]]; then
  "$viewer_bin" --connect 127.0.0.1:7433 >"$demo/viewer.log" 2>&1 &
  viewer_pid=$!
  started $viewer_pid viewer
  echo "  Viewer         opened (live from 127.0.0.1:7433)"
elif ((viewer)); then
  echo "  Viewer         no \$DISPLAY: screenshots go to $out/ when the run ends"
fi
echo
[[ -z $duration ]] && echo "Press Ctrl-C to stop everything."

# [SECTION] Watch: hot experts and alerts as they appear ---------------------------------
cat >"$demo/fmt.py" <<'PY'
# Formats Prometheus API answers for the demo's terminal output.
import json, sys
data = json.load(sys.stdin)
data = data.get("data", data)
if sys.argv[1] == "hot":
    rows = data["result"]
    for r in sorted(rows, key=lambda r: (r["metric"]["rank"], int(r["metric"]["layer"]), int(r["metric"]["expert"]))):
        m = r["metric"]
        print(f"    hot expert: model {m['model']} rank {m['rank']} layer {m['layer']} "
              f"expert {m['expert']} at {float(r['value'][1]):.2f}x the mean load")
elif sys.argv[1] == "fired":
    rows = sorted((r["metric"]["rank"], int(r["metric"]["layer"]), int(r["metric"]["expert"]))
                  for r in data["result"])
    print("    " + ", ".join(f"rank {r} layer {l} expert {e}" for r, l, e in rows) if rows else "    (none)")
elif sys.argv[1] == "engine":
    hot = data.get("hot_experts", [])
    print("    " + ", ".join(f"layer {h['layer']} expert {h['expert']} ({100 * h['share']:.0f}%)"
                          for h in hot) if hot else "    (none)")
else:
    for a in data["alerts"]:
        print(f"    {a['state']:8} {a['labels']['alertname']}: {a['annotations'].get('summary', '')}")
PY
show_hot() {
  prom_query 'inferscope_moe_expert_utilization_current_ratio * on (model, rank, layer, expert) group_left (kind) (inferscope_moe_expert_episode{kind="hot"} == 1)' |
    python3 "$demo/fmt.py" hot || true
}
show_alerts() {
  curl -fsS http://127.0.0.1:19090/api/v1/alerts | python3 "$demo/fmt.py" alerts || true
}

render_dashboard() {
  # The layer whose hot expert is furthest above the mean goes into the heatmap.
  local layer
  layer=$(prom_query 'topk(1, inferscope_moe_expert_utilization_current_ratio * on (model, rank, layer, expert) group_left (kind) (inferscope_moe_expert_episode{kind="hot"} == 1))' |
    python3 -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(r[0]["metric"]["layer"] if r else "1")')
  python3 dashboards/tools/render_dashboard_image.py --prometheus http://127.0.0.1:19090 \
    --dashboard dashboards/grafana/inferscope-moe.json --var "model=$(basename "$model" .json)" \
    --var "focus_layer=$layer" --minutes "$(awk -v s="${duration:-120}" 'BEGIN { print (s < 300 ? s : 300) / 60 }')" \
    --rate-interval 10s --html "$demo/dashboard-moe.html" --out "$dashboard_image" &&
    echo "[$(date +%H:%M:%S)] dashboard image written: $dashboard_image"
}

last=""
started_at=$SECONDS
while kill -0 "$engine_pid" 2>/dev/null; do
  sleep 5
  now=$(show_hot 2>/dev/null)
  # Print when the set of hot experts changes, not on every new utilization figure.
  keys=$(sed -E 's/ at [0-9.]+x.*//' <<<"$now")
  if [[ -n $now && $keys != "$last" ]]; then
    echo "[$(date +%H:%M:%S)] experts in a hot episode (collector):"
    echo "$now"
    last=$keys
  fi
  if [[ -n $dashboard_image ]] && ((SECONDS - started_at >= ${duration:-120})); then
    render_dashboard || echo "run-demo: rendering the dashboard image failed"
    dashboard_image=""
  fi
done
wait "$engine_pid" && rc=0 || rc=$?
((rc == 0)) || { echo "run-demo: the engine exited with $rc; see $demo/engine.log" >&2; tail -20 "$demo/engine.log" >&2; }

sleep 5   # two more scrapes and rule evaluations after the last records
echo
echo "== engine summary ($demo/engine.out)"
tail -40 "$demo/engine.out"
echo
if [[ -f $demo/engine-summary.json ]]; then
  echo "== hot experts by the engine's own count over the run (share of the layer's assignments)"
  python3 "$demo/fmt.py" engine <"$demo/engine-summary.json" || true
fi
echo "== InferscopeHotExpert fired during the run for"
prom_query 'max by (model, rank, layer, expert) (max_over_time(ALERTS{alertname="InferscopeHotExpert",alertstate="firing"}[1h]))' |
  python3 "$demo/fmt.py" fired || true
echo "== Prometheus alerts now (http://127.0.0.1:19090/alerts)"
show_alerts

if [[ -x $export_bin ]]; then
  "$export_bin" "$demo/trace" -o "$out/demo-trace.json" >/dev/null 2>"$demo/export.log" &&
    echo "== trace exported to $out/demo-trace.json (open in https://ui.perfetto.dev or chrome://tracing)"
fi
if ((viewer)) && [[ -x $viewer_bin && -z $viewer_pid ]]; then
  shot=()
  [[ -z ${DISPLAY:-} ]] && command -v xvfb-run >/dev/null && shot=(xvfb-run -a -s "-screen 0 1600x900x24")
  for view in all experts timeline; do
    "${shot[@]}" "$viewer_bin" "$demo/trace" --view "$view" --screenshot "$out/viewer-$view.png" \
      >>"$demo/viewer.log" 2>&1 && echo "== viewer screenshot $out/viewer-$view.png" ||
      echo "run-demo: viewer screenshot ($view) failed; see $demo/viewer.log"
  done
fi
if [[ -n $viewer_pid ]]; then
  echo "The viewer stays open; Prometheus and the collector keep serving. Ctrl-C stops everything."
  wait "$viewer_pid" || true
fi

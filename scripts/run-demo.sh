#!/usr/bin/env bash
# The inferscope demo, from an existing build (scripts/demo.sh installs and builds first).
#
#   scripts/run-demo.sh [--duration S] [--build DIR] [--model FILE] [--workload NAME]
#                       [--out DIR] [--no-viewer] [--no-alertmanager] [--dashboard-image PNG]
#                       [--free-ports]
#
# Starts, all on loopback:
#   inferscope-collector  ingest 127.0.0.1:7431, /metrics 127.0.0.1:9464, viewer API 127.0.0.1:7433
#   prometheus            127.0.0.1:19090, scraping the collector every 2s with the repository's
#                         recording and alerting rules (alert `for:` shortened to 10s for the demo)
#   alertmanager          127.0.0.1:19093 (when installed; --no-alertmanager to skip)
#   inferscope-engine     the demo model on the skewed multimodal workload
# then prints where the results will be written and a compact live status (updated in place
# on a terminal) with one line per expert episode that opens or closes, and opens the viewer
# where $DISPLAY exists.
#
# The run ends at --duration seconds (default: when you stop it), on Ctrl-C or on SIGTERM.
# Either way the engine drains its running requests, and then every end-of-run step runs:
# the engine's summary, the alerts that fired, the dashboard image (HTML always, PNG with
# chromium; --dashboard-image PNG puts the PNG elsewhere), the trace export for Perfetto and
# the viewer screenshots, all under --out (default out/). A second Ctrl-C skips what is left.
# --free-ports picks free ports instead of the fixed ones (tests, a second demo beside one).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

duration=""
build=build/release
model=reference_engine/models/demo.json
workload=skewed-multimodal
out=$root/out
viewer=1
alertmanager=1
dashboard_png=""
free_ports=0
while (($#)); do
  case "$1" in
    --duration) duration=${2:?--duration needs seconds}; shift 2 ;;
    --build) build=${2:?}; shift 2 ;;
    --model) model=${2:?}; shift 2 ;;
    --workload) workload=${2:?}; shift 2 ;;
    --out) out=$(realpath -m "${2:?}"); shift 2 ;;
    --no-viewer) viewer=0; shift ;;
    --no-alertmanager) alertmanager=0; shift ;;
    --dashboard-image) dashboard_png=$(realpath -m "${2:?}"); shift 2 ;;
    --free-ports) free_ports=1; shift ;;
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
chromium=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)

# [SECTION] Ports ----------------------------------------------------------------------
if ((free_ports)); then
  read -r ingest_port metrics_port viewer_port prom_port am_port < <(python3 - <<'PY'
import socket
socks = [socket.socket() for _ in range(5)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])
PY
)
else
  ingest_port=7431 metrics_port=9464 viewer_port=7433 prom_port=19090 am_port=19093
fi
prom=http://127.0.0.1:$prom_port
port_busy() { (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
ports=("$ingest_port" "$metrics_port" "$viewer_port" "$prom_port")
((alertmanager)) && ports+=("$am_port")
for p in "${ports[@]}"; do
  if port_busy "$p"; then
    echo "run-demo: 127.0.0.1:$p is already in use (another demo still running? --free-ports runs beside it)" >&2
    exit 1
  fi
done

demo=$out/demo
rm -rf "$demo"
mkdir -p "$demo/rules" "$demo/trace"
# Where the end-of-run steps write (said at the start, listed again at the end).
summary_txt=$demo/engine.out
summary_json=$demo/engine-summary.json
dashboard_html=$demo/dashboard-moe.html
[[ -n $dashboard_png || -z $chromium ]] || dashboard_png=$out/dashboard-moe.png
trace_json=$out/demo-trace.json
shot_views=(all experts timeline memory)

# [SECTION] Stop everything we started, whatever happens ------------------------------
# Every child runs in its own session (setsid), so a Ctrl-C on the terminal reaches this
# script only: it decides the order in which the engine drains and the rest stops.
pids=()
names=()
stop_pids() {  # pid... : TERM, 5 s to exit, then KILL
  local pid i
  for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
  for ((i = 0; i < 50; i++)); do
    local alive=0
    for pid in "$@"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    ((alive)) || break
    sleep 0.1
  done
  for pid in "$@"; do
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
}
cleanup() {
  trap - EXIT INT TERM
  local i rev=()
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do rev+=("${pids[i]}"); done
  ((${#rev[@]})) && stop_pids "${rev[@]}"
  ((${#pids[@]})) && echo "run-demo: stopped ${names[*]}"
}
trap cleanup EXIT
trap 'echo; echo "run-demo: interrupted while starting"; exit 130' INT TERM

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
  curl -fsS "$prom/api/v1/query" --data-urlencode "query=$1"
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
setsid "$collector_bin" --listen "tcp://127.0.0.1:$ingest_port" --metrics "127.0.0.1:$metrics_port" \
  --viewer "127.0.0.1:$viewer_port" --trace-dir "$demo/trace" --trace-max-bytes $((256 << 20)) \
  --window 2s --hot-windows 3 --per-expert-metrics --placement "$demo/placement.json" \
  >"$demo/collector.out" 2>"$demo/collector.log" &
collector_pid=$!
started $collector_pid collector
wait_http "http://127.0.0.1:$metrics_port/metrics" 10 || { cat "$demo/collector.log" >&2; exit 1; }

# [SECTION] Alertmanager (optional) and Prometheus --------------------------------------
alerting=""
if ((alertmanager)); then
  cat >"$demo/alertmanager.yml" <<'EOF'
# Demo Alertmanager: groups inferscope alerts; no receivers are configured, so
# nothing is sent anywhere.
route:
  receiver: demo-null
  group_by: [alertname, model, layer]
  group_wait: 5s
  group_interval: 30s
receivers:
  - name: demo-null
EOF
  setsid "$am_bin" --config.file="$demo/alertmanager.yml" --storage.path="$demo/alertmanager-data" \
    --web.listen-address="127.0.0.1:$am_port" --cluster.listen-address= \
    --log.level=warn >"$demo/alertmanager.log" 2>&1 &
  started $! alertmanager
  alerting=$'alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ["127.0.0.1:'$am_port$'"]\n'
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
      - targets: ["127.0.0.1:$metrics_port"]
EOF
setsid prometheus --config.file="$demo/prometheus.yml" --storage.tsdb.path="$demo/prometheus-data" \
  --web.listen-address="127.0.0.1:$prom_port" --storage.tsdb.retention.time=1d --log.level=warn \
  >"$demo/prometheus.log" 2>&1 &
started $! prometheus
wait_http "$prom/-/ready" 30 || { cat "$demo/prometheus.log" >&2; exit 1; }

# [SECTION] Engine ------------------------------------------------------------------
# Without --duration it serves a day; it finishes the requests it holds on SIGTERM.
engine_args=(--model "$model" --workload "$workload" --collector "tcp://127.0.0.1:$ingest_port" --seed 1
             --duration "${duration:-86400}" --summary-json "$summary_json")
setsid "$engine_bin" "${engine_args[@]}" >"$summary_txt" 2>"$demo/engine.log" &
engine_pid=$!
started $engine_pid engine

# From here a Ctrl-C or SIGTERM ends the run well: drain, then the end-of-run steps.
stop_requested=0
on_stop_signal() {
  if ((stop_requested)); then
    echo; echo "run-demo: second interrupt: skipping the remaining end-of-run steps"
    exit 130
  fi
  stop_requested=1
  echo; echo "run-demo: stopping: the engine drains its requests, then the end-of-run steps run (Ctrl-C again skips them)"
}
trap on_stop_signal INT TERM

cat <<EOF

inferscope demo running (model $(basename "$model"), workload $workload, $([[ -n $duration ]] && echo "${duration}s" || echo "until Ctrl-C")).
  Prometheus     $prom/alerts        (rules: dashboards/prometheus/rules)
                 $prom/graph?g0.expr=inferscope_moe_layer_imbalance_ratio&g0.range_input=5m
  Alertmanager   $( ((alertmanager)) && echo "http://127.0.0.1:$am_port" || echo "not started")
  Collector      http://127.0.0.1:$metrics_port/metrics        viewer API 127.0.0.1:$viewer_port
  Grafana        import dashboards/grafana/*.json with a Prometheus datasource at $prom
  Logs           $demo/*.log
When the run ends (--duration, Ctrl-C or SIGTERM; the engine drains first) it writes:
  Summary        $summary_txt  (JSON: $summary_json)
  Dashboard      $dashboard_html$([[ -n $dashboard_png ]] && echo " and $dashboard_png" || echo "  (PNG: needs chromium, apt-get install chromium)")
  Trace export   $trace_json  (Perfetto / chrome://tracing; raw trace: $demo/trace)
  Screenshots    $( ((viewer)) && [[ -x $viewer_bin ]] && echo "$out/viewer-{$(IFS=,; echo "${shot_views[*]}")}.png" || echo "none (viewer not built or --no-viewer)")
EOF

viewer_pid=""
if ((viewer)) && [[ -x $viewer_bin && -n ${DISPLAY:-} ]]; then
  setsid "$viewer_bin" --connect "127.0.0.1:$viewer_port" >"$demo/viewer.log" 2>&1 &
  viewer_pid=$!
  started $viewer_pid viewer
  echo "  Viewer         opened (live from 127.0.0.1:$viewer_port)"
fi
echo
[[ -z $duration ]] && echo "Press Ctrl-C to stop (the end-of-run steps still run)."
echo

# [SECTION] Watch: compact status in place, one line per episode --------------------------
status_args=(--prometheus "$prom" --state "$demo/status-state.json")
live_args=()
[[ -t 1 ]] && live_args=(--tty)  # in place on a terminal; the final block (below) is plain
while ((!stop_requested)) && kill -0 "$engine_pid" 2>/dev/null; do
  sleep 2 & wait $! || true  # `wait` returns at once when a trapped signal arrives
  ((stop_requested)) && break
  python3 scripts/lib/demo_status.py "${status_args[@]}" "${live_args[@]}" || true
done
if ((stop_requested)); then kill -TERM "$engine_pid" 2>/dev/null || true; fi
rc=0
while :; do  # a signal interrupts `wait`; the engine may still be draining
  wait "$engine_pid" && rc=0 || rc=$?
  kill -0 "$engine_pid" 2>/dev/null || break
done
((rc == 0)) || { echo "run-demo: the engine exited with $rc; see $demo/engine.log" >&2; tail -20 "$demo/engine.log" >&2; }

# [SECTION] End of the run: every step, whatever ended it ----------------------------------
trap 'echo; echo "run-demo: interrupted: skipping the remaining end-of-run steps"; exit 130' INT TERM
sleep 5 & wait $! || true   # two more scrapes and rule evaluations after the last records
python3 scripts/lib/demo_status.py "${status_args[@]}" --final || true
failed_steps=()
echo
echo "== engine summary ($summary_txt)"
tail -40 "$summary_txt"
echo
cat >"$demo/fmt.py" <<'PY'
# Formats Prometheus API answers and the engine summary for the end of the run.
import json, sys
data = json.load(sys.stdin)
data = data.get("data", data)
if sys.argv[1] == "fired":
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
if [[ -f $summary_json ]]; then
  echo "== hot experts by the engine's own count over the run (share of the layer's assignments)"
  python3 "$demo/fmt.py" engine <"$summary_json" || true
else
  failed_steps+=("engine summary JSON")
fi
echo "== InferscopeHotExpert fired during the run for"
prom_query 'max by (model, rank, layer, expert) (max_over_time(ALERTS{alertname="InferscopeHotExpert",alertstate="firing"}[1h]))' |
  python3 "$demo/fmt.py" fired || true
echo "== Prometheus alerts now ($prom/alerts)"
curl -fsS "$prom/api/v1/alerts" | python3 "$demo/fmt.py" alerts || true

# The dashboard from this run's Prometheus data; its heatmap shows the layer whose
# expert is furthest above the mean.
layer=$(prom_query 'topk(1, max by (layer) (inferscope_moe_layer_max_utilization_ratio))' |
  python3 -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(r[0]["metric"]["layer"] if r else "1")' ||
  echo 1)
minutes=$(awk -v s=$((SECONDS)) 'BEGIN { s = s < 60 ? 60 : s; print (s < 300 ? s : 300) / 60 }')
if python3 dashboards/tools/render_dashboard_image.py --prometheus "$prom" \
     --dashboard dashboards/grafana/inferscope-moe.json --var "model=$(basename "$model" .json)" \
     --var "focus_layer=$layer" --minutes "$minutes" --rate-interval 10s \
     --html "$dashboard_html" ${dashboard_png:+--out "$dashboard_png"} >"$demo/dashboard.log" 2>&1; then
  echo "== dashboard written: $dashboard_html${dashboard_png:+ and $dashboard_png}"
else
  echo "run-demo: rendering the dashboard failed; see $demo/dashboard.log"
  failed_steps+=("dashboard")
fi

# The collector flushes its trace when it stops (unless the live viewer still reads it).
if [[ -z $viewer_pid ]]; then stop_pids "$collector_pid"; fi
if [[ -x $export_bin ]] && "$export_bin" "$demo/trace" -o "$trace_json" >/dev/null 2>"$demo/export.log"; then
  echo "== trace exported to $trace_json (open in https://ui.perfetto.dev or chrome://tracing)"
else
  echo "run-demo: the trace export failed; see $demo/export.log"
  failed_steps+=("trace export")
fi
if ((viewer)) && [[ -x $viewer_bin ]]; then
  shot=()
  command -v xvfb-run >/dev/null && shot=(xvfb-run -a -s "-screen 0 1600x900x24")
  ((${#shot[@]})) || [[ -n ${DISPLAY:-} ]] || { echo "run-demo: no \$DISPLAY and no xvfb-run: no screenshots"; failed_steps+=("screenshots"); }
  if ((${#shot[@]})) || [[ -n ${DISPLAY:-} ]]; then
    for view in "${shot_views[@]}"; do
      if "${shot[@]}" "$viewer_bin" "$demo/trace" --view "$view" --screenshot "$out/viewer-$view.png" \
           >>"$demo/viewer.log" 2>&1; then
        echo "== viewer screenshot $out/viewer-$view.png"
      else
        echo "run-demo: viewer screenshot ($view) failed; see $demo/viewer.log"
        failed_steps+=("screenshot $view")
      fi
    done
  fi
fi
echo
if ((${#failed_steps[@]})); then
  echo "run-demo: done, but these end-of-run steps failed: ${failed_steps[*]}"
else
  echo "run-demo: done; the results are under $out"
fi
if [[ -n $viewer_pid ]]; then
  echo "The viewer stays open; Prometheus and the collector keep serving. Ctrl-C stops everything."
  trap 'exit 0' INT TERM
  wait "$viewer_pid" || true
fi
((rc == 0 && ${#failed_steps[@]} == 0))

#!/usr/bin/env bash
# Soak: engine + collector + Prometheus for several minutes; fails if a process leaks.
#
#   scripts/soak.sh [--duration S] [--interval S] [--build DIR] [--model FILE]
#                   [--workload NAME] [--out DIR]
#
# Starts on loopback, on free ports: inferscope-collector (trace store bounded to
# 64 MiB in small segments, so rotation and deletion run during the soak), a
# Prometheus scraping it every 2 s, and inferscope-engine (default: the demo
# model on the skewed multimodal workload), all for --duration seconds (default 300).
# Every --interval seconds (default 5) it samples each process's resident set
# (VmRSS) and open file descriptors from /proc, prints a table row and appends
# it to OUT/soak.csv (default out/soak).
#
# Verdict, per process and quantity: a least-squares line is fitted over the
# second half of the samples (the first half is warm-up: allocators, caches,
# Prometheus' first series). A process FAILS when that line projects, over one
# hour, a growth above the allowance:
#   RSS:  max(16 MiB, 10% of its mean RSS) per hour for the engine and collector;
#         Prometheus' RSS is reported but not judged (its in-memory head block
#         grows with every sample by design until the 2-hour compaction), nor is
#         the engine's while its queue of waiting requests grows (the machine is
#         too slow for the workload's rate: a bounded backlog, not a leak; lower
#         the load or use a faster machine for a verdict on the engine);
#   fds:  more than 10 descriptors per hour, for every process.
# It also fails when a process dies early, when the trace directory exceeds its
# bound, or when Prometheus cannot scrape the collector at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

duration=300
interval=5
build=build/release
model=reference_engine/models/demo.json
workload=skewed-multimodal
out=$root/out/soak
while (($#)); do
  case "$1" in
    --duration) duration=${2:?--duration needs seconds}; shift 2 ;;
    --interval) interval=${2:?--interval needs seconds}; shift 2 ;;
    --build) build=${2:?}; shift 2 ;;
    --model) model=${2:?}; shift 2 ;;
    --workload) workload=${2:?}; shift 2 ;;
    --out) out=${2:?}; shift 2 ;;
    -h|--help) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "soak: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
for v in duration interval; do
  [[ ${!v} =~ ^[0-9]+$ && ${!v} -gt 0 ]] || { echo "soak: --$v takes whole seconds > 0, got '${!v}'" >&2; exit 2; }
done
((duration >= 6 * interval)) || { echo "soak: --duration must cover at least 6 samples (6 x --interval)" >&2; exit 2; }

collector_bin=$build/collector/inferscope-collector
engine_bin=$build/reference_engine/inferscope-engine
for b in "$collector_bin" "$engine_bin"; do
  [[ -x $b ]] || { echo "soak: $b is not built (scripts/build.sh release)" >&2; exit 1; }
done
[[ -f $model ]] || { echo "soak: model file $model not found" >&2; exit 1; }
command -v prometheus >/dev/null || { echo "soak: prometheus is not installed (scripts/install-deps.sh)" >&2; exit 1; }

rm -rf "$out"
mkdir -p "$out/trace" "$out/prometheus"
trace_max=$((64 << 20))

# [SECTION] Stop everything we started, whatever happens ------------------------------
pids=()
cleanup() {
  trap - EXIT INT TERM
  local p
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# [SECTION] Start -------------------------------------------------------------------
"$collector_bin" --listen tcp://127.0.0.1:0 --metrics 127.0.0.1:0 --viewer 127.0.0.1:0 \
  --trace-dir "$out/trace" --trace-max-bytes "$trace_max" --trace-segment-bytes $((4 << 20)) --window 5s \
  >"$out/collector.out" 2>"$out/collector.log" &
collector_pid=$!
pids+=("$collector_pid")
for _ in $(seq 100); do
  grep -q '^listening viewer' "$out/collector.out" 2>/dev/null && break
  sleep 0.1
done
ingest=$(sed -n 's/^listening ingest //p' "$out/collector.out")
metrics=$(sed -n 's/^listening metrics //p' "$out/collector.out")
[[ -n $ingest && -n $metrics ]] || { echo "soak: the collector did not start:"; cat "$out/collector.log"; exit 1; }

prom_port=$(free_port)
cat >"$out/prometheus.yml" <<EOF
global:
  scrape_interval: 2s
  evaluation_interval: 2s
scrape_configs:
  - job_name: inferscope
    static_configs:
      - targets: ['$metrics']
EOF
prometheus --config.file="$out/prometheus.yml" --storage.tsdb.path="$out/prometheus" \
  --web.listen-address="127.0.0.1:$prom_port" >"$out/prometheus.log" 2>&1 &
prom_pid=$!
pids+=("$prom_pid")

# The engine generates requests past the end of the soak; the soak stops it (SIGTERM)
# once the sampling is done, so a machine too slow for the workload's rate cannot stretch it.
"$engine_bin" --model "$model" --workload "$workload" --duration $((duration + 3600)) --collector "$ingest" \
  >"$out/engine.out" 2>"$out/engine.log" &
engine_pid=$!
pids+=("$engine_pid")
echo "soak: ${duration}s of $workload on $(basename "$model"); collector $ingest (/metrics $metrics), prometheus 127.0.0.1:$prom_port; samples every ${interval}s in $out/soak.csv"

# [SECTION] Sample ------------------------------------------------------------------
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
fds() { ls "/proc/$1/fd" 2>/dev/null | wc -l; }
trace_bytes() { du -sb "$out/trace" | cut -f1; }
# Requests admitted but not yet running, from the engine's last progress line (every 5 s).
waiting() { sed -n 's/.* \([0-9]*\) waiting;.*/\1/p' "$out/engine.out" | tail -1 | grep . || echo 0; }

echo "t_s,engine_rss_kib,engine_fds,collector_rss_kib,collector_fds,prometheus_rss_kib,prometheus_fds,trace_bytes,engine_waiting" >"$out/soak.csv"
printf '%6s | %12s %6s | %12s %6s | %12s %6s | %10s | %7s\n' t engine_KiB fds collector_KiB fds prometheus_KiB fds trace_MiB waiting
start=$(date +%s)
died=""
while :; do
  now=$(($(date +%s) - start))
  ((now > duration)) && break
  for name in engine collector prom; do
    pid_var=${name}_pid
    if ! kill -0 "${!pid_var}" 2>/dev/null; then
      died="$name"
      break 2
    fi
  done
  row="$now,$(rss_kib "$engine_pid"),$(fds "$engine_pid"),$(rss_kib "$collector_pid"),$(fds "$collector_pid"),$(rss_kib "$prom_pid"),$(fds "$prom_pid"),$(trace_bytes),$(waiting)"
  echo "$row" >>"$out/soak.csv"
  IFS=, read -r t er ef cr cf pr pf tb wq <<<"$row"
  printf '%6s | %12s %6s | %12s %6s | %12s %6s | %10.1f | %7s\n' "$t" "$er" "$ef" "$cr" "$cf" "$pr" "$pf" "$(awk -v b="$tb" 'BEGIN {print b / 1048576}')" "$wq"
  sleep "$interval"
done

# [SECTION] Verdict -----------------------------------------------------------------
status=0
if [[ -n $died ]]; then
  echo "soak: FAIL: $died exited during the soak (see $out/$died*.log)"
  status=1
fi
# Stop the engine: SIGTERM ends request generation; it then finishes what it admitted.
# A backlog is not a leak, so after 30 s it is killed and only reported.
kill -TERM "$engine_pid" 2>/dev/null || true
for _ in $(seq 300); do kill -0 "$engine_pid" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$engine_pid" 2>/dev/null; then
  echo "soak: note: the engine was still draining its backlog 30 s after SIGTERM; killed"
  kill -KILL "$engine_pid" 2>/dev/null || true
  wait "$engine_pid" 2>/dev/null || true
elif ! wait "$engine_pid"; then
  echo "soak: FAIL: the engine exited with an error (see $out/engine.log)"
  status=1
fi
grep -E '^(requests|throughput|telemetry)' "$out/engine.out" || true

up=$(curl -s "http://127.0.0.1:$prom_port/api/v1/query?query=up%7Bjob%3D%22inferscope%22%7D" || true)
if ! grep -q '"value":\[[0-9.]*,"1"\]' <<<"$up"; then
  echo "soak: FAIL: Prometheus does not see the collector up: $up"
  status=1
fi
records=$(curl -s "http://$metrics/metrics" | awk '/^inferscope_collector_records_total/ {s += $2} END {print s + 0}')
echo "soak: the collector received $records records"

# Least-squares slope over the second half of the samples, projected to one hour.
verdict=$(awk -F, -v trace_max="$trace_max" '
  NR == 1 { for (i = 1; i <= NF; i++) col[i] = $i; next }
  { n++; for (i = 1; i <= NF; i++) v[n, i] = $i }
  END {
    if (n < 6) { print "FAIL too few samples (" n ")"; exit }
    h = int(n / 2) + 1
    # A growing admission queue means the machine cannot sustain the workload rate:
    # the engine then holds a bounded but growing backlog, which is not a leak.
    backlog = v[n, 9] > v[h, 9] + 8
    for (i = 2; i <= 7; i++) {
      sx = 0; sy = 0; sxx = 0; sxy = 0; m = 0
      for (k = h; k <= n; k++) { x = v[k, 1]; y = v[k, i]; sx += x; sy += y; sxx += x * x; sxy += x * y; m++ }
      d = m * sxx - sx * sx
      slope = 0
      if (d > 0) slope = (m * sxy - sx * sy) / d
      mean = sy / m
      per_hour = slope * 3600
      judged = 1
      note = ""
      unit = "fds"
      allowance = 10
      if (col[i] ~ /rss/) {
        unit = "KiB"
        allowance = 16384
        if (0.1 * mean > allowance) allowance = 0.1 * mean
        if (col[i] ~ /prometheus/) { judged = 0; note = " [not judged: the TSDB head grows until compaction]" }
        if (col[i] ~ /engine/ && backlog) { judged = 0; note = " [not judged: the engine backlog grew from " v[h, 9] " to " v[n, 9] " waiting requests]" }
      }
      tag = "ok  "
      if (!judged) tag = "info"
      if (judged && per_hour > allowance) tag = "FAIL"
      printf "%s %-20s mean %12.0f %s, slope over the second half %+10.2f %s/h (allowance %.0f)%s\n", tag, col[i], mean, unit, per_hour, unit, allowance, note
    }
    maxt = 0
    for (k = 1; k <= n; k++) if (v[k, 8] > maxt) maxt = v[k, 8]
    tag = "ok  "
    if (maxt > trace_max + 4 * 1048576) tag = "FAIL"
    printf "%s trace directory peak %d bytes (bound %d + one segment)\n", tag, maxt, trace_max
  }' "$out/soak.csv")
echo "$verdict"
grep -q '^FAIL' <<<"$verdict" && status=1
if ((status)); then echo "soak: FAILED"; else echo "soak: passed"; fi
exit $status

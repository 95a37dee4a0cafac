#!/usr/bin/env bash
# Flame graph of one service process while proxybus-bench runs a scenario.
#
#   scripts/profile-bench.sh <scenario> <child> <delay-s> <seconds> <out-prefix> [bench args…]
#   e.g. scripts/profile-bench.sh resolve-hit resolver 20 6 /tmp/hit --size full --rounds 3
#
# <child> is the kind of `proxybus-bench subject <child>` to attach to (resolver,
# bare-responder, aggregator, replay); perf starts <delay-s> after the bench and
# samples <seconds> (cpu-clock, which works in VMs without a PMU; FREQ Hz, default
# 999; DWARF call graphs, as release builds carry line tables). Writes
# <out-prefix>.data, .folded, .svg and the bench's table (.table) and log (.log).
# Needs perf (Debian linux-perf) and inferno (`cargo install inferno`).
set -euo pipefail
scenario=$1 kind=$2 delay=$3 secs=$4 out=$5
shift 5
root=$(cd "$(dirname "$0")/.." && pwd)
bench=${BENCH:-$root/target/release/proxybus-bench}
"$bench" "$scenario" "$@" >"$out.table" 2>"$out.log" &
bench_pid=$!
sleep "$delay"
pid=$(pgrep -f "^$bench subject $kind" | head -1 || true)
if [[ -z $pid ]]; then
  echo "no 'proxybus-bench subject $kind' running after ${delay}s" >&2
  wait "$bench_pid"
  exit 1
fi
# perf exits non-zero when the child ends before <seconds> are up (a short scenario): keep what it recorded.
perf record -e cpu-clock -F "${FREQ:-999}" --call-graph dwarf,16384 -p "$pid" -o "$out.data" -- sleep "$secs" >/dev/null 2>&1 || true
wait "$bench_pid"
perf script -i "$out.data" 2>/dev/null | inferno-collapse-perf >"$out.folded"
inferno-flamegraph --minwidth 0.5 --title "$kind during $scenario" <"$out.folded" >"$out.svg"
echo "$out.svg"

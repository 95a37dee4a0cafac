#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/ for N seconds each (default 600) and prints,
# per target, the runs executed, the corpus size and the crashes found, as a
# Markdown table for docs/reliability.md ("Fuzz runs"). Each run stops by itself
# (libFuzzer's -max_total_time, with `timeout` as a backstop); the script exits
# non-zero when any target crashed. Needs the nightly toolchain and cargo-fuzz
# (`cargo install cargo-fuzz`). Runs under `nice -n 19` so builds elsewhere keep the CPU.
#
#   scripts/fuzz.sh            # 600 s per target
#   scripts/fuzz.sh 60         # 60 s per target
#   FUZZ_TARGETS="proxy_url subjects" scripts/fuzz.sh 30
#   FUZZ_PARALLEL=1 scripts/fuzz.sh 600   # every target at once (each still runs 600 s)
set -euo pipefail

seconds="${1:-600}"
if ! [[ "$seconds" =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: $0 [seconds per target, default 600]" >&2
    exit 2
fi
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root/fuzz"
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz and the nightly toolchain are needed: rustup toolchain install nightly && cargo install cargo-fuzz" >&2
    exit 2
fi

targets="${FUZZ_TARGETS:-$(cargo +nightly fuzz list)}"
logs="$(mktemp -d)"
trap 'rm -rf "$logs"' EXIT

echo "building the fuzz targets..." >&2
nice -n 19 cargo +nightly fuzz build >&2

fuzz_one() {
    local target="$1"
    mkdir -p "corpus/$target" "artifacts/$target"
    find "artifacts/$target" -type f | wc -l >"$logs/$target.before"
    echo "fuzzing $target for ${seconds}s..." >&2
    local status=0
    timeout --kill-after=30 "$((seconds + 300))" \
        nice -n 19 cargo +nightly fuzz run "$target" -- \
        -max_total_time="$seconds" -timeout=10 -print_final_stats=1 \
        >"$logs/$target.log" 2>&1 || status=$?
    echo "$status" >"$logs/$target.status"
}

if [ "${FUZZ_PARALLEL:-0}" = 1 ]; then
    for target in $targets; do fuzz_one "$target" & done
    wait
else
    for target in $targets; do fuzz_one "$target"; done
fi

rows=()
failed=0
for target in $targets; do
    status="$(cat "$logs/$target.status")"
    before="$(cat "$logs/$target.before")"
    runs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$logs/$target.log" | grep -o '[0-9]*$' | tail -1)"
    corpus="$(find "corpus/$target" -type f | wc -l)"
    crashes="$(($(find "artifacts/$target" -type f | wc -l) - before))"
    if [ "$status" -ne 0 ] || [ "$crashes" -ne 0 ]; then
        failed=1
        echo "$target: exit status $status; last lines of its log:" >&2
        tail -30 "$logs/$target.log" >&2
        ls -t "artifacts/$target" | head -5 >&2 || true
    fi
    mode=""
    if [ "${FUZZ_PARALLEL:-0}" = 1 ]; then mode="FUZZ_PARALLEL=1 "; fi
    rows+=("| \`$target\` | ${seconds} s | ${runs:-?} | $corpus | $crashes | \`${mode}scripts/fuzz.sh $seconds\` (\`cargo +nightly fuzz run $target -- -max_total_time=$seconds\`) |")
done

echo
echo "| target | duration | executions | corpus | crashes | command |"
echo "| --- | --- | --- | --- | --- | --- |"
printf '%s\n' "${rows[@]}"
exit "$failed"

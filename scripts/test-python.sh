#!/usr/bin/env bash
# The Python client's checks (clients/python, distribution cryptofeed-proxybus): a Python 3.12
# virtual environment under the git-ignored .tools/, every package pinned by hash
# (clients/python/requirements-test.txt, made with `pip-compile --generate-hashes --extra test`),
# then ruff (lint and format), mypy (strict) and pytest against the real proxybus binaries and a
# real nats-server. scripts/test.sh runs it after the Rust tests, which have built the binaries.
#
#   PYTHON312=/path/to/python3.12 scripts/test-python.sh   # a given interpreter
#   scripts/test-python.sh -k feedback                      # arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
client=clients/python
venv=.tools/py312
lock=$client/requirements-test.txt

# Python 3.12: $PYTHON312, python3.12 on PATH, or pyenv's (the development machines have it there).
find_python() {
  local candidate
  for candidate in "${PYTHON312:-}" "$(command -v python3.12 || true)" \
    "$HOME"/.pyenv/versions/3.12*/bin/python /root/.pyenv/versions/3.12*/bin/python; do
    if [ -n "$candidate" ] && [ -x "$candidate" ] &&
      "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null; then
      echo "$candidate"; return
    fi
  done
  if command -v apt-get >/dev/null 2>&1 && apt-cache show python3.12 >/dev/null 2>&1; then
    apt-get install -y -qq python3.12 python3.12-venv >/dev/null && command -v python3.12 && return
  fi
}

want=$(cat "$lock" "$client/pyproject.toml" | sha256sum | cut -d' ' -f1)
stamp="$venv/.requirements.sha256"
if [ ! -x "$venv/bin/python" ] || [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  python=$(find_python)
  if [ -z "$python" ]; then
    echo "no Python 3.12 found: set PYTHON312 to a python3.12 interpreter" >&2
    exit 1
  fi
  echo "==> python: creating $venv with $python ($("$python" --version))"
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input --require-hashes -r "$lock"
  echo "$want" > "$stamp"
fi
# The package itself (its dependencies are in the lock): no build isolation, no downloads.
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
  --no-deps --no-build-isolation --editable "$client"

# The binaries the tests run, current (scripts/test.sh's cargo runs built them: then this is
# cheap). PROXYBUS_BIN_DIR names binaries built elsewhere instead.
if [ -z "${PROXYBUS_BIN_DIR:-}" ]; then
  echo "==> python: cargo build --bins (the tests run the real proxybus binaries)"
  cargo build --bins --quiet
fi
scripts/ensure-deps.sh run >/dev/null

cd "$client"
echo "==> python: ruff"
"$root/$venv/bin/ruff" check src tests
"$root/$venv/bin/ruff" format --check src tests
echo "==> python: mypy"
"$root/$venv/bin/mypy"
echo "==> python: pytest"
status=0
"$root/$venv/bin/python" -m pytest -q -p no:cacheprovider -rs "$@" || status=$?
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: that is a failure here" >&2
  exit 1
fi
exit "$status"

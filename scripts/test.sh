#!/usr/bin/env bash
# THE test command: install what is missing (scripts/setup.sh), then lint and run every
# test, the interop tests against real skopeo/podman/docker-registry included.
#
#   bash scripts/test.sh              # everything
#   bash scripts/test.sh -k harness   # extra arguments go to pytest
#
# Exits non-zero when setup, ruff or pytest fails (pytest runs even if ruff complains).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup.sh

VENV_BIN="$PWD/.venv/bin"
export PATH="$VENV_BIN:$PATH:/usr/local/sbin:/usr/sbin:/sbin"
export PYTHONDONTWRITEBYTECODE=1
# Missing skopeo/podman/registry is a failure here, not a skip (see tests/peers.py).
export CHUNKED_REQUIRE_PEERS=1

lint_paths=()
for p in chunked fuse tests benchmarks; do
    if [ -e "$p" ]; then lint_paths+=("$p"); fi
done
echo "test: ruff check ${lint_paths[*]}"
ruff_rc=0
"$VENV_BIN/ruff" check --no-cache "${lint_paths[@]}" || ruff_rc=$?

echo "test: pytest -q $*"
pytest_rc=0
"$VENV_BIN/python" -m pytest -q "$@" || pytest_rc=$?
if [ "$pytest_rc" -eq 5 ]; then
    # pytest's "no tests collected" is not a failure of the code under test.
    echo "test: pytest collected no tests" >&2
    pytest_rc=0
fi

if [ "$ruff_rc" -ne 0 ]; then
    echo "test: FAILED: ruff check (exit $ruff_rc)" >&2
fi
if [ "$pytest_rc" -ne 0 ]; then
    echo "test: FAILED: pytest (exit $pytest_rc)" >&2
fi
if [ "$ruff_rc" -ne 0 ] || [ "$pytest_rc" -ne 0 ]; then
    exit 1
fi
# Nothing printed after pytest's summary: CI reads it as the closing line.

#!/usr/bin/env bash
# THE test command: install what is missing (scripts/setup.sh), then lint and run every
# test, the interop tests against real skopeo/podman/docker-registry included.
#
#   bash scripts/test.sh              # everything
#   bash scripts/test.sh -k harness   # extra arguments go to pytest
#
# Exits non-zero when setup, ruff, mypy or pytest fails (each runs whatever the others say).
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

echo "test: mypy (strict on the public API: chunked/__init__.py, chunked/api/)"
mypy_rc=0
"$VENV_BIN/mypy" --no-incremental --cache-dir=/dev/null || mypy_rc=$?

echo "test: pytest -q $*"
pytest_rc=0
"$VENV_BIN/python" -m pytest -q "$@" || pytest_rc=$?
if [ "$pytest_rc" -eq 5 ]; then
    # "no tests collected": a selection that matched nothing proves nothing
    echo "test: pytest collected no tests" >&2
fi

# The same tests over the Python twins of the C kernels (what an install without a
# compiler runs): the unit tests of the format, the reader, the API and the CLI on local
# files. The interop tests stay on the C paths only: over real images the Python rolling
# checksum is about 1000x slower.
pure_rc=0
if [ "$#" -eq 0 ]; then
    PURE_TESTS=(tests/test_api.py tests/test_conformance.py tests/test_vectors.py
        tests/test_tocindex.py tests/test_consistency.py tests/test_builder_paths.py
        tests/test_format_encode.py tests/test_treehash.py tests/test_cli.py
        tests/test_image.py tests/test_hostile.py tests/test_pull_local.py
        tests/test_layer_protocol.py tests/test_chunking.py tests/test_format_wire.py
        tests/test_layer_read.py tests/test_destination.py tests/test_pull_verify.py)
    echo "test: CHUNKED_PURE_PYTHON=1 pytest -q ${PURE_TESTS[*]}"
    CHUNKED_PURE_PYTHON=1 "$VENV_BIN/python" -m pytest -q "${PURE_TESTS[@]}" || pure_rc=$?
fi

if [ "$ruff_rc" -ne 0 ]; then
    echo "test: FAILED: ruff check (exit $ruff_rc)" >&2
fi
if [ "$mypy_rc" -ne 0 ]; then
    echo "test: FAILED: mypy (exit $mypy_rc)" >&2
fi
if [ "$pytest_rc" -ne 0 ]; then
    echo "test: FAILED: pytest (exit $pytest_rc)" >&2
fi
if [ "$pure_rc" -ne 0 ]; then
    echo "test: FAILED: pytest on the Python paths (exit $pure_rc)" >&2
fi
if [ "$ruff_rc" -ne 0 ] || [ "$mypy_rc" -ne 0 ] || [ "$pytest_rc" -ne 0 ] \
    || [ "$pure_rc" -ne 0 ]; then
    exit 1
fi
# Nothing printed after pytest's summary: CI reads it as the closing line.

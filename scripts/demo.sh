#!/usr/bin/env bash
# The README's first quickstart command: set up, then run the main job end to end on
# the bundled fixtures (build, verify, push, partial pull by podman).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
exec .venv/bin/python scripts/demo.py

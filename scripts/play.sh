#!/usr/bin/env bash
# Installs everything (scripts/setup.sh: .venv), then starts the game on
# http://127.0.0.1:${PORT:-8000} with the embedded Redis (data in ./instance),
# using the venv's Python. Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
CAPTIONARY_SKIP_BROWSER=1 ./scripts/setup.sh
exec .venv/bin/python -m flask --app game play --port "${PORT:-8000}"

#!/usr/bin/env bash
# Installs everything, then starts the game on http://127.0.0.1:${PORT:-8000}
# with the embedded Redis (data in ./instance). Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
CAPTIONARY_SKIP_BROWSER=1 ./scripts/setup.sh
exec "${PYTHON:-python3}" -m flask --app game play --port "${PORT:-8000}"

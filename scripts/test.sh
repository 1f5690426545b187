#!/usr/bin/env bash
# Installs everything, then runs the whole test suite (CPU, real Redis, real Chromium).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec "${PYTHON:-python3}" -m pytest "$@"

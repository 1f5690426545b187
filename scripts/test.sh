#!/usr/bin/env bash
# Installs everything (scripts/setup.sh: .venv, Chromium), then runs the whole
# test suite (CPU, real Redis, real Chromium) with the venv's Python; the venv
# need not be activated.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/python -m pytest "$@"

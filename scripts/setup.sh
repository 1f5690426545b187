#!/usr/bin/env bash
# Installs everything Captionary needs on a fresh Debian/Python 3.11 machine:
# a virtual environment in ./.venv with the pinned Python packages
# (requirements.txt) and the project itself (editable), and Chromium for the
# browser tests. Never installs into a system Python: Debian 12's python3 is
# "externally managed" (PEP 668) and refuses pip installs outside a venv.
#
# PYTHON chooses the interpreter the venv is made from (default python3); an
# existing .venv is kept unless PYTHON names a different interpreter.
# Idempotent and fast the second time: pip runs only when requirements.txt or
# pyproject.toml changed since the last successful install (a stamp in .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv
STAMP="$VENV/.captionary-installed"

# Runs a command as root: directly when we are root, through sudo otherwise.
as_root() {
    if [ "$(id -u)" = "0" ]; then "$@"; else sudo "$@"; fi
}

# The interpreter's real path, to tell whether .venv was made from it.
real_python() {
    "$1" -c 'import os, sys; print(os.path.realpath(sys.executable))'
}

venv_ok() {
    [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import pip' >/dev/null 2>&1
}

if venv_ok && [ -n "${PYTHON:-}" ] \
        && [ "$(real_python "$PYTHON")" != "$(real_python "$VENV/bin/python")" ]; then
    echo "setup: .venv was made from $(real_python "$VENV/bin/python"); remaking it from $PYTHON" >&2
    rm -rf "$VENV"
fi

if ! venv_ok; then
    PY="${PYTHON:-python3}"
    # Debian splits venv's pip bootstrap (ensurepip) into python3.X-venv, which a
    # stock install lacks; without it `-m venv` fails half-way.
    if ! "$PY" -c 'import venv, ensurepip' >/dev/null 2>&1; then
        pkg=$("$PY" -c 'import sys; print("python%d.%d-venv" % sys.version_info[:2])')
        if ! command -v apt-get >/dev/null 2>&1; then
            echo "setup: $PY has no venv/ensurepip and there is no apt-get to install $pkg" >&2
            exit 1
        fi
        echo "setup: installing Debian's $pkg (venv and ensurepip for $PY)" >&2
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg" >/dev/null
    fi
    rm -rf "$VENV"  # a half-made venv (ensurepip failed) would fool the next run
    "$PY" -m venv "$VENV"
fi

# pip inside the venv reads the same configuration as any other pip on this
# machine (PIP_* variables, /etc/pip.conf, /etc/xdg/pip, ~/.config/pip): the
# local wheel indexes and the torch cap apply unchanged.
want=$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
    rm -f "$STAMP"
    echo "setup: installing the pinned packages into $VENV (the first time: several minutes, torch is large)" >&2
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r requirements.txt
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -e .
    echo "$want" > "$STAMP"
fi

if [ "${CAPTIONARY_SKIP_BROWSER:-0}" != "1" ] && ! command -v chromium >/dev/null 2>&1; then
    as_root apt-get update -qq && as_root apt-get install -y -qq chromium >/dev/null
fi

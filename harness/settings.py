"""The one copy of the settings tests and benchmarks run the game with.

`SETTINGS` are config keys as `create_app(test_config)` takes them; the
in-process tests pass them (plus their own TESTING tweaks, tests/helpers/web.py)
and the real processes get the same values as CAPTIONARY_* variables
(`environment`), so a test client and a gunicorn under test agree on the model,
the secret and the lifted per-address caps.
"""
from __future__ import annotations

import json

MODEL_ID = "test-tiny/random"

SETTINGS = {
    # The tiny random CLIP: fast on a CPU; scores mean nothing, which no test relies on.
    "CLIP_MODEL": "test-tiny",
    "CLIP_PRETRAINED": "random",
    # One fixed key: a cookie minted by one web process works on every other (faults, deploys).
    "SECRET_KEY": "test-secret-key-not-for-production",
    "IMPORT_STARTER_PHOTOS": False,
    # Every test and benchmark client connects from 127.0.0.1 and many mint players: the
    # per-address caps (game/web/connlimits.py) are lifted; tests of those caps set them.
    "WS_PER_ADDRESS": 0,
    "NEW_PLAYER_RATE": 1000.0,
    "NEW_PLAYER_BURST": 100000,
}


def env_value(value) -> str:
    """A setting as Flask's from_prefixed_env reads it back: JSON for numbers and booleans, text as is."""
    return value if isinstance(value, str) else json.dumps(value)


def environment(**overrides) -> dict[str, str]:
    """SETTINGS with `overrides` (config keys) as CAPTIONARY_* variables, for a server process."""
    return {f"CAPTIONARY_{key}": env_value(value) for key, value in dict(SETTINGS, **overrides).items()}

"""Configuration: defaults, environment (CAPTIONARY_*, REDIS_URL), validation.

`load()` applies, in order: `DEFAULTS`, Flask's `from_prefixed_env("CAPTIONARY")`
(so `CAPTIONARY_X=...` becomes `config["X"]`, JSON-decoded when it parses),
`REDIS_URL`, then the test overrides; `finish()` then coerces types and checks
what production requires; `create_app` and the worker (`from_environment`)
both read their settings that way. Values that are not obviously right fail here, at
start-up, with a message naming the setting, instead of later as an HTTP 500.
"""
from __future__ import annotations

import os
import re
import secrets

DEV_SECRET_PLACEHOLDER = "dev-not-secret"
# The admin token is the only thing between the internet and the admin pages: long enough
# that guessing it (even past the login rate limit) is hopeless.
ADMIN_TOKEN_MIN_CHARS = 32
# Redis' own memory units (redis.conf): a number of bytes, or with k/kb/m/mb/g/gb.
_MEMORY = re.compile(r"^([0-9]+)\s*(b|k|kb|m|mb|g|gb)?$", re.IGNORECASE)

DEFAULTS: dict = {
    "ENV": "development",  # development | production
    "SECRET_KEY": None,  # production: required; development: a random per-instance key is stored in instance/
    "REDIS_URL": None,  # None -> embedded redis-server with data in the instance folder
    "CLIP_MODEL": "ViT-B-32",
    "CLIP_PRETRAINED": "openai",  # a tag, a checkpoint file, or "random" (explicit, never real scores)
    "VQGAN_MODEL": "vqgan_imagenet_f16_16384",
    "MODELS_DIR": None,
    "DEVICE": None,  # None -> cuda if available else cpu
    "PUZZLES_PER_DAY": 3,
    "MAX_SUBMISSIONS": 10,  # per player per puzzle per day
    "MAX_CAPTION_CHARS": 200,
    "ADMIN_TOKEN": None,  # unset: /admin is off (404); set: at least ADMIN_TOKEN_MIN_CHARS characters
    "ADMIN_LOGIN_FAILURES": 5,  # failed admin logins per client address per minute before 429
    "METRICS_TOKEN": None,  # bearer token for /metrics; production without one: /metrics answers 404
    "REDIS_MAXMEMORY": "1gb",  # embedded Redis only: maxmemory (noeviction); full -> "storage full" errors
    # Web-only settings (introduced by the web layer):
    "DEMO_FALLBACK": True,  # development only: unavailable weights -> demo mode on test-tiny
    "MAX_FRAME_BYTES": 4096,  # websocket frames above this get a "too_big" error (socket stays open)
    "DRAFT_RATE": 12.0,  # drafts per second per player refilled into the token bucket
    "DRAFT_BURST": 30,  # token-bucket size: a fast typist's burst is fine, a flood is not
    "SUBMIT_RATE": 2.0,
    "SUBMIT_BURST": 10,
    "ALLOWED_ORIGINS": "",  # extra websocket and POST origins besides the page's own host, comma-separated
    # One client cannot spoil it for others (game/web/connlimits.py):
    "TRUSTED_PROXIES": 0,  # proxy hops whose X-Forwarded-For/-Proto are trusted (ProxyFix); 0 = none
    "WS_PER_PLAYER": 8,  # open websockets per player, across all web processes; 0 = no cap
    "WS_PER_ADDRESS": 32,  # open websockets per client address; 0 = no cap
    "NEW_PLAYER_RATE": 1.0,  # new anonymous players (cookies minted) per second per address...
    "NEW_PLAYER_BURST": 60.0,  # ...and the bucket size
    "WS_OUTBOX": 64,  # messages queued per socket; a client letting it fill is closed
    "WS_SEND_TIMEOUT_S": 10.0,  # a socket write blocked this long closes that socket
    "FRAME_RATE": 60.0,  # websocket frames per second per connection (the flood guard, FrameBudget)...
    "FRAME_BURST": 120.0,  # ...and its bucket size
    "COOKIE_SECURE": True,  # production: the session cookies are Secure (false only for plain-HTTP deployments)
    # Operations (game/web/ops.py):
    "LOG_FORMAT": "text",  # text | json
    "READY_REQUIRES_WORKERS": False,  # /readyz also needs a live generation worker
    "GRACEFUL_SIGTERM": "auto",  # auto (inside gunicorn only) | true | false: drain sockets on SIGTERM
    "IMPORT_STARTER_PHOTOS": True,  # import assets/photos on first start (idempotent)
    # Play with friends (game/rooms.py): seats per room, then watchers; a full room refuses joins.
    "ROOM_MAX_PLAYERS": 24,
    "ROOM_MAX_SPECTATORS": 24,
    "ROOM_BAR_WINDOW_MS": 100,  # live bars: at most one message per room per window (10/s)
    "SCORER_BATCH_WINDOW_MS": 2.0,
    "TORCH_THREADS": None,  # None -> the scorer's default (cores - 1)
    "GIL_SWITCH_MS": 1.0,  # how long a Python thread may keep the GIL while another waits (Python's own: 5)
    "GC_FREEZE": "auto",  # auto (inside gunicorn only) | true | false: full collections skip start-up objects
    "SCORER_PRECISION": "fp32",  # fp32 (exact) | bf16 (opt-in, faster on GPUs, measured error in bench/scoring.py)
    # Flask's own settings, here so CAPTIONARY_SESSION_COOKIE_SECURE=true etc. can override them.
    "SESSION_COOKIE_NAME": "captionary",
    "SESSION_COOKIE_HTTPONLY": True,
    "SESSION_COOKIE_SAMESITE": "Lax",  # cross-site POSTs carry no cookie: no CSRF on the nickname form
    "SESSION_COOKIE_SECURE": False,  # set true behind HTTPS
    "PERMANENT_SESSION_LIFETIME": 400 * 86400,  # seconds: an anonymous player lasts as long as browsers allow
    "MAX_CONTENT_LENGTH": 64 * 1024,  # HTTP bodies: JSON actions and the nickname form only
}

# The checks finish() applies, by kind: every setting is declared in DEFAULTS above and
# checked here, once, so modules read app.config[KEY] without defaults or parsing of their own.
_INT_KEYS = ("PUZZLES_PER_DAY", "MAX_SUBMISSIONS", "MAX_CAPTION_CHARS", "MAX_FRAME_BYTES",
             "DRAFT_BURST", "SUBMIT_BURST", "ADMIN_LOGIN_FAILURES", "WS_OUTBOX", "ROOM_MAX_PLAYERS",
             "ROOM_MAX_SPECTATORS", "ROOM_BAR_WINDOW_MS")  # whole numbers > 0
_COUNT_KEYS = ("TRUSTED_PROXIES", "WS_PER_PLAYER", "WS_PER_ADDRESS")  # whole numbers >= 0 (0: none / no cap)
_FLOAT_KEYS = ("DRAFT_RATE", "SUBMIT_RATE", "SCORER_BATCH_WINDOW_MS")
_POSITIVE_FLOAT_KEYS = ("FRAME_RATE", "FRAME_BURST", "NEW_PLAYER_RATE", "NEW_PLAYER_BURST", "WS_SEND_TIMEOUT_S",
                        "GIL_SWITCH_MS")
_BOOL_KEYS = ("DEMO_FALLBACK", "IMPORT_STARTER_PHOTOS", "SESSION_COOKIE_SECURE", "SESSION_COOKIE_HTTPONLY",
              "COOKIE_SECURE", "READY_REQUIRES_WORKERS")
_CHOICE_KEYS = {"LOG_FORMAT": ("text", "json"), "GRACEFUL_SIGTERM": ("auto", "true", "false"),
                "GC_FREEZE": ("auto", "true", "false"),
                "SCORER_PRECISION": ("fp32", "bf16")}


def _startup_error_bases() -> tuple:
    """Exception types the programs that start us print as one line instead of a traceback.

    `flask --app game ...` shows a NoAppException as "Error: <message>"; gunicorn
    prints an AppImportError's message and stops ("App failed to load") instead of
    logging a traceback and retrying the worker. A ConfigError is both, so a bad
    setting reads as one line naming it, whichever way the app was started.
    """
    bases: list = [RuntimeError]
    from flask.cli import NoAppException
    bases.append(NoAppException)
    try:
        from gunicorn.errors import AppImportError
    except ImportError:  # gunicorn is optional (`play --server werkzeug`)
        pass
    else:
        bases.append(AppImportError)
    return tuple(bases)


class ConfigError(*_startup_error_bases()):
    """The configuration cannot run; the message says which setting and what to do."""

    def __init__(self, message: str):
        # RuntimeError's __init__ comes first in the MRO and skips click's: set what click reads.
        super().__init__(message)
        self.message = message
        self.ctx = None

    def format_message(self) -> str:
        return self.message

    def __str__(self) -> str:
        return self.message


def _as_bool(value) -> bool:
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def finish(config: dict, instance_path: str) -> None:
    """Coerce types, fill derived values, refuse what production cannot run with."""
    env = str(config.get("ENV") or "development").lower()
    if env not in ("development", "production"):
        raise ConfigError(f"CAPTIONARY_ENV must be 'development' or 'production', not {env!r}")
    config["ENV"] = env
    for key in _INT_KEYS:
        try:
            config[key] = int(config[key])
        except (TypeError, ValueError):
            raise ConfigError(f"CAPTIONARY_{key} must be a whole number, not {config[key]!r}") from None
        if config[key] <= 0:
            raise ConfigError(f"CAPTIONARY_{key} must be positive, not {config[key]!r}")
    for key in _COUNT_KEYS:
        value = config[key]
        if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).strip().isdigit():
            raise ConfigError(f"CAPTIONARY_{key} must be a whole number (0 or more), not {value!r}")
        config[key] = int(value)
    for key in _FLOAT_KEYS + _POSITIVE_FLOAT_KEYS:
        try:
            config[key] = float(config[key])
        except (TypeError, ValueError):
            raise ConfigError(f"CAPTIONARY_{key} must be a number, not {config[key]!r}") from None
        if key in _POSITIVE_FLOAT_KEYS and not config[key] > 0:
            raise ConfigError(f"CAPTIONARY_{key} must be positive, not {config[key]!r}")
    for key in _BOOL_KEYS:
        config[key] = _as_bool(config[key])
    for key, choices in _CHOICE_KEYS.items():
        value = config[key]
        value = {True: "true", False: "false"}.get(value, str(value).strip().lower())  # env JSON-decodes true
        value = {"1": "true", "yes": "true", "on": "true", "0": "false", "no": "false", "off": "false"}.get(value, value)
        if value not in choices:
            raise ConfigError(f"CAPTIONARY_{key} must be one of {', '.join(choices)}, not {config[key]!r}")
        config[key] = value
    config["CLIP_PRETRAINED"] = str(config.get("CLIP_PRETRAINED") or "")
    config["CLIP_MODEL"] = str(config.get("CLIP_MODEL") or "ViT-B-32")
    if config["CLIP_MODEL"] == "test-tiny" and config["CLIP_PRETRAINED"] in ("", "openai"):
        # test-tiny exists only with random weights: asking for it alone means random (the demo
        # banner and "not real" labels follow), not a refusal over the default "openai" tag.
        config["CLIP_PRETRAINED"] = "random"

    _check_tokens(config)
    config["REDIS_MAXMEMORY"] = _memory(config.get("REDIS_MAXMEMORY"))

    secret = config.get("SECRET_KEY")
    if secret is not None and not isinstance(secret, (str, bytes)):
        secret = config["SECRET_KEY"] = str(secret)  # from_prefixed_env JSON-decodes an all-digit key
    if env == "production":
        if not secret or secret == DEV_SECRET_PLACEHOLDER or len(str(secret)) < 16:
            raise ConfigError(
                "production needs a real secret: set CAPTIONARY_SECRET_KEY to a random string of at "
                "least 16 characters, e.g. `python -c 'import secrets; print(secrets.token_hex(32))'`")
        if config["CLIP_PRETRAINED"] in ("", "random") or config["CLIP_MODEL"] == "test-tiny":
            raise ConfigError(
                f"production needs pretrained CLIP weights, but CAPTIONARY_CLIP_MODEL="
                f"{config['CLIP_MODEL']!r} CAPTIONARY_CLIP_PRETRAINED={config['CLIP_PRETRAINED']!r} "
                "means random weights whose scores are meaningless")
        config["SESSION_COOKIE_SECURE"] = config["COOKIE_SECURE"]
    elif not secret:
        config["SECRET_KEY"] = _instance_secret(instance_path)


def _check_tokens(config: dict) -> None:
    """ADMIN_TOKEN / METRICS_TOKEN: unset or a string; the admin token long enough to be unguessable."""
    for key in ("ADMIN_TOKEN", "METRICS_TOKEN"):
        value = config.get(key)
        if value is None or value == "":
            config[key] = None
            continue
        # from_prefixed_env JSON-decodes an all-digit token into a number: keep it as the text given.
        config[key] = value = str(value).strip()
        if not value:
            raise ConfigError(f"CAPTIONARY_{key} is blank; unset it or give a real token")
    token = config["ADMIN_TOKEN"]
    if token is not None and len(token) < ADMIN_TOKEN_MIN_CHARS:
        raise ConfigError(
            f"CAPTIONARY_ADMIN_TOKEN is {len(token)} characters; it must be at least {ADMIN_TOKEN_MIN_CHARS} "
            "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`), or unset it to turn /admin off")


def _memory(value) -> str:
    """CAPTIONARY_REDIS_MAXMEMORY as Redis writes it ("1gb", "512mb", bytes); checked here, not by redis-server."""
    match = _MEMORY.match(str(value if value is not None else "").strip())
    if not match or int(match.group(1)) <= 0:
        raise ConfigError(f"CAPTIONARY_REDIS_MAXMEMORY must be a positive size such as 1gb, 512mb or a number of "
                          f"bytes, not {value!r}")
    return f"{int(match.group(1))}{(match.group(2) or '').lower()}"


def _instance_secret(instance_path: str) -> str:
    """A random development key kept in the instance folder.

    Stored (not regenerated per process) so every gunicorn worker and restart
    accepts the same session cookies; random so a checkout never ships a key.
    """
    os.makedirs(instance_path, exist_ok=True)
    path = os.path.join(instance_path, "dev-secret-key")
    try:
        with open(path, encoding="utf-8") as fh:
            key = fh.read().strip()
        if key:
            return key
    except FileNotFoundError:
        pass
    key = secrets.token_hex(32)
    # Written to a private temp file, then hard-linked into place: link() fails if
    # another process won the race, and nobody ever reads a half-written key.
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(key)
    try:
        os.link(tmp, path)
    except FileExistsError:
        with open(path, encoding="utf-8") as fh:
            key = fh.read().strip()
    finally:
        os.unlink(tmp)
    return key


# -- loading: the app factory and the processes without an app ----------------

def load(instance_path: str, test_config: dict | None = None) -> dict:
    """The finished settings: DEFAULTS, then CAPTIONARY_* and REDIS_URL from the environment, then test_config."""
    # Flask's own Config parses the environment, so the worker reads CAPTIONARY_* exactly as the app does.
    from flask import Config
    config = Config(instance_path)
    config.from_mapping(DEFAULTS)
    config.from_prefixed_env("CAPTIONARY")
    if os.environ.get("REDIS_URL"):
        config["REDIS_URL"] = os.environ["REDIS_URL"]
    if test_config:
        config.from_mapping(test_config)
    finish(config, instance_path)
    return dict(config)


def requested_instance_path(test_config: dict | None = None) -> str | None:
    """The instance folder asked for: INSTANCE_PATH (tests), else CAPTIONARY_INSTANCE_PATH; None: the default."""
    # Moving it (tests, several installations on one machine) moves the embedded Redis and the development secret.
    instance = (test_config or {}).get("INSTANCE_PATH") or os.environ.get("CAPTIONARY_INSTANCE_PATH")
    return os.path.abspath(instance) if instance else None


def default_instance_path() -> str:
    """The folder `Flask("game", instance_relative_config=True)` picks: ./instance in a checkout."""
    from flask.sansio.scaffold import find_package
    prefix, package_path = find_package("game")
    if prefix is None:  # not installed: next to the package
        return os.path.join(package_path, "instance")
    return os.path.join(prefix, "var", "game-instance")


def from_environment(test_config: dict | None = None) -> tuple[dict, str]:
    """(settings, instance folder) as create_app would make them, for processes without the app (the worker)."""
    instance = requested_instance_path(test_config) or default_instance_path()
    return load(instance, test_config), instance


def configure_logging() -> None:
    """Our own loggers at INFO (demo-mode warnings, imports); third-party chatter at WARNING."""
    import logging
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("captionary", "game", "engine"):
        logging.getLogger(name).setLevel(logging.INFO)



# -- generation settings -----------------------------------------------------
# Read by the worker, `flask targets` and the admin pages, not by the web app,
# so they are checked where they are used (an AdminError naming the setting),
# not at start-up by finish(). Env `CAPTIONARY_X` -> config `X`:
#   GAN_MIN_SCORE      self-score a worker-generated target must reach (0.40)
#   POOL_TARGET        fresh (never shown) ready GAN targets the worker keeps for the coming days (K, 6)
#   JOB_MAX_ATTEMPTS   deliveries before a job is parked as failed (3)
#   JOB_VISIBILITY_S   seconds before a silent worker's job is taken over (300)
#   GEN_SIZE, GEN_ITERATIONS, GEN_SEEDS, GEN_KEEP, GEN_CUTN   generation defaults (256, 300, 4, 1, 32)
#   WORKER_IDLE_S      how long an idle worker blocks on the queue between pool checks (5)

GENERATION_DEFAULTS: dict = {
    "GAN_MIN_SCORE": 0.40,
    "POOL_TARGET": 6,
    "JOB_MAX_ATTEMPTS": 3,
    "JOB_VISIBILITY_S": 300.0,
    "GEN_SIZE": 256,
    "GEN_ITERATIONS": 300,
    "GEN_SEEDS": 4,
    "GEN_KEEP": 1,
    "GEN_CUTN": 32,
    "WORKER_IDLE_S": 5.0,
}
_SETTING_TYPES = {"GAN_MIN_SCORE": float, "JOB_VISIBILITY_S": float, "WORKER_IDLE_S": float}


def generation_settings(config: dict) -> dict:
    """The generation settings of a config (`GENERATION_DEFAULTS` filled in), typed and checked."""
    from game.errors import AdminError
    out = {}
    for key, default in GENERATION_DEFAULTS.items():
        raw = config.get(key, default)
        kind = _SETTING_TYPES.get(key, int)
        try:
            value = kind(raw)
        except (TypeError, ValueError):
            raise AdminError(f"CAPTIONARY_{key} must be a number, not {raw!r}") from None
        if key != "GAN_MIN_SCORE" and value <= 0:
            raise AdminError(f"CAPTIONARY_{key} must be positive, not {raw!r}")
        out[key] = value
    return out

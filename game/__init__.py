"""Captionary's Flask application factory: `create_app(test_config=None)`.

Configuration order: `game.config.DEFAULTS`, then the environment
(`CAPTIONARY_*` via `from_prefixed_env`, plus `REDIS_URL`), then
`test_config`. Shared clients are built once here and read through
`current_app.extensions`: "redis", "store", "scorer", "judge", "game",
"board_hub". Every module registers itself (blueprint or `init_app`), and
modules are imported inside the factory so importing `game` stays cheap and
free of cycles.
"""
from __future__ import annotations

import importlib.util
import logging
import os

from flask import Flask


def create_app(test_config: dict | None = None) -> Flask:
    from game import config as cfg

    # INSTANCE_PATH (tests, several installations on one machine) moves the instance folder,
    # and with it the embedded Redis and the development secret.
    instance = (test_config or {}).get("INSTANCE_PATH") or os.environ.get("CAPTIONARY_INSTANCE_PATH")
    # Pages and their files belong to the web package; URLs stay /static/... as before.
    app = Flask(__name__, instance_relative_config=True, instance_path=instance and os.path.abspath(instance),
                template_folder="web/templates", static_folder="web/static")
    app.config.from_mapping(cfg.DEFAULTS)
    app.config.from_prefixed_env("CAPTIONARY")
    if os.environ.get("REDIS_URL"):
        app.config["REDIS_URL"] = os.environ["REDIS_URL"]
    if test_config:
        app.config.from_mapping(test_config)
    cfg.finish(app.config, app.instance_path)
    os.makedirs(app.instance_path, exist_ok=True)
    _logging(app)

    from game.judge import load_judge
    from game.service import Game
    from game.store import Store
    from game.store import server as redis_server

    judge = load_judge(app.config)
    app.config["DEMO_MODE"] = judge.demo_mode
    app.config["DEMO_REASON"] = judge.demo_reason
    app.config["MODEL_ID"] = judge.model_id

    embedded = not app.config.get("REDIS_URL")
    was_running = embedded and redis_server.is_running(app.instance_path)
    client = redis_server.connect(app.instance_path, app.config.get("REDIS_URL"))
    app.extensions["redis_started_here"] = embedded and not was_running
    # CLOCK (tests only): a callable returning unix seconds, so tests can pin the puzzle day.
    store = Store(client, judge.model_id, puzzles_per_day=app.config["PUZZLES_PER_DAY"],
                  max_submissions=app.config["MAX_SUBMISSIONS"],
                  max_caption_chars=app.config["MAX_CAPTION_CHARS"], clock=app.config.get("CLOCK"))
    game = Game(store, judge.scorer, max_caption_chars=app.config["MAX_CAPTION_CHARS"],
                draft_rate=(app.config["DRAFT_RATE"], app.config["DRAFT_BURST"]),
                submit_rate=(app.config["SUBMIT_RATE"], app.config["SUBMIT_BURST"]))
    app.extensions.update(redis=client, store=store, scorer=judge.scorer, judge=judge, game=game)

    if app.config["IMPORT_STARTER_PHOTOS"]:
        _import_starter_photos(app, store, judge.scorer)

    from game.cli import play
    from game.web import api, pages, ws
    pages.init_app(app)
    api.init_app(app)
    ws.init_app(app)
    play.init_app(app)
    from game.web import ops, security  # hardening: /healthz /readyz /metrics, JSON logs, SIGTERM drain; headers
    ops.init_app(app)
    security.init_app(app)
    from game import cli
    from game.web import admin
    cli.init_app(app)
    admin.init_app(app)  # the read-only admin pages (registered by the CLI before the web package existed)
    return app


def _import_starter_photos(app, store, scorer) -> None:
    """First start: the shipped photos become targets, so a fresh install is playable."""
    if importlib.util.find_spec("game.photos") is None:
        return
    from game import photos
    try:
        added = photos.import_starter_photos(store, scorer)
    except Exception:  # never keep the site down over the starter set; the log says why
        app.logger.exception("could not import the starter photos")
        return
    if added:
        app.logger.info("imported %d starter photos as targets for %s", len(added), store.model_id)


def _logging(app) -> None:
    """Our own loggers at INFO (demo-mode warnings, imports); third-party chatter at WARNING."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("captionary", "game", "engine"):
        logging.getLogger(name).setLevel(logging.INFO)

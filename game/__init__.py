"""Captionary's Flask application factory: `create_app(test_config=None)`.

Configuration order (`game.config.load`): `game.config.DEFAULTS`, then the
environment (`CAPTIONARY_*` via `from_prefixed_env`, plus `REDIS_URL`), then
`test_config`. The factory is the top of the package: it wires the domain
(game.judge), the store (game.store), the game service (game.service), the
web blueprints (game.web) and the commands (game.cli); nothing imports it
but gunicorn, `flask --app game` and the tests. Shared clients are built once here and read through
`current_app.extensions`: "redis", "store", "scorer", "judge", "game",
"board_hub", "rooms", "room_hub", "explainer". Every module registers itself (blueprint or `init_app`), and
modules are imported inside the factory so importing `game` stays cheap and
free of cycles.
"""
from __future__ import annotations

import os
import sys

from flask import Flask


def create_app(test_config: dict | None = None) -> Flask:
    from game import config as cfg

    # Pages and their files belong to the web package; URLs stay /static/... as before.
    app = Flask(__name__, instance_relative_config=True, instance_path=cfg.requested_instance_path(test_config),
                template_folder="web/templates", static_folder="web/static")
    app.config.update(cfg.load(app.instance_path, test_config))
    os.makedirs(app.instance_path, exist_ok=True)
    cfg.configure_logging()

    from game.judge import load_judge
    from game.service import Game
    from game.store import Store
    from game.store import server as redis_server

    judge = load_judge(app.config)
    # The judge's batching thread dispatches a few hundred torch ops per batch, each needing the
    # GIL; behind a busy request thread it waits up to the switch interval for every one of them.
    sys.setswitchinterval(app.config["GIL_SWITCH_MS"] / 1000)
    app.config["DEMO_MODE"] = judge.demo_mode
    app.config["DEMO_REASON"] = judge.demo_reason
    app.config["MODEL_ID"] = judge.model_id

    embedded = not app.config.get("REDIS_URL")
    was_running = embedded and redis_server.is_running(app.instance_path)
    client = redis_server.connect(app.instance_path, app.config.get("REDIS_URL"),
                                  maxmemory=app.config["REDIS_MAXMEMORY"])
    app.extensions["redis_started_here"] = embedded and not was_running
    store = Store.from_config(client, judge.model_id, app.config)
    game = Game(store, judge.scorer, max_caption_chars=app.config["MAX_CAPTION_CHARS"],
                draft_rate=(app.config["DRAFT_RATE"], app.config["DRAFT_BURST"]),
                submit_rate=(app.config["SUBMIT_RATE"], app.config["SUBMIT_BURST"]))
    from game.rooms import Rooms
    from game.store.rooms import RoomLimits
    rooms = Rooms(game, RoomLimits(max_players=app.config["ROOM_MAX_PLAYERS"],
                                   max_spectators=app.config["ROOM_MAX_SPECTATORS"],
                                   bar_window_ms=app.config["ROOM_BAR_WINDOW_MS"]))
    app.extensions.update(redis=client, store=store, scorer=judge.scorer, judge=judge, game=game, rooms=rooms)

    if app.config["IMPORT_STARTER_PHOTOS"]:
        from game import photos
        photos.import_on_first_start(store, judge.scorer, app.logger)

    from game.cli import play
    from game.web import api, connlimits, pages, ws
    from game.web import rooms as room_pages
    connlimits.init_app(app)  # before the pages and /ws, which read its limits
    pages.init_app(app)
    room_pages.init_app(app)  # Play with friends: /rooms/...
    from game.web import history as history_pages
    history_pages.init_app(app)  # Your history: /me, /carry
    api.init_app(app)
    from game.web import explain as explain_api
    explain_api.init_app(app)  # why a caption scored that: /api/explain/...
    ws.init_app(app)
    play.init_app(app)
    from game.web import ops, security  # hardening: /healthz /readyz /metrics, JSON logs, SIGTERM drain; headers
    ops.init_app(app)
    security.init_app(app)
    from game import cli
    from game.web import admin
    cli.init_app(app)
    admin.init_app(app)  # the read-only admin pages under /admin
    from game import gc_pauses
    gc_pauses.tracker()
    # Last: everything start-up built is alive now. Auto: only a process the app owns (see game/gc_pauses.py).
    if app.config["GC_FREEZE"] == "true" or (app.config["GC_FREEZE"] == "auto" and app.extensions["gunicorn_worker"]):
        gc_pauses.freeze_startup_objects()
    return app


"""The web layer: Flask blueprints and hooks over the game service and the store.

`pages` (HTML pages, the player cookie), `api` (JSON actions), `ws` (the
websocket), `admin` (the read-only admin pages), `security` (headers, the
frame budget), `ops` (health, metrics, logs, graceful stop). Each exposes
`init_app(app)`; the factory in game/__init__.py registers them. Templates and
static files live here too.
"""

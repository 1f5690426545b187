"""Fixtures for the web tests: an app on the tiny CLIP and the session's real Redis, seeded
targets (and a revealed day of them for rooms), a real threaded server on 127.0.0.1, and websocket clients (harness.client.WSClient).

tests/conftest.py registers this module as a pytest plugin, so its fixtures apply
to every test; import the plain helpers by name (`from tests.helpers.web import
make_app, serving`). The Redis, clock and tiny-CLIP fixtures come from tests/conftest.py.
"""
from __future__ import annotations

import contextlib
import threading

import pytest

from harness.client import WSClient, new_player_cookie
from harness.settings import SETTINGS
from tests.helpers.images import png_bytes

# harness.settings (the model, the secret, the lifted per-address caps) plus what only the
# in-process tests want: Flask's testing mode and caps small enough to reach in a test.
TEST_CONFIG = dict(SETTINGS, **{
    "TESTING": True,
    "ENV": "development",
    "MAX_SUBMISSIONS": 3,
    "DRAFT_RATE": 50.0,
    "DRAFT_BURST": 200,
    "SUBMIT_RATE": 50.0,
    "SUBMIT_BURST": 50,
})


def make_app(tmp_path, redis_url, clock, **overrides):
    from game import create_app
    cfg = dict(TEST_CONFIG, INSTANCE_PATH=str(tmp_path / "instance"), REDIS_URL=redis_url, CLOCK=clock)
    cfg.update(overrides)
    return create_app(cfg)


@pytest.fixture
def app(tmp_path, redis_url, redis_client, clock):
    """The app on test-tiny with the session's Redis (emptied for this test) and the settable clock."""
    return make_app(tmp_path, redis_url, clock)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def seeded(app):
    """Three targets in the pool (two photos, one GAN with its prompt and self-score) and today's puzzles."""
    from PIL import Image
    import io
    store, scorer = app.extensions["store"], app.extensions["scorer"]
    ids = []
    for i, (kind, color) in enumerate((("photo", (200, 40, 40)), ("gan", (40, 160, 60)), ("photo", (30, 60, 200)))):
        data = png_bytes(color, size=(48, 40))
        emb = scorer.embed_image(Image.open(io.BytesIO(data)))
        extra = {}
        if kind == "gan":
            prompt = "a raccoon driving a tractor"
            extra = {"prompt": prompt, "self_score": scorer.score(prompt, emb), "seed": 7}
        ids.append(store.add_target(kind, data, emb, title=f"target {i}", hint_word=f"word{i}", hint_score=0.2,
                                    attribution="test image, CC0", **extra))
    puzzles = store.puzzles_for(store.today())
    assert len(puzzles) == 3
    return puzzles


@pytest.fixture
def archive(app, seeded, clock):
    """For rooms: `seeded`'s day is over (revealed: two photos, one GAN); today runs on three fresh targets."""
    from PIL import Image
    import io
    store, scorer = app.extensions["store"], app.extensions["scorer"]
    clock.advance(days=1)
    for i in range(3):
        data = png_bytes((10 + 60 * i, 90, 20), size=(40, 40))
        store.add_target("photo", data, scorer.embed_image(Image.open(io.BytesIO(data))), title=f"fresh {i}")
    today = {p.target_id for p in store.puzzles_for(store.today())}
    assert today.isdisjoint(p.target_id for p in seeded)
    return seeded


def player_cookie(test_client) -> str:
    """The session cookie's value as a 'name=value' header string (for websocket clients)."""
    cookie = test_client.get_cookie("captionary")
    return f"captionary={cookie.value}"


@contextlib.contextmanager
def serving(app):
    """Serve `app` for real on 127.0.0.1 (werkzeug's threaded server) in a background thread.

    Yields the server, with its base URL as `.url`; shuts it down on exit.
    """
    from werkzeug.serving import make_server
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.url = f"http://127.0.0.1:{server.server_port}"
    try:
        yield server
    finally:
        server.shutdown()
        thread.join(10)


@pytest.fixture
def live_server(app):
    """The app served for real on 127.0.0.1 in a background thread (see `serving`)."""
    with serving(app) as server:
        yield server


@pytest.fixture
def ws_connect(live_server):
    """Open websocket clients as a browser would: GET / first for the session cookie, same Origin."""
    opened = []

    def connect(cookie: str | None = None, origin: str | None = "same"):
        if cookie is None:
            cookie = new_player_cookie(live_server.url)
        if origin == "same":
            origin = live_server.url
        conn = WSClient(live_server.url, cookie, origin)
        opened.append(conn)
        return conn, cookie

    yield connect
    for conn in opened:
        try:
            conn.close()
        except Exception:
            pass

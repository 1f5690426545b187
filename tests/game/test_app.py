"""The app factory, configuration modes, players in signed cookies, and the HTTP JSON API (Flask test client)."""
from __future__ import annotations

import pytest

from game.config import ConfigError
from harness.client import WSClient
from tests.helpers.web import make_app


def test_config_comes_from_the_environment(tmp_path, redis_url, redis_client, clock, monkeypatch):
    monkeypatch.setenv("CAPTIONARY_MAX_SUBMISSIONS", "7")
    monkeypatch.setenv("CAPTIONARY_MAX_CAPTION_CHARS", "120")
    app = make_app(tmp_path, redis_url, clock, MAX_SUBMISSIONS="7")  # test overrides still win over env
    app2 = make_app(tmp_path, redis_url, clock)
    assert app.config["MAX_CAPTION_CHARS"] == 120 and app.config["MAX_SUBMISSIONS"] == 7
    assert app2.config["MAX_SUBMISSIONS"] == 3  # TEST_CONFIG overrides the environment
    assert app.extensions["store"].max_submissions == 7
    for name in ("redis", "store", "scorer", "game", "judge", "board_hub"):
        assert name in app.extensions


def test_bad_settings_fail_at_start_with_the_setting_named(tmp_path, redis_url, redis_client, clock):
    with pytest.raises(ConfigError, match="CAPTIONARY_MAX_SUBMISSIONS"):
        make_app(tmp_path, redis_url, clock, MAX_SUBMISSIONS="lots")
    with pytest.raises(ConfigError, match="CAPTIONARY_ENV"):
        make_app(tmp_path, redis_url, clock, ENV="staging")
    with pytest.raises(ConfigError, match="CAPTIONARY_CLIP_MODEL"):
        make_app(tmp_path, redis_url, clock, CLIP_MODEL="no-such-model")
    with pytest.raises(ConfigError, match="CAPTIONARY_SCORER_PRECISION"):
        make_app(tmp_path, redis_url, clock, SCORER_PRECISION="fp16")


def test_scorer_precision_is_fp32_unless_bf16_is_asked_for(tmp_path, redis_url, redis_client, clock):
    assert make_app(tmp_path, redis_url, clock).extensions["scorer"].precision == "fp32"
    app = make_app(tmp_path, redis_url, clock, SCORER_PRECISION="bf16")
    assert app.extensions["scorer"].stats()["precision"] == "bf16"


def test_production_refuses_without_a_real_secret_or_pretrained_weights(tmp_path, redis_url, redis_client, clock,
                                                                        monkeypatch):
    monkeypatch.delenv("CAPTIONARY_CLIP_WEIGHTS", raising=False)
    real_secret = "a" * 40
    with pytest.raises(ConfigError, match="CAPTIONARY_SECRET_KEY"):
        make_app(tmp_path, redis_url, clock, ENV="production", SECRET_KEY=None,
                 CLIP_MODEL="ViT-B-32", CLIP_PRETRAINED="openai")
    with pytest.raises(ConfigError, match="CAPTIONARY_SECRET_KEY"):
        make_app(tmp_path, redis_url, clock, ENV="production", SECRET_KEY="short")
    with pytest.raises(ConfigError, match="random weights"):
        make_app(tmp_path, redis_url, clock, ENV="production", SECRET_KEY=real_secret)  # test-tiny/random
    with pytest.raises(ConfigError, match="random weights"):
        make_app(tmp_path, redis_url, clock, ENV="production", SECRET_KEY=real_secret,
                 CLIP_MODEL="ViT-B-32", CLIP_PRETRAINED="random")
    with pytest.raises(ConfigError, match="models download clip-vit-b-32-openai"):
        make_app(tmp_path, redis_url, clock, ENV="production", SECRET_KEY=real_secret,
                 CLIP_MODEL="ViT-B-32", CLIP_PRETRAINED="openai", MODELS_DIR=str(tmp_path / "no-models"))


def test_development_without_weights_runs_in_demo_mode(tmp_path, redis_url, redis_client, clock, monkeypatch, caplog):
    monkeypatch.delenv("CAPTIONARY_CLIP_WEIGHTS", raising=False)
    app = make_app(tmp_path, redis_url, clock, CLIP_MODEL="ViT-B-32", CLIP_PRETRAINED="openai",
                   MODELS_DIR=str(tmp_path / "no-models"), SECRET_KEY=None)
    assert app.config["DEMO_MODE"] is True and app.config["MODEL_ID"] == "test-tiny/random"
    assert "models download clip-vit-b-32-openai" in app.config["DEMO_REASON"]
    status = app.test_client().get("/api/status").get_json()
    assert status["model_id"] == "test-tiny/random" and status["is_pretrained"] is False and status["demo_mode"]
    page = app.test_client().get("/how").get_data(as_text=True)
    assert "Demo mode: scores are not real" in page and "models download clip-vit-b-32-openai" in page
    # Development without a secret: a random key kept in the instance folder, the same for every process.
    assert len(app.config["SECRET_KEY"]) == 64
    assert make_app(tmp_path, redis_url, clock, SECRET_KEY=None).config["SECRET_KEY"] == app.config["SECRET_KEY"]
    # Demo boards are keyed by the tiny model's id, apart from any real model's.
    assert app.extensions["store"].model_id == "test-tiny/random"


def test_test_tiny_alone_means_random_weights_labelled_not_real(tmp_path, redis_url, redis_client, clock):
    """CAPTIONARY_CLIP_MODEL=test-tiny with the default pretrained tag: random weights and the demo
    banner, not a refusal (test-tiny has no published weights to ask for)."""
    app = make_app(tmp_path, redis_url, clock, CLIP_MODEL="test-tiny", CLIP_PRETRAINED="openai")
    assert app.config["CLIP_PRETRAINED"] == "random" and app.config["DEMO_MODE"] is True
    assert "random weights" in app.config["DEMO_REASON"] and "scores are not real" in app.config["DEMO_REASON"]
    assert "Demo mode: scores are not real" in app.test_client().get("/how").get_data(as_text=True)
    with pytest.raises(ConfigError, match="production"):  # and production still refuses it
        make_app(tmp_path, redis_url, clock, CLIP_MODEL="test-tiny", CLIP_PRETRAINED="", ENV="production",
                 SECRET_KEY="a-real-secret-of-enough-length")


def test_a_new_visitor_gets_an_anonymous_player_and_keeps_it(client, seeded):
    client.get("/")
    first = client.get_cookie("captionary").value
    me = client.get("/api/state").get_json()["player"]
    assert client.get("/api/state").get_json()["player"] == me
    assert client.get_cookie("captionary").value.split(".")[0] == first.split(".")[0]


def test_a_forged_cookie_gives_a_new_player_not_someone_else(app, client, seeded):
    import base64
    import json
    client.get("/")
    victim = client.get("/api/state").get_json()["player"]
    # Someone else's id in an unsigned cookie (a valid-looking body, a made-up signature).
    body = base64.urlsafe_b64encode(json.dumps({"player": "victim-player-id-000"}).encode()).decode().rstrip("=")
    other = app.test_client()
    other.set_cookie("captionary", body + ".AAAAAA.BBBBBBBBBBBBBBBBBBBBBBBBBBB")
    forged = other.get("/api/state").get_json()["player"]
    assert forged != victim
    from game.service import public_id
    assert forged != public_id("victim-player-id-000")


def test_http_actions_match_the_websocket_ones(client, seeded):
    p = seeded[0].id
    client.get("/")
    score = client.post("/api/draft", json={"puzzle": p, "caption": "a red square", "seq": 4}).get_json()
    assert score["type"] == "score" and score["seq"] == 4
    result = client.post("/api/submit", json={"puzzle": p, "caption": "a red square"}).get_json()
    assert result["type"] == "result" and result["rank"] == 1 and result["submissions_left"] == 2
    assert result["score"] == pytest.approx(score["score"], abs=1e-6)
    board = client.get("/api/board", query_string={"puzzle": p}).get_json()
    assert board["entries"][0]["you"] is True and "caption" not in board["entries"][0]
    daily = client.get("/api/daily").get_json()
    assert daily["entries"][0]["score"] == pytest.approx(result["score"], abs=1e-6)
    hint = client.post("/api/hint", json={"puzzle": p}).get_json()
    assert hint["word"] == seeded[0].hint_word
    # Using the hint is public: the board marks it next to the score.
    assert client.get("/api/board", query_string={"puzzle": p}).get_json()["entries"][0]["hint"] is True
    state = client.get("/api/state", query_string={"puzzle": p}).get_json()
    assert state["puzzle"]["hint"] == hint["word"] and state["puzzle"]["attempts"][0]["caption"] == "a red square"
    nick = client.post("/api/nickname", json={"nickname": "Ada L"}).get_json()
    assert nick == {"type": "nickname", "nickname": "Ada L"}
    assert client.get("/api/board", query_string={"puzzle": p}).get_json()["entries"][0]["nickname"] == "Ada L"


@pytest.mark.parametrize("path, kwargs, status, code", [
    ("/api/draft", {"data": "caption=hi", "content_type": "application/x-www-form-urlencoded"}, 400, "bad_json"),
    ("/api/draft", {"data": "{oops", "content_type": "application/json"}, 400, "bad_json"),
    ("/api/draft", {"json": ["list"]}, 400, "bad_message"),
    ("/api/draft", {"json": {"caption": "hi"}}, 400, "missing_field"),
    ("/api/draft", {"json": {"puzzle": "2026-06-15/9", "caption": "hi"}}, 404, "unknown_puzzle"),
    ("/api/draft", {"json": {"puzzle": "2026-06-15/1", "caption": ""}}, 400, "empty_caption"),
    ("/api/draft", {"json": {"puzzle": "2026-06-15/1", "caption": "x" * 201}}, 400, "caption_too_long"),
    ("/api/submit", {"json": {"puzzle": "2026-06-15/1", "caption": "x" * 5000}}, 413, "too_big"),
    ("/api/submit", {"data": "x" * 70000, "content_type": "application/json"}, 413, "too_big"),
    ("/api/nickname", {"json": {"nickname": "x"}}, 400, "bad_nickname"),
    ("/api/nickname", {"json": {"nick": "Ada"}}, 400, "missing_field"),
    ("/api/hint", {"json": {"puzzle": 5}}, 400, "bad_field"),
    ("/api/draft", {"json": {"puzzle": "2026-06-15/1", "caption": "hi"},
                    "headers": {"Origin": "http://evil.example"}}, 403, "bad_origin"),
])
def test_bad_http_input_gets_a_clear_json_error_never_a_500(client, seeded, path, kwargs, status, code):
    client.get("/")
    resp = client.post(path, **kwargs)
    assert resp.status_code == status, resp.get_data(as_text=True)
    body = resp.get_json()
    assert body["type"] == "error" and body["code"] == code and body["message"]


def test_wrong_methods_and_unknown_api_paths_answer_json(client):
    assert client.get("/api/submit").status_code == 405
    assert client.get("/api/submit").get_json()["code"] == "bad_method"
    assert client.get("/api/nothing").get_json()["code"] == "not_found"
    assert client.get("/api/board", query_string={"puzzle": "nope"}).get_json()["code"] == "unknown_puzzle"
    assert client.get("/api/daily", query_string={"date": "someday"}).get_json()["code"] == "bad_field"


def test_submission_cap_over_http(client, seeded):
    p = seeded[2].id
    client.get("/")
    for _ in range(3):
        assert client.post("/api/submit", json={"puzzle": p, "caption": "blue"}).status_code == 200
    over = client.post("/api/submit", json={"puzzle": p, "caption": "blue again"})
    assert over.status_code == 409 and over.get_json()["code"] == "over_cap"
    assert len(client.get("/api/state", query_string={"puzzle": p}).get_json()["puzzle"]["attempts"]) == 3


@pytest.mark.parametrize("stop_signal", ["SIGINT", "SIGTERM"])
def test_play_command_serves_a_playable_game_and_stops_cleanly(tmp_path, stop_signal):
    """`flask --app game play` on a fresh instance: embedded Redis, starter photos, gunicorn; Ctrl-C stops
    all, and so does SIGTERM (`kill`, a process manager): nothing is left serving."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time
    from pathlib import Path

    import requests

    from game.store import server as redis_server

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    instance = tmp_path / "fresh-install"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAPTIONARY_") and k != "REDIS_URL"}
    env.update(CAPTIONARY_INSTANCE_PATH=str(instance), CAPTIONARY_CLIP_MODEL="test-tiny",
               CAPTIONARY_CLIP_PRETRAINED="random")
    root = Path(__file__).resolve().parents[2]
    # A suite started in the background by a shell without job control (`pytest &` in a script) ignores
    # SIGINT, and an ignored signal stays ignored across exec: `play` would never see the Ctrl-C below.
    # Started from a terminal it would not be ignored; give the child that terminal's disposition.
    ignored = signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    if ignored:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a handler resets to the default at exec
    try:
        proc = subprocess.Popen([sys.executable, "-m", "flask", "--app", "game", "play", "--port", str(port)],
                                cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)  # its own process group: a hung stop is killed whole
    finally:
        if ignored:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        page = None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                page = requests.get(f"http://127.0.0.1:{port}/", timeout=30)
                break
            except (requests.ConnectionError, requests.Timeout):  # gunicorn listens before its worker is up
                time.sleep(0.5)
        assert page is not None and page.status_code == 200, proc.stdout.read().decode() if proc.poll() else ""
        assert page.text.count('class="card"') == 3  # the starter photos, with zero admin work
        assert "Demo mode" in page.text
        # The websocket works under gunicorn's gthread worker, as the Procfile runs it.
        base = f"http://127.0.0.1:{port}"
        puzzle = requests.get(base + "/api/status", timeout=30).json()["today"] + "/1"
        ws = WSClient(base, f"captionary={page.cookies['captionary']}", base)
        reply = ws.ask({"type": "draft", "seq": 1, "puzzle": puzzle, "caption": "a photo of an astronaut"})
        result = ws.ask({"type": "submit", "puzzle": puzzle, "caption": "a photo of an astronaut"}, "result")
        ws.close()
        assert reply["type"] == "score" and result["rank"] == 1 and result["score"] == reply["score"]
        assert redis_server.is_running(str(instance))
    finally:
        proc.send_signal(getattr(signal, stop_signal))
        try:
            out = proc.communicate(timeout=60)[0].decode()
        except subprocess.TimeoutExpired:  # say what it was doing, and leave no gunicorn behind
            os.killpg(proc.pid, signal.SIGKILL)
            out = proc.communicate()[0].decode()
            out = f"`flask play` did not stop within 60 s of {stop_signal}; its output:\n{out[-4000:]}"
        # Interrupted before it got going (a failed assert above), `play` leaves the embedded
        # Redis running, as it should for a real install; a test must not leave it behind.
        still_running = redis_server.is_running(str(instance))
        if still_running:
            redis_server.stop(str(instance))
    assert proc.returncode == 0, out
    assert not still_running
    assert "Open http://127.0.0.1:" in out and "stopped the embedded Redis" in out
    with pytest.raises(requests.ConnectionError):  # gunicorn went with it: nothing serves the port
        requests.get(f"http://127.0.0.1:{port}/", timeout=5)


def test_an_all_digit_secret_from_the_environment_still_signs_cookies(tmp_path, redis_url, redis_client, clock,
                                                                      monkeypatch):
    monkeypatch.setenv("CAPTIONARY_SECRET_KEY", "12345678901234567890123")
    from game import create_app
    from tests.helpers.web import TEST_CONFIG
    cfg = {k: v for k, v in TEST_CONFIG.items() if k != "SECRET_KEY"}
    app = create_app(dict(cfg, INSTANCE_PATH=str(tmp_path / "i"), REDIS_URL=redis_url, CLOCK=clock))
    assert app.config["SECRET_KEY"] == "12345678901234567890123"
    client = app.test_client()
    assert client.get("/").status_code == 200 and client.get_cookie("captionary") is not None


def test_redis_down_is_a_503_to_retry_never_a_500(tmp_path, clock):
    from game.store import server as redis_server
    instance = tmp_path / "instance"
    app = make_app(tmp_path, None, clock, REDIS_URL=None)  # its own embedded server, which we then stop
    client = app.test_client()
    assert client.get("/").status_code == 200
    assert redis_server.stop(str(instance))
    try:
        resp = client.post("/api/submit", json={"puzzle": "2026-01-01/1", "caption": "a cat"})
        assert resp.status_code == 503 and resp.headers["Retry-After"]
        assert resp.get_json()["code"] == "unavailable" and "not recorded" in resp.get_json()["message"]
        page = client.get("/")
        assert page.status_code == 503 and b"try again" in page.data
    finally:
        redis_server.stop(str(instance))


def test_a_full_redis_is_a_507_storage_full_and_loses_nothing(tmp_path, clock):
    import io
    from PIL import Image
    from tests.helpers.images import png_bytes
    from game.store import server as redis_server
    from harness.client import new_player_cookie
    from tests.helpers.web import serving
    instance = tmp_path / "instance"
    # Its own embedded server (made full below), with a setting other than the default.
    app = make_app(tmp_path, None, clock, REDIS_URL=None, REDIS_MAXMEMORY="256MB")
    try:
        client_r = app.extensions["redis"]
        assert client_r.config_get("maxmemory")["maxmemory"] == str(256 * 1024 * 1024)
        assert client_r.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
        store, scorer = app.extensions["store"], app.extensions["scorer"]
        for color in ((200, 40, 40), (40, 160, 60), (30, 60, 200)):
            data = png_bytes(color, size=(48, 40))
            store.add_target("photo", data, scorer.embed_image(Image.open(io.BytesIO(data))))
        puzzle = store.puzzles_for(store.today())[0]
        client = app.test_client()
        first = client.post("/api/submit", json={"puzzle": puzzle.id, "caption": "a red square"})
        assert first.status_code == 200, first.get_json()
        before = [(e.player_id, e.score) for e in store.leaderboard(puzzle.id)]
        with serving(app) as server:
            ws = WSClient(server.url, new_player_cookie(server.url), server.url)
            assert ws.ask({"type": "hello", "puzzle": puzzle.id})["type"] == "state"
            client_r.config_set("maxmemory", 1)  # full: every write is refused from now on
            try:
                resp = client.post("/api/submit", json={"puzzle": puzzle.id, "caption": "another try"})
                assert resp.status_code == 507
                assert resp.get_json()["code"] == "storage_full" and "not recorded" in resp.get_json()["message"]
                reply = ws.ask({"type": "submit", "puzzle": puzzle.id, "caption": "from the socket"})
                assert reply["type"] == "error" and reply["code"] == "storage_full", reply
                assert ws.ask({"type": "ping"})["type"] == "pong"  # the socket stays usable
                page = app.test_client().get("/")  # reads work; a write it needs is a 507 page, not a 500
                assert page.status_code == 200 or (page.status_code == 507 and b"Storage full" in page.data)
            finally:
                client_r.config_set("maxmemory", "256mb")
            ws.close()
        assert [(e.player_id, e.score) for e in store.leaderboard(puzzle.id)] == before  # nothing lost
        assert client.post("/api/submit", json={"puzzle": puzzle.id, "caption": "room again"}).status_code == 200
    finally:
        redis_server.stop(str(instance))


def test_every_setting_is_declared_and_checked_in_one_table(tmp_path):
    """game/config.py DEFAULTS is the one table: each module reads app.config[KEY] of a declared
    key, and a wrong value of any kind fails at start with one line naming the setting."""
    import ast
    import pathlib
    from game import config as cfg
    read = set()
    for path in pathlib.Path(cfg.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant)
                    and isinstance(node.slice.value, str) and node.slice.value.isupper()
                    and "config" in ast.unparse(node.value)):
                read.add(node.slice.value)
    derived = {"DEMO_MODE", "DEMO_REASON", "MODEL_ID", "CLOCK", "INSTANCE_PATH", "SOCK_SERVER_OPTIONS"}
    assert read - derived <= set(cfg.DEFAULTS), read - derived - set(cfg.DEFAULTS)
    for key, bad in (("WS_PER_ADDRESS", "-1"), ("FRAME_RATE", "0"), ("LOG_FORMAT", "xml"),
                     ("GRACEFUL_SIGTERM", "sometimes"), ("TRUSTED_PROXIES", "two"), ("WS_OUTBOX", 0)):
        with pytest.raises(ConfigError, match=f"CAPTIONARY_{key} must"):
            cfg.load(str(tmp_path), {key: bad})
    ok = cfg.load(str(tmp_path), {"GRACEFUL_SIGTERM": True, "LOG_FORMAT": "JSON", "READY_REQUIRES_WORKERS": "yes"})
    assert (ok["GRACEFUL_SIGTERM"], ok["LOG_FORMAT"], ok["READY_REQUIRES_WORKERS"]) == ("true", "json", True)

"""Security review, as tests: origins, cookies, secrets, admin token, CSP and headers, escaping,
upload limits, safe checkpoint loading, and the per-connection flood guard.

Some items are also covered where they were built (tests/test_ws.py: foreign Origin and
missing cookie on the websocket; tests/test_app.py: forged cookie, production secret;
tests/test_vqgan.py: a VQGAN checkpoint that would run code); this file covers the rest
and the cross-cutting checks (every page, every secret).
"""
from __future__ import annotations

import logging
import os
import re
import time

import pytest

from harness.client import WSClient, new_player_cookie
from tests.helpers.web import make_app, serving

PAGES = ["/", "/how", "/archive", "/nickname", "/leaderboard"]


def _pages(client, seeded):
    return PAGES + [f"/play/{seeded[0].id}"]


def test_every_page_has_a_strict_csp_and_no_inline_script(client, seeded):
    client.get("/")
    for path in _pages(client, seeded):
        resp = client.get(path, follow_redirects=True)
        assert resp.status_code == 200, path
        csp = resp.headers["Content-Security-Policy"]
        assert "'unsafe-inline'" not in csp and "'unsafe-eval'" not in csp, path
        for directive in ("default-src 'self'", "script-src 'self'", "object-src 'none'", "frame-ancestors 'none'",
                          "base-uri 'none'"):
            assert directive in csp, (path, directive)
        html = resp.get_data(as_text=True)
        # Every <script> is a file (no inline code), and no inline event handler or javascript: URL.
        assert all("src=" in tag for tag in re.findall(r"<script\b[^>]*>", html)), path
        assert not re.search(r"\son[a-z]+\s*=", html) and "javascript:" not in html, path
        assert "<style" not in html and " style=" not in html, path
        for name, value in (("X-Content-Type-Options", "nosniff"), ("X-Frame-Options", "DENY"),
                            ("Referrer-Policy", "same-origin"), ("Cross-Origin-Opener-Policy", "same-origin")):
            assert resp.headers.get(name) == value, (path, name)
        assert "camera=()" in resp.headers["Permissions-Policy"]
        assert "Strict-Transport-Security" not in resp.headers  # plain HTTP: HSTS would be ignored anyway


def test_hsts_on_https_and_secure_cookie_in_production(client, seeded):
    resp = client.get("/", base_url="https://captionary.example")
    assert resp.headers["Strict-Transport-Security"].startswith("max-age=31536000")
    from game import config as cfg
    production = {"ENV": "production", "SECRET_KEY": "a-real-secret-of-enough-length"}
    assert cfg.load(str(client.application.instance_path), production)["SESSION_COOKIE_SECURE"] is True
    plain = cfg.load(str(client.application.instance_path), dict(production, COOKIE_SECURE="false"))
    assert plain["SESSION_COOKIE_SECURE"] is False


def test_admin_inline_styles_carry_the_nonce_named_by_the_csp(tmp_path, redis_url, redis_client, clock):
    client = make_app(tmp_path, redis_url, clock, ADMIN_TOKEN="admin-token-for-nonce-test-0123456789").test_client()
    pages = [client.get("/admin/login"),
             client.get("/admin/", headers={"X-Admin-Token": "admin-token-for-nonce-test-0123456789"})]
    nonces = []
    for resp in pages:
        assert resp.status_code == 200
        nonce = re.search(r"'nonce-([^']+)'", resp.headers["Content-Security-Policy"]).group(1)
        html = resp.get_data(as_text=True)
        styles = re.findall(r"<style\b[^>]*>", html)
        assert styles and all(f'nonce="{nonce}"' in tag for tag in styles)
        nonces.append(nonce)
    assert nonces[0] != nonces[1]  # a fresh nonce per response


def test_captions_are_escaped_wherever_they_appear(app, client, seeded, clock):
    store = app.extensions["store"]
    client.get("/")
    evil = '<img src=x onerror="alert(1)"><script>alert(2)</script>'
    p = seeded[0].id
    assert client.post("/api/submit", json={"puzzle": p, "caption": evil}).status_code == 200
    assert client.post("/api/nickname", json={"nickname": "<b>bold</b>"}).status_code == 400  # names are plain
    pages = [f"/play/{p}"]
    clock.advance(days=1)  # the day is over: captions are revealed on the board, reveal and archive
    pages += [f"/reveal/{seeded[0].date}", f"/leaderboard/{seeded[0].date}", f"/play/{p}"]
    for path in pages:
        html = client.get(path).get_data(as_text=True)
        assert "<script>alert(2)" not in html and '<img src=x' not in html, path
    revealed = client.get(f"/reveal/{seeded[0].date}").get_data(as_text=True)
    assert "&lt;script&gt;alert(2)&lt;/script&gt;" in revealed
    assert store.leaderboard(p, with_captions=True)[0].caption == evil  # stored as typed, escaped on output


def test_api_refuses_other_origins_and_non_json(client, seeded):
    client.get("/")
    p = seeded[0].id
    resp = client.post("/api/draft", json={"puzzle": p, "caption": "x"}, headers={"Origin": "http://evil.example"})
    assert resp.status_code == 403 and resp.get_json()["code"] == "bad_origin"
    # A cross-site form can only send form encodings: refused before anything runs.
    resp = client.post("/api/submit", data={"puzzle": p, "caption": "x"})
    assert resp.status_code == 400 and resp.get_json()["code"] == "bad_json"
    assert app_board_size(client, p) == 0


def app_board_size(client, puzzle):
    return len(client.get(f"/api/board?puzzle={puzzle}").get_json()["entries"])


def test_websocket_allowed_origins_setting(tmp_path, redis_url, redis_client, clock, seeded):
    import websocket
    app = make_app(tmp_path, redis_url, clock, ALLOWED_ORIGINS="https://play.example.org")
    with serving(app) as server:
        url = server.url
        cookie = new_player_cookie(url)
        ws = WSClient(url, cookie, origin="https://play.example.org")
        assert ws.ask({"type": "ping"})["type"] == "pong"
        ws.close()
        for origin in ("https://play.example.org.evil.example", "http://evil.example", "null"):
            with pytest.raises(websocket.WebSocketBadStatusException) as info:
                WSClient(url, cookie, origin=origin)
            assert info.value.status_code == 403, origin


def test_one_origin_rule_for_websocket_and_post(tmp_path, redis_url, redis_client, clock, seeded):
    """security.origin_allowed decides both: an allowed extra origin works for the websocket and
    the JSON POSTs alike, and a foreign one is refused by both (the POST copy once ignored the setting)."""
    import requests
    import websocket
    app = make_app(tmp_path, redis_url, clock, ALLOWED_ORIGINS="https://play.example.org, app.example.net:8443")
    p = seeded[0].id
    with serving(app) as server:
        url = server.url
        cookie = new_player_cookie(url)
        for origin in ("https://play.example.org", "https://app.example.net:8443", url):
            ws = WSClient(url, cookie, origin=origin)
            assert ws.ask({"type": "ping"})["type"] == "pong", origin
            ws.close()
            resp = requests.post(url + "/api/draft", json={"puzzle": p, "caption": "a red square"},
                                 headers={"Origin": origin, "Cookie": cookie}, timeout=10)
            assert resp.status_code == 200 and resp.json()["type"] == "score", (origin, resp.text)
        for origin in ("https://play.example.org.evil.example", "http://evil.example", "null"):
            with pytest.raises(websocket.WebSocketBadStatusException) as info:
                WSClient(url, cookie, origin=origin)
            assert info.value.status_code == 403, origin
            resp = requests.post(url + "/api/submit", json={"puzzle": p, "caption": "a red square"},
                                 headers={"Origin": origin, "Cookie": cookie}, timeout=10)
            assert resp.status_code == 403 and resp.json()["code"] == "bad_origin", origin
    assert app_board_size(app.test_client(), p) == 0  # nothing foreign was recorded


def test_cookie_signed_with_another_key_is_a_new_player(tmp_path, redis_url, redis_client, clock, seeded):
    victim_app = make_app(tmp_path / "a", redis_url, clock)
    victim = victim_app.test_client()
    victim.get("/")
    victim_id = victim.get("/api/state").get_json()["player"]
    # The attacker knows the cookie format and the victim's player id, and signs with a key of their own.
    attacker_app = make_app(tmp_path / "b", redis_url, clock, SECRET_KEY="attacker-chosen-secret-key-123")
    stolen = victim_app.session_interface.get_signing_serializer(victim_app).loads(
        victim.get_cookie("captionary").value)
    forged = attacker_app.session_interface.get_signing_serializer(attacker_app).dumps(dict(stolen))
    other = victim_app.test_client()
    other.set_cookie("captionary", forged)
    assert other.get("/api/state").get_json()["player"] != victim_id


def test_development_secret_is_random_private_and_per_instance(tmp_path, redis_url, redis_client, clock):
    a = make_app(tmp_path / "one", redis_url, clock, SECRET_KEY=None)
    b = make_app(tmp_path / "two", redis_url, clock, SECRET_KEY=None)
    assert a.secret_key != b.secret_key and len(a.secret_key) >= 32
    path = os.path.join(a.instance_path, "dev-secret-key")
    assert os.stat(path).st_mode & 0o077 == 0  # readable by the owner only
    again = make_app(tmp_path / "one", redis_url, clock, SECRET_KEY=None)
    assert again.secret_key == a.secret_key  # every process of one installation agrees


def test_admin_token_near_misses_are_refused(tmp_path, redis_url, redis_client, clock):
    token = "Admin-Token-0123456789-abcdefghijklm"
    client = make_app(tmp_path, redis_url, clock, ADMIN_TOKEN=token).test_client()
    for wrong in (token[:-1], token + "x", token.lower(), " " + token, token + "\x00", ""):
        assert client.get("/admin/", headers={"X-Admin-Token": wrong}).status_code in (302, 403), repr(wrong)
    assert client.get("/admin/", headers={"X-Admin-Token": token}).status_code == 200


def test_no_secret_reaches_the_logs(tmp_path, redis_url, redis_client, clock, seeded, caplog):
    secret, token = "s3cret-key-never-logged-0123456789", "admin-token-never-logged-42-0123456789"
    with caplog.at_level(logging.DEBUG):
        app = make_app(tmp_path, redis_url, clock, SECRET_KEY=secret, ADMIN_TOKEN=token)
        client = app.test_client()
        client.get("/")
        client.post("/admin/login", data={"token": token + "-wrong"})
        client.post("/admin/login", data={"token": token})
        client.get("/admin/jobs")
        client.post("/api/submit", json={"puzzle": seeded[0].id, "caption": "hello"})
        client.get("/api/status")
        client.get("/metrics")
        # A careless line that dumps the configuration: the redaction filter still hides the values.
        logging.getLogger("captionary.test").error("config at start: %s", dict(app.config))
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert caplog.records  # the app did log (start-up, judge, ...)
    assert secret not in logged and token not in logged
    body = client.get("/api/status").get_data(as_text=True) + client.get("/metrics").get_data(as_text=True)
    assert secret not in body and token not in body


def test_upload_limits(client, seeded):
    client.get("/")
    big = b'{"puzzle": "x", "caption": "' + b"a" * (80 * 1024) + b'"}'
    resp = client.post("/api/draft", data=big, content_type="application/json")
    assert resp.status_code == 413 and resp.get_json()["code"] == "too_big"
    resp = client.post("/nickname", data={"nickname": "n" * (80 * 1024)})
    assert resp.status_code == 413


def test_clip_checkpoint_that_would_run_code_is_refused_without_running_it(tmp_path):
    import pickle
    from engine.clip_model import load_clip
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.bin"
    with open(path, "wb") as fh:
        pickle.dump({"state_dict": Exploit()}, fh, protocol=2)
    # open_clip loads through torch.load with weights_only on: the pickle is refused, not run.
    from engine.clip_model import ClipCheckpointError
    with pytest.raises(ClipCheckpointError, match="could run code") as info:
        load_clip("test-tiny", str(path))
    assert isinstance(info.value.__cause__, pickle.UnpicklingError)
    assert not marker.exists()


def test_frame_budget_drops_a_flood_before_parsing():
    from game.web.security import FrameBudget
    now = [0.0]
    budget = FrameBudget(rate=10, burst=20, clock=lambda: now[0])
    kept, dropped = budget.admit(list(range(50)))
    assert kept == list(range(20)) and dropped == 30
    kept, dropped = budget.admit([1, 2])
    assert kept == [] and dropped == 2  # one notice per batch: a client waiting for a reply gets one
    now[0] += 1.0
    kept, dropped = budget.admit(list(range(15)))
    assert len(kept) == 10 and dropped == 5
    now[0] += 0.05
    assert budget.admit([1]) == ([], 1)
    now[0] += 5.0
    assert budget.admit(list(range(20)))[0] == list(range(20))  # refilled to the burst, no further
    assert not budget.abusive  # bursts are throttled, not punished
    for _ in range(40):  # then 100 frames every 0.1 s (1,000/s) for 4 s: 100x the budget, sustained
        now[0] += 0.1
        budget.admit(list(range(100)))
    assert budget.abusive


def test_bad_flood_guard_settings_fail_at_start(tmp_path, redis_url, redis_client, clock):
    from game.config import ConfigError
    for bad in ("fast", 0, -5):
        with pytest.raises(ConfigError, match="CAPTIONARY_FRAME_RATE"):
            make_app(tmp_path, redis_url, clock, FRAME_RATE=bad)


def test_flooding_socket_is_cut_to_its_budget_and_recovers(tmp_path, redis_url, redis_client, clock, seeded):
    app = make_app(tmp_path, redis_url, clock, FRAME_RATE=5, FRAME_BURST=10)
    with serving(app) as server:
        url = server.url
        cookie = new_player_cookie(url)
        ws = WSClient(url, cookie, url)
        for _ in range(40):  # a one-off burst: cut to the budget, not cut off
            ws.send({"type": "ping"})
        replies = []
        ws.ws.settimeout(1.5)
        try:
            while True:
                replies.append(ws.recv())
        except Exception:
            pass
        pongs = [r for r in replies if r["type"] == "pong"]
        notices = [r for r in replies if r.get("code") == "slow_down"]
        assert 10 <= len(pongs) <= 20 and notices and "ignored" in notices[0]["message"]
        # Every frame was answered: by its pong, or counted in a notice.
        assert len(pongs) + sum(int(n["message"].split(": ")[1].split()[0]) for n in notices) == 40
        time.sleep(1.0)
        ws.ws.settimeout(10)
        assert ws.ask({"type": "ping"}, "pong")  # the budget refills: a real player is never stuck
        ws.close()


def test_a_sustained_flood_is_cut_off_with_1008(tmp_path, redis_url, redis_client, clock, seeded):
    import threading
    app = make_app(tmp_path, redis_url, clock, FRAME_RATE=5, FRAME_BURST=10)
    with serving(app) as server:
        url = server.url
        cookie = new_player_cookie(url)
        ws = WSClient(url, cookie, url)
        reader_done = threading.Event()
        close_code = []

        def read():
            import websocket
            while True:
                try:
                    frame = ws.ws.recv_frame()
                except Exception:
                    break
                if frame.opcode == websocket.ABNF.OPCODE_CLOSE:
                    close_code.append(int.from_bytes(frame.data[:2], "big"))
                    break
            reader_done.set()

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + 10
        while not reader_done.is_set() and time.monotonic() < deadline:
            try:
                ws.send({"type": "ping"})  # ~100+/s for seconds: 20x the budget, sustained
            except Exception:
                break
            time.sleep(0.005)
        reader_done.wait(5)
        assert close_code == [1008]
        # A new connection starts with a fresh budget (the page would reconnect; a script must slow down).
        again = WSClient(url, cookie, url)
        assert again.ask({"type": "ping"})["type"] == "pong"
        again.close()

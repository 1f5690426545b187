"""The read-only admin page: token guard (header, login form), gallery, plots, job list."""
from __future__ import annotations

import io
import re

import pytest
from PIL import Image

from game.generation.jobs import JobQueue
from game.web.admin import history_svg
from harness.settings import SETTINGS
from tests.helpers.images import png_bytes

TOKEN = "admin-token-for-tests-0123456789abcdef"


def _app(redis_url, clock, **extra):
    from game import create_app
    config = dict(SETTINGS, TESTING=True, REDIS_URL=redis_url, CLOCK=clock, ADMIN_TOKEN=TOKEN)
    config.update(extra)
    return create_app(config)


@pytest.fixture
def app(redis_client, redis_url, clock):
    return _app(redis_url, clock)


@pytest.fixture
def gan(app):
    store, scorer = app.extensions["store"], app.extensions["scorer"]
    png = png_bytes((30, 60, 90), (32, 32))
    return store.add_target("gan", png, scorer.embed_image(Image.open(io.BytesIO(png))),
                            prompt="a <script>alert(1)</script> raccoon", self_score=0.4321, seed=99,
                            settings={"size": 32, "iterations": 4, "clip_model": "test-tiny/random"},
                            history=[[0, 0.1], [2, 0.25], [4, 0.4321]])


HEADERS = {"X-Admin-Token": TOKEN}


def test_page_is_off_without_a_configured_token(redis_client, redis_url, clock):
    app = _app(redis_url, clock, ADMIN_TOKEN=None)
    client = app.test_client()
    assert client.get("/admin/").status_code == 404
    assert client.get("/admin/", headers={"X-Admin-Token": ""}).status_code == 404


def test_wrong_or_missing_token_is_refused(app, gan):
    client = app.test_client()
    response = client.get("/admin/")
    assert response.status_code == 302 and "/admin/login" in response.headers["Location"]
    assert client.get("/admin/", headers={"X-Admin-Token": "nope"}).status_code == 403
    assert client.get("/admin/", headers={"Authorization": "Bearer nope"}).status_code == 403
    assert client.get(f"/admin/image/{gan}.png", headers={"X-Admin-Token": TOKEN[:-1]}).status_code == 403
    assert client.get("/admin/jobs", headers={"Accept": "application/json"}).status_code == 403


def test_gallery_shows_image_prompt_score_seed_settings_and_plot(app, gan):
    client = app.test_client()
    response = client.get("/admin/", headers=HEADERS)
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert f"/admin/image/{gan}.png" in html and "0.4321" in html and "99" in html
    assert "iterations=4" in html and "size=32" in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; raccoon" in html and "<script>alert" not in html
    assert "<svg" in html and html.count("<circle") == 3
    assert "Demo mode" in html  # the judge is the random tiny model
    assert response.headers["Cache-Control"] == "no-store"
    image = client.get(f"/admin/image/{gan}.png", headers={"Authorization": f"Bearer {TOKEN}"})
    assert image.status_code == 200 and image.mimetype == "image/png"
    assert Image.open(io.BytesIO(image.data)).size == (32, 32)
    assert client.get("/admin/image/tnope.png", headers=HEADERS).status_code == 404


def test_gallery_filters_and_target_page(app, gan):
    store, scorer = app.extensions["store"], app.extensions["scorer"]
    png = png_bytes((200, 1, 1), (40, 40))
    photo = store.add_target("photo", png, scorer.embed_image(Image.open(io.BytesIO(png))), title="Red photo")
    client = app.test_client()
    html = client.get("/admin/?kind=photo", headers=HEADERS).get_data(as_text=True)
    assert "Red photo" in html and "raccoon" not in html
    assert client.get("/admin/?kind=bogus", headers=HEADERS).status_code == 400
    page = client.get(f"/admin/target/{gan}", headers=HEADERS)
    assert page.status_code == 200 and "Self-score by iteration" in page.get_data(as_text=True)
    assert client.get("/admin/target/tnope", headers=HEADERS).status_code == 404
    assert photo


def test_login_form_sets_a_session_and_logout_clears_it(app, gan):
    client = app.test_client()
    wrong = client.post("/admin/login", data={"token": "nope"})
    assert wrong.status_code == 401 and "not right" in wrong.get_data(as_text=True)
    assert client.get("/admin/").status_code == 302
    ok = client.post("/admin/login?next=/admin/jobs", data={"token": TOKEN})
    assert ok.status_code == 302 and ok.headers["Location"].endswith("/admin/jobs")
    cookie = client.get_cookie("captionary_admin", path="/admin")
    assert cookie is not None and cookie.http_only and cookie.same_site == "Strict"
    assert TOKEN not in cookie.value  # an HMAC of the token is kept, not the token
    with client.session_transaction() as session:
        assert not any("admin" in key for key in session)  # nothing of the admin in the player cookie
    assert client.get("/admin/").status_code == 200
    assert client.post("/admin/logout").status_code == 302
    assert client.get("/admin/").status_code == 302


def test_login_never_redirects_off_site(app):
    client = app.test_client()
    for target in ("//evil.example/", "https://evil.example/", "/admin//evil.example"):
        response = client.post(f"/admin/login?next={target}", data={"token": TOKEN})
        assert response.status_code == 302 and response.headers["Location"].endswith("/admin/")


def test_session_from_another_token_is_refused(redis_client, redis_url, clock):
    app = _app(redis_url, clock)
    client = app.test_client()
    client.post("/admin/login", data={"token": TOKEN})
    app.config["ADMIN_TOKEN"] = "a-rotated-token-0123456789abcdefghij"  # rotating the token logs everyone out
    assert client.get("/admin/").status_code == 302


def test_jobs_page_lists_jobs_errors_and_workers(app):
    from game.generation.worker import Worker
    queue = JobQueue(app.extensions["redis"], max_attempts=1)
    queue.enqueue({"prompt": "a failing prompt", "source": "topup"})
    queue.enqueue({"prompt": "a queued <b>prompt</b>", "source": "admin"})
    job = queue.claim("w9")  # the oldest first
    assert job.payload["prompt"] == "a failing prompt"
    queue.fail(job, "ValueError: out of memory at 1024px")
    Worker.from_app(app, name="worker-a", top_up=False).heartbeat("idle")
    html = app.test_client().get("/admin/jobs", headers=HEADERS).get_data(as_text=True)
    assert "a queued &lt;b&gt;prompt&lt;/b&gt;" in html and "out of memory at 1024px" in html
    assert "failed: 1" in html and "queued: 1" in html and "worker-a" in html
    failed = app.test_client().get("/admin/jobs?status=failed", headers=HEADERS).get_data(as_text=True)
    assert "a failing prompt" in failed and "a queued" not in failed


def test_history_svg_scales_points_and_marks_the_threshold():
    svg = str(history_svg([[0, 0.1], [50, 0.3], [100, 0.5]], width=200, height=100, threshold=0.4))
    points = re.search(r'points="([^"]+)"', svg).group(1).split()
    xs = [float(p.split(",")[0]) for p in points]
    ys = [float(p.split(",")[1]) for p in points]
    assert xs == sorted(xs) and ys == sorted(ys, reverse=True)  # later and higher = right and up
    assert 'class="threshold"' in svg and "0.400" in svg
    assert "no score history" in str(history_svg([]))
    assert "<polyline" in str(history_svg([[3, 0.2]]))  # one point still draws


def test_history_svg_keeps_a_far_threshold_off_the_scale():
    svg = str(history_svg([[0, 0.01], [10, 0.03]], threshold=0.4))
    assert 'class="threshold"' not in svg and "threshold 0.40 (above)" in svg
    assert "0.03" in svg and "0.40</text>" not in svg.split("threshold")[0]


def test_admin_cookie_is_separate_from_the_player_cookie(app, gan):
    client = app.test_client()
    assert client.get("/").status_code == 200  # a player first: the player cookie is set
    player = client.get_cookie("captionary").value
    assert client.post("/admin/login", data={"token": TOKEN}).status_code == 302
    # Same payload (the player id); the signature's timestamp may move on: the session is refreshed per request.
    assert client.get_cookie("captionary").value.split(".")[0] == player.split(".")[0]  # login leaves the player
    assert client.get("/admin/").status_code == 200
    # The player cookie alone (same secret, same browser) gives no admin rights.
    other = app.test_client()
    other.set_cookie("captionary", player)
    assert other.get("/admin/").status_code == 302
    # An admin cookie copied into the player cookie's place is not accepted either.
    admin = client.get_cookie("captionary_admin", path="/admin").value
    other.set_cookie("captionary", admin)
    assert other.get("/admin/").status_code == 302
    assert client.post("/admin/logout").status_code == 302
    assert client.get("/admin/").status_code == 302
    assert client.get_cookie("captionary").value.split(".")[0] == player.split(".")[0]  # logout keeps the player


def test_login_is_rate_limited_per_address(app):
    client = app.test_client()
    for _ in range(app.config["ADMIN_LOGIN_FAILURES"]):
        assert client.post("/admin/login", data={"token": "guess"}).status_code == 401
    refused = client.post("/admin/login", data={"token": TOKEN})  # even the right token: wait first
    assert refused.status_code == 429 and "Too many login attempts" in refused.get_data(as_text=True)
    assert refused.headers["Retry-After"] == "60"
    assert client.get_cookie("captionary_admin", path="/admin") is None
    assert client.post("/admin/login", data={"token": "guess"},
                       headers={"Accept": "application/json"}).get_json()["code"] == "slow_down"
    # Another address has its own bucket.
    other = client.post("/admin/login", data={"token": TOKEN}, environ_base={"REMOTE_ADDR": "10.0.0.9"})
    assert other.status_code == 302
    # Scripts with the header are not slowed down by the form's limit.
    assert client.get("/admin/", headers=HEADERS).status_code == 200


@pytest.mark.parametrize("token", ["short", "x" * 31, 12345])
def test_a_short_admin_token_is_a_config_error_naming_the_setting(redis_client, redis_url, clock, token):
    from game.config import ConfigError
    with pytest.raises(ConfigError, match="CAPTIONARY_ADMIN_TOKEN .* at least 32") as info:
        _app(redis_url, clock, ADMIN_TOKEN=token)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("command", [
    ["-m", "game.generation.worker", "--once"],
    ["-m", "flask", "--app", "game", "targets", "list"],
    ["-m", "gunicorn", "--bind", "127.0.0.1:0", "--workers", "1", "game:create_app()"],
])
def test_a_short_admin_token_stops_every_entry_point_with_one_line(tmp_path, redis_url, command):
    import os
    import subprocess
    import sys
    env = dict(os.environ, CAPTIONARY_ADMIN_TOKEN="too-short", REDIS_URL=redis_url, CAPTIONARY_CLIP_MODEL="test-tiny",
               CAPTIONARY_CLIP_PRETRAINED="random", CAPTIONARY_INSTANCE_PATH=str(tmp_path / "inst"))
    proc = subprocess.run([sys.executable, *command], env=env, capture_output=True, text=True, timeout=120,
                          cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert "CAPTIONARY_ADMIN_TOKEN is 9 characters; it must be at least 32" in output
    assert "Traceback" not in output

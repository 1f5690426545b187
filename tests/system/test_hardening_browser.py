"""Hardening in real headless Chromium, with the Content-Security-Policy enforced (not bypassed).

1. The pages work under our CSP: no violation reported, the websocket connects
   (connect-src 'self'), live scores arrive; the admin page's nonce'd styles apply.
2. A deploy: gunicorn gets SIGTERM while the play page is open; the page sees the
   1012 close, shows "reconnecting", and when a new gunicorn comes up on the same
   port it goes live again by itself and keeps scoring, without a reload.
"""
from __future__ import annotations

import os
import signal

import pytest

from tests.helpers.web import make_app, serving
from harness import servers

pytestmark = pytest.mark.browser
CHROMIUM = os.environ.get("CAPTIONARY_CHROMIUM", "/usr/bin/chromium")


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM}")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu",
                                                                "--disable-background-networking"])
        yield b
        b.close()


def _page(browser):
    ctx = browser.new_context(viewport={"width": 1100, "height": 900})  # CSP enforced
    page = ctx.new_page()
    page.csp_violations = []
    page.on("console", lambda m: "Content Security Policy" in m.text and page.csp_violations.append(m.text))
    page.errors = []
    page.on("pageerror", lambda exc: page.errors.append(str(exc)))
    return ctx, page


def _score_shown(page):
    page.wait_for_function("/^-?\\d\\.\\d{4}$/.test(document.getElementById('score').textContent)", timeout=20000)


def test_pages_work_under_the_enforced_csp(browser, tmp_path, redis_url, clock, seeded):
    app = make_app(tmp_path, redis_url, clock, ADMIN_TOKEN="browser-admin-token-1234567890abcdef")
    with serving(app) as server:
        _browse_under_csp(browser, server.url, seeded)


def _browse_under_csp(browser, url, seeded):
    ctx, page = _page(browser)
    try:
        for path in ("/", "/how", "/archive", "/leaderboard", "/nickname"):
            page.goto(url + path)
        page.goto(url + f"/play/{seeded[0].id}")
        page.wait_for_selector("#conn[data-state=live]")
        page.locator("#caption").press_sequentially("a red square", delay=20)
        _score_shown(page)
        page.goto(url + "/admin/login")
        # The login page's inline <style> carries the nonce: its max-width rule applies.
        assert page.evaluate("getComputedStyle(document.body).maxWidth") != "none"
        assert page.csp_violations == [] and page.errors == []
    finally:
        ctx.close()


def test_page_reconnects_by_itself_across_a_gunicorn_restart(browser, redis_url, redis_client, tiny_clip, tmp_path):
    puzzles = servers.seed_today(redis_client, tiny_clip.embed_dim)
    first = servers.Gunicorn(redis_url, tmp_path, "before-deploy").wait_ready()
    port = first.port
    second = None
    ctx, page = _page(browser)
    try:
        page.goto(first.url + "/play/" + puzzles[0])
        page.wait_for_selector("#conn[data-state=live]")
        page.locator("#caption").press_sequentially("a dog", delay=20)
        _score_shown(page)
        first.proc.send_signal(signal.SIGTERM)
        page.wait_for_selector("#conn[data-state=reconnecting]", timeout=15000)
        assert first.proc.wait(20) == 0
        second = servers.Gunicorn(redis_url, tmp_path, "after-deploy", port=port).wait_ready()
        page.wait_for_selector("#conn[data-state=live]", timeout=30000)
        page.evaluate("document.getElementById('score').textContent = '–'")
        page.locator("#caption").press_sequentially(" in the rain", delay=20)
        _score_shown(page)
        assert page.errors == []
    finally:
        ctx.close()
        first.stop()
        if second is not None:
            second.stop()

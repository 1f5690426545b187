"""Your history in real headless Chromium: a player with a week behind them plays today, opens
Your history from the nav, makes a one-time code, and a second browser (a phone) enters it and
becomes the same player. Saves test-artifacts/history-*.png on every run; with
CAPTIONARY_UPDATE_SCREENSHOTS=1 it also retakes docs/screenshots/history.png (the README's
picture, off by default so a test run leaves the checkout unchanged).

The app runs for real on 127.0.0.1 (werkzeug threads, real Redis, tiny CLIP). The earlier days
are recorded through the store with the test clock moved back (submissions are only taken on
their own day), for this browser's player, read from its signed session cookie.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.system.test_browser import browser, context_factory, shot  # noqa: F401  (fixtures)

pytestmark = pytest.mark.browser
DOCS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
PHONE = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True}


def player_id(app, page) -> str:
    """This browser's player id, from its session cookie (signed, not encrypted)."""
    cookie = next(c for c in page.context.cookies() if c["name"] == app.config["SESSION_COOKIE_NAME"])
    return app.session_interface.get_signing_serializer(app).loads(cookie["value"])["player"]


def past_week(app, clock, pid) -> None:
    """Six days before today: this player plays five of them (a gap on the fourth), with two others."""
    store = app.extensions["store"]
    start = clock.t
    others = ("someone-else-aaaa", "someone-else-bbbb")
    for back, played in ((6, True), (5, True), (4, True), (3, False), (2, True), (1, True)):
        clock.t = start - back * 86400
        puzzles = store.puzzles_for(store.today())
        for i, other in enumerate(others):
            store.submit(other, puzzles[0].id, f"their caption {back}", 0.18 + 0.03 * i)
        if back % 2:  # on odd days the second other player plays two puzzles well, and ranks above
            store.submit(others[1], puzzles[1].id, f"their second caption {back}", 0.30)
        if played:
            for j, p in enumerate(puzzles[:2]):
                store.submit(pid, p.id, f"my caption on day -{back}, puzzle {j + 1}", 0.10 + 0.02 * (6 - back) + 0.05 * j)
    clock.t = start


def test_history_then_carry_it_to_a_second_browser(app, live_server, seeded, context_factory, clock):  # noqa: F811
    page = context_factory()
    page.goto(live_server.url + "/")
    past_week(app, clock, player_id(app, page))

    p = seeded[0]
    page.goto(f"{live_server.url}/play/{p.date}/{p.index}")
    page.wait_for_selector("#conn[data-state=live]")
    page.locator("#caption").press_sequentially("a red square on a wall", delay=20)
    page.wait_for_function("/^-?\\d\\.\\d{4}$/.test(document.getElementById('score').textContent)")
    page.locator("#submit-btn").click()
    page.wait_for_function("document.getElementById('rank').textContent.trim() === '1'")

    page.get_by_role("link", name="Your history").click()
    page.wait_for_url(re.compile(r"/me$"))
    assert page.locator("#days-played").inner_text() == "6"
    assert page.locator("#current-streak").inner_text() == "3"  # days -2, -1 and today
    assert page.locator("#longest-streak").inner_text() == "3"
    assert page.locator("#days-table tbody tr").count() == 6
    assert page.locator("svg[aria-labelledby='chart-title chart-desc'] circle").count() == 6
    assert "their caption" not in page.locator("main").inner_text()

    page.locator("#make-code").click()
    code = page.locator("#carry-code").inner_text().strip()
    assert re.fullmatch(r"[A-Z2-9]{4}-[A-Z2-9]{4}", code)
    if os.environ.get("CAPTIONARY_UPDATE_SCREENSHOTS") == "1":
        DOCS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(DOCS / "history.png"), full_page=True)
    shot(page, "history-code")
    best = page.locator("#best-caption").inner_text()

    phone = context_factory(**PHONE)
    phone.goto(live_server.url + "/carry")
    assert phone.locator("#code").get_attribute("autocomplete") == "one-time-code"
    phone.locator("#code").fill("0000-0000")
    phone.locator("#use-code").click()
    assert "never contain" in phone.locator("#code-error").inner_text()
    phone.locator("#code").fill(code.lower().replace("-", " "))
    phone.keyboard.press("Enter")
    phone.wait_for_url(re.compile(r"/me$"))
    assert phone.evaluate("document.body.dataset.player") == page.evaluate("document.body.dataset.player")
    assert phone.locator("#days-played").inner_text() == "6"
    assert phone.locator("#best-caption").inner_text() == best
    assert phone.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth + 1")
    assert phone.get_by_role("button", name="Switch back to it").count() == 0  # its cookie had played nothing
    shot(phone, "history-phone")

    # The code worked once: a third browser is told so.
    third = context_factory()
    third.goto(live_server.url + "/carry")
    third.locator("#code").fill(code)
    third.locator("#use-code").click()
    assert "already used" in third.locator("#code-error").inner_text()
    for pg in (page, phone, third):
        assert pg.console_errors == [] and pg.dialogs == []

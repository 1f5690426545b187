"""Browser tests in real headless Chromium (Debian's /usr/bin/chromium via Playwright's sync API).

The app runs for real on 127.0.0.1 (werkzeug threads, real Redis, tiny CLIP);
the pages' own JavaScript opens the websocket. Screenshots of the main pages
land in test-artifacts/ (gitignored) for people to look at.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest


pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("CAPTIONARY_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
XSS = "<img src=x onerror=alert(1)>"


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM} (scripts/setup.sh installs the Debian package)")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update"])
        yield browser
        browser.close()


@pytest.fixture
def context_factory(browser):
    contexts = []

    def make(**kwargs):
        kwargs.setdefault("viewport", {"width": 1200, "height": 900})
        # Off: the tests' own wait_for_function strings need eval, and the escaping tests must
        # prove the markup is inert by itself, not merely that the CSP blocks it.
        kwargs.setdefault("bypass_csp", True)
        ctx = browser.new_context(**kwargs)
        contexts.append(ctx)
        page = ctx.new_page()
        page.dialogs = []
        page.on("dialog", lambda d: (page.dialogs.append(d.message), d.dismiss()))
        page.console_errors = []
        page.on("pageerror", lambda exc: page.console_errors.append(str(exc)))
        return page

    yield make
    for ctx in contexts:
        ctx.close()


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def score_value(page) -> str:
    return page.locator("#score").inner_text().strip()


def test_new_player_types_sees_live_score_and_submits(live_server, seeded, context_factory):
    page = context_factory()
    page.goto(live_server.url + "/")
    assert page.locator(".card").count() == 3
    shot(page, "today")
    page.locator(".card-link").first.click()
    page.wait_for_url(re.compile(r"/play/\d{4}-\d{2}-\d{2}/1$"))
    page.wait_for_selector("#conn[data-state=live]")
    assert score_value(page) == "–"

    page.locator("#caption").press_sequentially("a red square", delay=30)
    page.wait_for_function("/^-?\\d\\.\\d{4}$/.test(document.getElementById('score').textContent)")
    first = score_value(page)
    page.locator("#caption").press_sequentially(" on a white wall at night", delay=30)
    page.wait_for_function(f"document.getElementById('score').textContent !== '{first}'")
    second = score_value(page)
    assert re.fullmatch(r"-?\d\.\d{4}", second) and second != first
    width = page.locator("#score-bar").evaluate("el => el.style.width")
    assert width.endswith("%")

    page.locator("#submit-btn").click()
    page.wait_for_function("document.getElementById('rank').textContent.trim() === '1'")
    assert page.locator("#left").inner_text() == "2"
    submitted = score_value(page)  # the result's score (the live one may have been a shorter draft's)
    assert page.locator("#best").inner_text() == submitted
    assert "rank 1" in page.locator("#message").inner_text()
    assert page.locator("#attempts li").count() == 1
    assert page.locator("#board li.you").count() == 1
    page.locator("#hint-btn").click()
    page.wait_for_selector("#hint-used:not([hidden])")
    assert page.locator("#hint-word-inline").inner_text() == seeded[0].hint_word
    shot(page, "play")
    # The announcement for screen readers follows once typing pauses.
    page.wait_for_function("document.getElementById('score-announce').textContent.startsWith('Score ')")
    assert page.console_errors == [] and page.dialogs == []

    page.goto(live_server.url + "/")
    assert "Your best" in page.locator(".card").first.inner_text()
    share = page.locator("#share-text").inner_text()
    assert submitted in share and "red square" not in share


def test_second_browser_sees_the_board_update_without_reloading(live_server, seeded, context_factory):
    p = seeded[1]
    watcher = context_factory()
    watcher.goto(f"{live_server.url}/play/{p.date}/{p.index}")
    watcher.wait_for_selector("#conn[data-state=live]")
    board_page = context_factory()
    board_page.goto(f"{live_server.url}/leaderboard/{p.date}")
    assert watcher.locator("#board li").count() == 0
    # Give the leaderboard page a moment to subscribe (its websocket opens after load).
    board_page.wait_for_function("document.readyState === 'complete'")

    player = context_factory()
    player.goto(f"{live_server.url}/nickname")
    player.locator("#nickname").fill("Grace")
    player.locator("button[type=submit]").click()
    player.goto(f"{live_server.url}/play/{p.date}/{p.index}")
    player.wait_for_selector("#conn[data-state=live]")
    board_page.wait_for_timeout(300)
    player.locator("#caption").fill("green square, secret words")
    player.locator("#caption").press("Enter")
    player.wait_for_function("document.getElementById('rank').textContent.trim() === '1'")

    watcher.wait_for_selector("#board li")
    row = watcher.locator("#board li").first.inner_text()
    assert "Grace" in row and "secret" not in row
    board_page.wait_for_selector(f'[data-board="{p.id}"] li')
    assert "Grace" in board_page.locator(f'[data-board="{p.id}"]').inner_text()
    board_page.wait_for_selector("[data-daily] li")  # the day's sums follow the push too
    assert "Grace" in board_page.locator("[data-daily]").inner_text()
    shot(board_page, "leaderboard")
    assert watcher.console_errors == [] and board_page.console_errors == []


def test_script_in_a_caption_stays_inert_text_on_the_reveal(app, live_server, seeded, context_factory, clock):
    gan = next(p for p in seeded if p.kind == "gan")
    page = context_factory()
    page.goto(f"{live_server.url}/play/{gan.date}/{gan.index}")
    page.wait_for_selector("#conn[data-state=live]")
    page.locator("#caption").fill(XSS)
    page.locator("#submit-btn").click()
    page.wait_for_function("document.getElementById('rank').textContent.trim() === '1'")
    # Your own attempt list shows it as text too.
    assert page.locator("#attempts li .cap").first.inner_text() == XSS
    for i in range(3):
        other = app.test_client()
        other.get("/")
        other.post("/api/submit", json={"puzzle": gan.id, "caption": f"an honest caption {i}"})
    clock.advance(days=1)

    page.goto(f"{live_server.url}/reveal/{gan.date}")
    caps = page.locator(".reveal q.cap").all_inner_texts()
    assert XSS in caps
    assert page.locator(".reveal img[src='x']").count() == 0
    assert page.evaluate("() => document.querySelectorAll('img[onerror]').length") == 0
    assert page.locator(".histogram svg").count() >= 1
    shot(page, "reveal")
    page.goto(f"{live_server.url}/archive")
    shot(page, "archive")
    page.goto(f"{live_server.url}/leaderboard/{gan.date}")
    assert XSS in page.locator(f'[data-board="{gan.id}"]').inner_text()
    page.goto(f"{live_server.url}/how")
    shot(page, "how-to-play")
    assert page.dialogs == [] and page.console_errors == []


def test_the_game_works_over_http_when_websockets_are_blocked(live_server, seeded, context_factory):
    page = context_factory()
    # A proxy that refuses websocket upgrades: abort every /ws handshake.
    page.route(re.compile(r".*/ws$"), lambda route: route.abort())
    page.context.route(re.compile(r"^ws://.*"), lambda route: route.abort())
    page.add_init_script("window.WebSocket = function () { throw new Error('blocked by proxy'); };")
    p = seeded[2]
    page.goto(f"{live_server.url}/play/{p.date}/{p.index}")
    page.locator("#caption").press_sequentially("blue square", delay=30)
    page.wait_for_function("/^-?\\d\\.\\d{4}$/.test(document.getElementById('score').textContent)")
    page.locator("#submit-btn").click()
    page.wait_for_function("document.getElementById('rank').textContent.trim() === '1'")
    page.wait_for_selector("#conn[data-state=offline-http]")


def test_keyboard_only_and_phone_width(live_server, seeded, context_factory):
    page = context_factory(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    p = seeded[0]
    page.goto(f"{live_server.url}/play/{p.date}/{p.index}")
    page.wait_for_selector("#conn[data-state=live]")
    # No horizontal scrolling on a phone.
    assert page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth + 1")
    page.locator("#caption").focus()
    page.keyboard.type("red")
    page.wait_for_function("/^-?\\d\\.\\d{4}$/.test(document.getElementById('score').textContent)")
    page.keyboard.press("Tab")
    assert page.evaluate("() => document.activeElement.id") == "submit-btn"
    page.keyboard.press("Enter")
    page.wait_for_function("document.getElementById('rank').textContent.trim() === '1'")
    shot(page, "play-phone")

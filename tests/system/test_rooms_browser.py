"""Play with friends in real headless Chromium: a host and two friends (one on a phone-sized screen)
play two rounds to the podium using the keyboard only; on a fresh instance (starter photos only) the
create form's defaults start a game; a reveal's Why? and Where CLIP looked work in a room.
Screenshots land in test-artifacts/; with CAPTIONARY_UPDATE_SCREENSHOTS=1 the README's
docs/screenshots/room.png is retaken too (off by default, so a test run never changes tracked files).

The app runs for real on 127.0.0.1 (werkzeug threads, real Redis, tiny CLIP); the pages' own
JavaScript joins the room over /ws. The test clock stands still, so rounds end by everyone locking in.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.helpers.web import make_app, serving
from tests.system.test_browser import browser, context_factory, shot  # noqa: F401  (fixtures)

DOCS_SHOT = Path(__file__).resolve().parents[2] / "docs" / "screenshots" / "room.png"

pytestmark = pytest.mark.browser
PHONE = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True}


def seats(page) -> int:
    return page.locator("#seats li").count()


def play_round(pages, captions, number):
    """Everyone types (watching the others' bars move) and locks in with Enter; the reveal follows."""
    for page in pages:
        page.wait_for_function(f"document.getElementById('phase').textContent.startsWith('Round {number} of')")
        page.wait_for_function("!document.getElementById('caption').disabled")
    typist, watcher = pages[1], pages[2]
    typist_id = typist.evaluate("document.body.dataset.player")
    for page, caption in zip(pages, captions):
        page.locator("#caption").press_sequentially(caption, delay=20)
    # The typist's bar moved at another player's screen: a score, never the words.
    watcher.wait_for_function(f"(document.querySelector('[data-bar=\"{typist_id}\"]')||{{style:{{}}}}).style.width "
                              "&& document.querySelector('[data-bar=\"" + typist_id + "\"]').style.width !== '0%'")
    assert captions[1] not in watcher.locator("#seats").inner_text()
    for page in pages:
        page.wait_for_function("/^-?\\d\\.\\d{4}$/.test(document.getElementById('score').textContent)")
        page.locator("#caption").press("Enter")
    for page in pages:
        page.wait_for_function("!document.getElementById('reveal').hidden && "
                               "document.querySelectorAll('#reveal-list li').length === 3")


def test_three_friends_play_two_rounds_to_the_podium(live_server, archive, context_factory):  # noqa: F811
    host = context_factory()
    host.goto(live_server.url + "/rooms/")
    host.locator("#nickname").fill("Hosty")
    host.locator("#rounds").fill("2")
    host.locator("#create-btn").focus()
    host.keyboard.press("Enter")
    host.wait_for_url(re.compile(r"/rooms/[A-Z0-9]{5}$"))
    host.wait_for_selector("#conn[data-state=live]")
    link = host.locator("#room-link").inner_text()
    assert host.locator("img.qr").evaluate("img => img.complete && img.naturalWidth > 0")

    ann = context_factory()
    bob = context_factory(**PHONE)
    for page, name in ((ann, "Ann"), (bob, "Bob")):
        page.goto(link)
        page.wait_for_selector("#conn[data-state=live]")
        page.locator("#join-nickname").fill(name)
        page.locator("#join-nickname").press("Enter")
        page.wait_for_selector("#join-box[hidden]", state="attached")
    host.wait_for_function("document.querySelectorAll('#seats li').length === 3")
    shot(host, "room-lobby")
    shot(bob, "room-lobby-phone")

    host.locator("#start-btn").focus()
    host.keyboard.press("Enter")
    pages = [host, ann, bob]
    play_round(pages, ["a green field", "a red square on white", "blue sky"], 1)
    shot(ann, "room-reveal")
    shot(bob, "room-reveal-phone")
    names = ann.locator("#reveal-list").inner_text()
    assert "a red square on white" in names and "Hosty" in names and "+30" in names

    host.locator("#next-btn").focus()
    host.keyboard.press("Enter")
    play_round(pages, ["a tractor", "a raccoon", "an oil painting"], 2)
    for page in pages:
        page.wait_for_function("!document.getElementById('podium').hidden && "
                               "document.querySelectorAll('#podium-list li').length === 3")
        assert page.locator("#phase").inner_text() == "Game over"
        assert not page.console_errors
    shot(host, "room-podium")
    shot(bob, "room-podium-phone")
    # Phone width: nothing wider than the screen.
    assert bob.evaluate("document.documentElement.scrollWidth") <= 390
    # The host's "Play again" is there, and a new game starts in the lobby with the same three.
    host.locator("#again-btn").focus()
    host.keyboard.press("Enter")
    ann.wait_for_function("document.getElementById('phase').textContent.startsWith('Waiting')")
    assert seats(ann) == 3


def test_fresh_instance_room_from_the_form_defaults_shows_live_bars(tmp_path, redis_url, redis_client, clock,
                                                                   context_factory):  # noqa: F811
    """Day one of a fresh clone: the form preselects the starter photos, its default 5 rounds start,
    and a friend's bar moves on the host's screen while both type (the README's screenshot)."""
    app = make_app(tmp_path, redis_url, clock, IMPORT_STARTER_PHOTOS=True)
    store = app.extensions["store"]
    store.puzzles_for(store.today())  # as `flask play` does before serving
    with serving(app) as server:
        host = context_factory()
        host.goto(server.url + "/rooms/")
        assert host.locator("input[name=source][value=photos]").is_checked()
        assert host.locator("#rounds").input_value() == "5"
        host.locator("#nickname").fill("Hosty")
        host.locator("#create-btn").focus()
        host.keyboard.press("Enter")
        host.wait_for_url(re.compile(r"/rooms/[A-Z0-9]{5}$"))
        host.wait_for_selector("#conn[data-state=live]")
        friend = context_factory()
        friend.goto(host.locator("#room-link").inner_text())
        friend.wait_for_selector("#conn[data-state=live]")
        friend.locator("#join-nickname").fill("Ann")
        friend.locator("#join-nickname").press("Enter")
        host.wait_for_function("document.querySelectorAll('#seats li').length === 2")
        host.locator("#start-btn").focus()
        host.keyboard.press("Enter")
        for page in (host, friend):
            page.wait_for_function("document.getElementById('phase').textContent.startsWith('Round 1 of 5')")
            page.wait_for_function("!document.getElementById('caption').disabled")
        friend_id = friend.evaluate("document.body.dataset.player")
        host.locator("#caption").press_sequentially("an astronaut", delay=30)
        friend.locator("#caption").press_sequentially("a photo of a cat", delay=30)
        host.wait_for_function(f"(document.querySelector('[data-bar=\"{friend_id}\"]')||{{style:{{}}}}).style.width "
                               f"&& document.querySelector('[data-bar=\"{friend_id}\"]').style.width !== '0%'")
        host.wait_for_function("/^-?\\d\\.\\d{4}$/.test(document.getElementById('score').textContent)")
        # The round's picture is one of the starter photos, shown in full.
        assert host.locator("#picture").evaluate("img => img.complete && img.naturalWidth > 100")
        assert not host.console_errors and not friend.console_errors
        shot(host, "room-round")
        if os.environ.get("CAPTIONARY_UPDATE_SCREENSHOTS") == "1":
            host.evaluate("window.scrollTo(0, 0)")
            host.screenshot(path=str(DOCS_SHOT), full_page=True)


def test_a_page_without_websockets_follows_the_room_over_http(live_server, archive, context_factory):  # noqa: F811
    """A friend whose websocket is refused (a proxy, a policy) still sees the room: the page polls
    GET /rooms/<code>/state, so the host starting the game reaches that screen."""
    host = context_factory()
    host.goto(live_server.url + "/rooms/")
    host.locator("#nickname").fill("Hosty")
    host.locator("#rounds").fill("1")
    host.locator("#create-btn").click()
    host.wait_for_url(re.compile(r"/rooms/[A-Z0-9]{5}$"))
    host.wait_for_selector("#conn[data-state=live]")
    offline = context_factory()
    offline.route_web_socket(re.compile(r"/ws$"), lambda ws: ws.close())  # every handshake fails
    offline.goto(host.url)
    offline.wait_for_selector("#conn[data-state=offline-http]", timeout=20_000)
    assert "following the room" in offline.locator("#message").inner_text()
    host.locator("#start-btn").click()
    offline.wait_for_function("document.getElementById('phase').textContent.startsWith('Round 1 of 1')",
                              timeout=20_000)
    assert offline.locator("#caption").is_disabled()  # typing needs the live connection
    assert offline.evaluate("document.getElementById('picture').getAttribute('src')").endswith("-1.png")


def test_why_and_where_clip_looked_on_a_rooms_reveal(app, live_server, archive, context_factory):  # noqa: F811
    """After a round, every caption on the reveal has its "Why?" (word contributions, by keyboard, the
    numbers the server computes for the round's picture) and the picture its "Where CLIP looked" overlay;
    a snapshot that changes nothing closes nothing, the next round's picture drops the overlay, and the
    podium's last round has the same controls."""
    host = context_factory()
    host.goto(live_server.url + "/rooms/")
    host.locator("#nickname").fill("Hosty")
    host.locator("#rounds").fill("2")
    host.locator("#create-btn").click()
    host.wait_for_url(re.compile(r"/rooms/[A-Z0-9]{5}$"))
    host.wait_for_selector("#conn[data-state=live]")
    ann = context_factory()
    ann.goto(host.locator("#room-link").inner_text())
    ann.wait_for_selector("#conn[data-state=live]")
    ann.locator("#join-nickname").fill("Ann")
    ann.locator("#join-nickname").press("Enter")
    host.wait_for_function("document.querySelectorAll('#seats li').length === 2")
    host.locator("#start-btn").click()
    caption = "a red barn under a yellow sun"
    for page, text in ((host, "a green field"), (ann, caption)):
        page.wait_for_function("!document.getElementById('caption').disabled")
        page.locator("#caption").fill(text)
        page.locator("#caption").press("Enter")
    ann.wait_for_function("!document.getElementById('reveal').hidden && "
                          "document.querySelectorAll('#reveal-list li').length === 2")
    assert ann.locator("#reveal").get_attribute("data-explain-target")  # it came with the reveal

    reveal = ann.locator("#reveal")
    why = reveal.get_by_role("button", name=re.compile(r"Why did .a red barn under"))
    why.focus()
    ann.keyboard.press("Enter")
    words = reveal.locator("ul.words li.word")
    words.first.wait_for()
    assert why.get_attribute("aria-expanded") == "true"
    assert [w.locator(".w").inner_text() for w in words.all()] == caption.split()
    barn = words.nth(2)
    spoken = barn.locator(".sr-only").text_content().strip()
    assert re.fullmatch(r"[+−]\d\.\d{4}", spoken), spoken
    store, scorer, rooms = app.extensions["store"], app.extensions["scorer"], app.extensions["rooms"]
    code = ann.evaluate("document.getElementById('room').dataset.room")
    target = rooms.round_picture(code, 1, 1)
    image = store.target_embedding(target)
    expected = scorer.score(caption, image) - scorer.score("a red under a yellow sun", image)
    assert abs(float(spoken.replace("−", "-")) - expected) <= 5e-5
    barn.focus()
    assert barn.locator(".num").is_visible() and barn.locator(".num").inner_text() == spoken

    toggle = reveal.get_by_role("button", name="Where CLIP looked")
    toggle.focus()
    ann.keyboard.press("Enter")
    ann.wait_for_selector("#stage canvas.heat:not([hidden])")
    assert toggle.get_attribute("aria-pressed") == "true"
    assert "Bright parts" in reveal.locator(".heat-note").inner_text()
    box, img = ann.locator("canvas.heat").bounding_box(), ann.locator("#picture").bounding_box()
    assert abs(box["width"] - img["width"]) < 2 and abs(box["height"] - img["height"]) < 2
    shot(ann, "room-reveal-explained")
    # A snapshot that changes nothing on the reveal (the host's seat goes offline and back) keeps it open.
    host.reload()
    host.wait_for_selector("#conn[data-state=live]")
    ann.wait_for_timeout(500)
    assert why.get_attribute("aria-expanded") == "true" and toggle.get_attribute("aria-pressed") == "true"

    host.locator("#next-btn").click()
    ann.wait_for_function("document.getElementById('phase').textContent.startsWith('Round 2 of')")
    assert ann.locator("canvas.heat").is_hidden()  # the overlay was the last picture's
    for page, text in ((host, "a tractor"), (ann, "a raccoon")):
        page.wait_for_function("!document.getElementById('caption').disabled")
        page.locator("#caption").fill(text)
        page.locator("#caption").press("Enter")
    ann.wait_for_function("!document.getElementById('podium').hidden")
    ann.locator("#reveal").get_by_role("button", name=re.compile(r"Why did .a raccoon")).click()
    ann.locator("#reveal ul.words li.word").first.wait_for()
    assert ann.locator("#reveal").get_attribute("data-explain-target") == rooms.round_picture(code, 1, 2)
    assert not ann.console_errors and not host.console_errors

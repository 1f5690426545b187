"""Play with friends in real headless Chromium: a host and two friends (one on a phone-sized screen)
play two rounds to the podium using the keyboard only. Screenshots land in test-artifacts/.

The app runs for real on 127.0.0.1 (werkzeug threads, real Redis, tiny CLIP); the pages' own
JavaScript joins the room over /ws. The test clock stands still, so rounds end by everyone locking in.
"""
from __future__ import annotations

import re

import pytest

from tests.system.test_browser import browser, context_factory, shot  # noqa: F401  (fixtures)

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

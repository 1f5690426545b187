""""Why this score?" in real Chromium with the site's CSP on: a reveal page's word contributions
and the where-CLIP-looked overlay, by keyboard, with the screenshots the README and /how show
(docs/screenshots/explain_words.png, explain_heatmap.png, and their copies in static/how/).
Every run saves them to test-artifacts/; with CAPTIONARY_UPDATE_SCREENSHOTS=1 it also replaces
the committed ones (they differ by a few pixels from run to run, so a plain test run must not
leave every checkout with modified files).

The judge is the tiny random CLIP, so the numbers and the map are not meaningful; the test checks
that what the page shows is what the server computed.
"""
from __future__ import annotations

import io
import os
import re
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from tests.system.test_browser import browser, context_factory, shot  # noqa: F401  (fixtures)

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "screenshots"  # the README's pictures
HOW = ROOT / "game" / "web" / "static" / "how"  # the same pictures, served to the /how page
UPDATE = os.environ.get("CAPTIONARY_UPDATE_SCREENSHOTS") == "1"


def save(section, name: str) -> None:
    (ROOT / "test-artifacts").mkdir(exist_ok=True)
    section.screenshot(path=str(ROOT / "test-artifacts" / f"{name}_section.png"))
    for folder in (DOCS, HOW) if UPDATE else ():
        folder.mkdir(exist_ok=True)
        section.screenshot(path=str(folder / f"{name}.png"))


def picture(i: int) -> bytes:
    """A small scene (sky, grass, a sun, a red barn) so the overlay has something to sit on."""
    img = Image.new("RGB", (320, 240), (120 + 30 * i, 180, 235))
    d = ImageDraw.Draw(img)
    d.rectangle((0, 160, 320, 240), fill=(70, 150 - 20 * i, 60))
    d.ellipse((230, 25, 290, 85), fill=(250, 210, 60))
    d.rectangle((60 + 20 * i, 95, 150 + 20 * i, 175), fill=(170, 40, 35))
    d.polygon([(50 + 20 * i, 95), (105 + 20 * i, 55), (160 + 20 * i, 95)], fill=(120, 30, 30))
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


@pytest.fixture
def revealed(app, clock):
    """Yesterday: three pictures, four players' captions. Today runs on three other pictures."""
    store, scorer = app.extensions["store"], app.extensions["scorer"]
    for i in range(3):
        data = picture(i)
        store.add_target("photo", data, scorer.embed_image(Image.open(io.BytesIO(data))), title=f"farm {i}",
                         attribution="drawn for the test, CC0")
    puzzles = store.puzzles_for(store.today())
    captions = ["a red barn on a green farm under a bright yellow sun",
                "red barn, blue sky", "a farm", "sunny countryside with a small barn"]
    for n, caption in enumerate(captions):
        player = app.test_client()
        player.get("/")
        player.post("/api/nickname", json={"nickname": f"Farmer{n}"})
        for p in puzzles:
            assert player.post("/api/submit", json={"puzzle": p.id, "caption": caption}).status_code == 200
    clock.advance(days=1)
    for i in range(3):
        img = Image.open(io.BytesIO(picture(i))).rotate(180)  # today's pictures must be other ones
        out = io.BytesIO()
        img.save(out, "PNG")
        store.add_target("photo", out.getvalue(), scorer.embed_image(img), title=f"today {i}")
    assert {p.target_id for p in puzzles}.isdisjoint(t.target_id for t in store.puzzles_for(store.today()))
    return puzzles


def test_reveal_shows_word_contributions_and_where_clip_looked(app, live_server, revealed,
                                                              context_factory):  # noqa: F811
    page = context_factory(bypass_csp=False, viewport={"width": 1100, "height": 820})
    errors = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    day = revealed[0].date
    page.goto(f"{live_server.url}/reveal/{day}")
    section = page.locator("section.reveal").first
    caption = "a red barn on a green farm under a bright yellow sun"
    why = section.get_by_role("button", name=re.compile(r"Why did .a red barn on a green farm"))
    why.focus()
    page.keyboard.press("Enter")
    words = section.locator("ul.words li.word")
    words.first.wait_for()
    assert words.count() == len(caption.split())
    assert why.get_attribute("aria-expanded") == "true"

    # What the page says for "barn" is what the server computes (leave-one-word-out, exact scorer).
    barn = words.nth(2)
    assert barn.locator(".w").inner_text() == "barn"
    spoken = barn.locator(".sr-only").text_content().strip()  # what a screen reader hears after the word
    assert re.fullmatch(r"[+−]\d\.\d{4}", spoken), spoken
    store, scorer = app.extensions["store"], app.extensions["scorer"]
    image = store.target_embedding(revealed[0].target_id)
    without = "a red on a green farm under a bright yellow sun"
    expected = scorer.score(caption, image) - scorer.score(without, image)
    shown = float(spoken.replace("−", "-"))
    assert abs(shown - expected) <= 5e-5  # four decimals shown
    barn.focus()  # keyboard focus shows the number
    assert barn.locator(".num").is_visible()
    assert barn.locator(".num").inner_text() == spoken
    shot(page, "explain_words")
    save(section, "explain_words")

    toggle = section.get_by_role("button", name="Where CLIP looked")
    toggle.focus()
    page.keyboard.press("Enter")
    page.wait_for_selector("section.reveal canvas.heat:not([hidden])")
    assert toggle.get_attribute("aria-pressed") == "true"
    assert "Bright parts" in section.locator(".heat-note").inner_text()
    box = section.locator("canvas.heat").bounding_box()
    img = section.locator("img#img-1").bounding_box()
    assert abs(box["width"] - img["width"]) < 2 and abs(box["height"] - img["height"]) < 2
    page.mouse.move(0, 0)
    shot(page, "explain_heatmap")
    save(section, "explain_heatmap")
    toggle.click()  # and off again
    assert toggle.get_attribute("aria-pressed") == "false"
    assert section.locator("canvas.heat").is_hidden()
    assert not page.console_errors and not errors, (page.console_errors, errors)


def test_practice_attempt_gets_why_and_the_heatmap(live_server, revealed, context_factory):  # noqa: F811
    """The play page adds attempts by script; each new one gets its Why? button (past day: the map too)."""
    page = context_factory(bypass_csp=False)
    p = revealed[1]
    page.goto(f"{live_server.url}/play/{p.date}/{p.index}")
    page.locator("#caption").fill("a red barn and a yellow sun")
    page.keyboard.press("Enter")
    attempt = page.locator("#attempts li").first
    attempt.locator("button.why").wait_for()
    attempt.locator("button.why").click()
    words = attempt.locator("ul.words li.word")
    words.first.wait_for()
    assert [w.locator(".w").inner_text() for w in words.all()] == "a red barn and a yellow sun".split()
    toggle = attempt.get_by_role("button", name="Where CLIP looked")
    toggle.click()
    page.wait_for_selector("canvas.heat:not([hidden])")
    assert toggle.get_attribute("aria-pressed") == "true"
    assert not page.console_errors

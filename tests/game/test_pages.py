"""Server-rendered pages (Flask test client): today, play, leaderboards, reveal, archive, FAQ, nickname."""
from __future__ import annotations

import re


XSS = "<img src=x onerror=alert(1)>"


def text(resp) -> str:
    assert resp.status_code == 200, resp.status_code
    return resp.get_data(as_text=True)


def test_today_shows_the_days_cards_with_your_best(client, seeded):
    page = text(client.get("/"))
    for p in seeded:
        assert f'href="/play/{p.date}/{p.index}"' in page and f"/target/{p.target_id}.png" in page
    assert page.count("Not played yet") == 3
    client.post("/api/submit", json={"puzzle": seeded[0].id, "caption": "red"})
    page = text(client.get("/"))
    assert page.count("Not played yet") == 2 and "Your best" in page and "rank 1" in page
    assert "Your day so far" in page
    assert "Demo mode: scores are not real" in page  # test-tiny has random weights


def test_share_text_has_scores_and_squares_but_no_captions(client, seeded):
    client.get("/")
    caption = "a very secret winning caption"
    score = client.post("/api/submit", json={"puzzle": seeded[0].id, "caption": caption}).get_json()["score"]
    page = text(client.get("/"))
    share = re.search(r'<pre id="share-text"[^>]*>(.*?)</pre>', page, re.S).group(1)
    assert f"{score:.4f}" in share and seeded[0].date in share
    assert "secret" not in share and "⬛⬛⬛⬛⬛ –" in share
    gan = [p for p in seeded if p.kind == "gan"]
    assert ("Beat the machine: 0/1" in share) == bool(gan)


def test_play_page_has_the_accessible_controls(client, seeded):
    p = seeded[0]
    page = text(client.get(f"/play/{p.date}/{p.index}"))
    assert '<label id="caption-label" for="caption">' in page
    assert 'aria-live="polite"' in page and 'id="score"' in page and 'id="hint-btn"' in page
    assert 'data-puzzle="%s"' % p.id in page and 'data-ws="/ws"' in page and 'data-api="/api"' in page
    assert "Submissions left" in page and 'alt="The puzzle image' in page
    assert client.get(f"/play/{p.date}/9").status_code == 404
    assert client.get("/play/not-a-day/1").status_code == 404
    assert client.get("/play/2999-01-01/1").status_code == 404


def test_captions_stay_hidden_on_boards_while_the_day_runs(client, seeded):
    client.get("/")
    client.post("/api/nickname", json={"nickname": "Ada"})
    client.post("/api/submit", json={"puzzle": seeded[0].id, "caption": "my hidden words"})
    board = text(client.get(f"/leaderboard/{seeded[0].date}"))
    assert "Ada" in board and "my hidden words" not in board
    play = text(client.get(f"/play/{seeded[0].date}/{seeded[0].index}"))
    assert "my hidden words" in play  # your own attempts are yours to see
    assert client.get("/leaderboard", follow_redirects=True).status_code == 200
    assert client.get("/leaderboard/2999-01-01").status_code == 404


def test_reveal_after_the_day_escapes_captions_and_draws_the_histogram(app, client, seeded, clock):
    gan = next(p for p in seeded if p.kind == "gan")
    client.get("/")
    client.post("/api/nickname", json={"nickname": "Mallory"})
    client.post("/api/submit", json={"puzzle": gan.id, "caption": XSS})
    for i in range(4):
        other = app.test_client()
        other.get("/")
        other.post("/api/submit", json={"puzzle": gan.id, "caption": f"honest caption {i}"})
    # While the day runs the reveal sends you to the live board.
    assert client.get(f"/reveal/{gan.date}").status_code == 302
    clock.advance(days=1)
    page = text(client.get(f"/reveal/{gan.date}"))
    assert XSS not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "a raccoon driving a tractor" in page  # the machine's prompt is revealed
    assert re.search(r"players? beat it", page)
    assert "<svg" in page and 'role="img"' in page and "Best scores of all 5 players" in page
    assert "honest caption 3" in page
    board = text(client.get(f"/leaderboard/{gan.date}"))
    assert "honest caption 0" in board and XSS not in board


def test_archive_lists_past_days_as_practice(client, seeded, clock):
    client.get("/")
    assert "No past days yet" in text(client.get("/archive"))
    clock.advance(days=1)
    page = text(client.get("/archive"))
    assert seeded[0].date in page and f"/play/{seeded[0].date}/1" in page
    play = text(client.get(f"/play/{seeded[0].date}/1"))
    assert "practice" in play and "Submissions left" not in play


def test_nickname_form_validates_and_escapes(client, seeded):
    client.get("/")
    bad = client.post("/nickname", data={"nickname": "<b>x</b>"})
    assert bad.status_code == 400 and "letters, digits" in bad.get_data(as_text=True)
    assert "<b>x</b>" not in bad.get_data(as_text=True)
    ok = client.post("/nickname", data={"nickname": "Grace H"}, follow_redirects=True)
    assert "Your nickname is now Grace H" in text(ok)


def test_how_to_play_quotes_the_2021_figures(client):
    page = text(client.get("/how"))
    for figure in ("0.370", "0.425", "0.564", "0.4565"):
        assert figure in page
    assert "keyword" in page.lower() and "cosine" in page


def test_every_page_sends_a_content_security_policy(client, seeded):
    resp = client.get("/")
    assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
    assert resp.headers["X-Content-Type-Options"] == "nosniff"


def test_target_images(client, seeded):
    resp = client.get(f"/target/{seeded[0].target_id}.png")
    assert resp.status_code == 200 and resp.mimetype == "image/png" and resp.data.startswith(b"\x89PNG")
    assert client.get("/target/nope.png").status_code == 404
    assert client.get("/target/..%2f..%2fetc.png").status_code == 404


def test_histogram_svg_is_numbers_only():
    from game.web.pages import histogram_svg
    svg = histogram_svg([0.2, 0.25, 0.25, 0.31], machine=0.3)
    assert svg.startswith("<svg") and "machine 0.3000" in svg and svg.count("<rect") == 12
    assert histogram_svg([]) == ""
    assert "<svg" in histogram_svg([0.3])

"""Your history pages (Flask test client, real Redis): /me, the chart and table, carry codes across
two browsers (/me/code, /carry), their errors and rate limits, switching back; `players reindex`."""
from __future__ import annotations

import re

import pytest

from game import history as rules

XSS = "<img src=x onerror=alert(1)>"


def text(resp, status=200) -> str:
    assert resp.status_code == status, (resp.status_code, resp.get_data(as_text=True)[:400])
    return resp.get_data(as_text=True)


def public_player(page: str) -> str:
    return re.search(r'data-player="([0-9a-f]*)"', page).group(1)


def make_code(client) -> str:
    page = text(client.post("/me/code"))
    return re.search(r'id="carry-code"[^>]*>([A-Z0-9-]+)<', page).group(1)


def test_new_player_sees_an_empty_history_linked_from_the_nav(client, seeded):
    page = text(client.get("/"))
    assert 'href="/me"' in page and "Your history" in page
    page = text(client.get("/me"))
    assert 'aria-current="page">Your history' in page
    assert re.search(r'id="days-played">0<', page) and "No days yet" in page and "chart-title" not in page


def test_history_shows_days_streaks_best_caption_chart_and_table(app, client, seeded):
    client.get("/")
    client.post("/api/submit", json={"puzzle": seeded[0].id, "caption": "a red square " + XSS})
    # Both captions carry the markup: whichever scores best (random weights) is the best caption shown.
    score = client.post("/api/submit", json={"puzzle": seeded[1].id, "caption": "green " + XSS}).get_json()["score"]
    other = app.test_client()
    other.get("/")
    other.post("/api/submit", json={"puzzle": seeded[0].id, "caption": "somebody else's secret words"})
    page = text(client.get("/me"))
    for field, value in (("days-played", 1), ("current-streak", 1), ("longest-streak", 1)):
        assert re.search(rf'id="{field}">{value}<', page), field
    assert "somebody else" not in page  # the day runs: nobody else's caption, ever
    assert XSS not in page and "&lt;img src=x onerror=alert(1)&gt;" in page  # own caption, escaped
    assert 'id="best-caption"' in page
    # The chart: accessible SVG (title and desc), and a table of the same numbers.
    svg = re.search(r"<svg[^>]*aria-labelledby=\"chart-title.*?</svg>", page, re.S).group(0)
    assert 'role="img"' in svg and '<title id="chart-title">' in svg and '<desc id="chart-desc">' in svg
    assert "<script" not in svg and svg.count("<circle") == 1
    table = re.search(r'<table class="history-table" id="days-table">.*?</table>', page, re.S).group(0)
    day = seeded[0].date
    assert f">{day}</a> (today)" in table and "of 2</td>" in table and "%</td>" in table
    assert f"{score:.4f}" in table and "not played" in table  # the third puzzle
    assert "Percentile is the share" in page


def test_chart_breaks_the_line_on_days_not_played():
    from game.store.history import DayResult
    from game.web.history import score_chart_svg
    days = [DayResult(date=f"2026-06-{d:02d}", epoch_day=d, total=0.1 * d, rank=1, players=2, percentile=100.0)
            for d in (1, 2, 3, 7, 8)]
    svg = score_chart_svg(days)
    assert svg.count("<polyline") == 2 and svg.count("<circle") == 5
    assert "2026-06-01 to 2026-06-08" in svg and "rank 1 of 2" in svg
    assert score_chart_svg([]) == ""
    assert score_chart_svg(days[:1]).count("<circle") == 1


def test_a_code_carries_the_player_to_another_browser(app, client, seeded):
    client.get("/")
    client.post("/api/submit", json={"puzzle": seeded[0].id, "caption": "carried caption"})
    mine = public_player(text(client.get("/me")))
    code = make_code(client)
    assert re.fullmatch(r"[A-Z2-9]{4}-[A-Z2-9]{4}", code)
    phone = app.test_client()
    phone.post("/api/submit", json={"puzzle": seeded[1].id, "caption": "phone's own caption"})
    form = text(phone.get(f"/carry?code={code}"))
    assert f'value="{code}"' in form and "This browser has its own history (1 day played)" in form
    resp = phone.post("/carry", data={"code": code.lower().replace("-", " ")})
    assert resp.status_code == 302 and resp.headers["Location"].endswith("/me")
    page = text(phone.get("/me"))
    assert public_player(page) == mine and "carried caption" in page and "phone&#39;s own" not in page
    assert "now shows your history from your other device" in page
    # The phone now plays as the same player: its submissions land in the one history.
    phone.post("/api/submit", json={"puzzle": seeded[2].id, "caption": "from the phone"})
    assert "from the phone" in text(client.get(f"/play/{seeded[2].date}/{seeded[2].index}"))
    # Single use: a third browser gets a clear error and keeps its own player.
    third = app.test_client()
    before = public_player(text(third.get("/me")))
    page = text(third.post("/carry", data={"code": code}), 410)
    assert "already used" in page and public_player(page) == before
    # Switching back restores the phone's earlier player, its history intact.
    assert "Switch back to it" in text(phone.get("/me"))
    phone.post("/me/switch-back")
    page = text(phone.get("/me"))
    assert public_player(page) != mine and "phone&#39;s own caption" in page


def test_a_code_typed_in_its_own_browser_changes_nothing(client, seeded):
    before = public_player(text(client.get("/me")))
    assert client.post("/carry", data={"code": make_code(client)}).status_code == 302
    page = text(client.get("/me"))
    assert public_player(page) == before and "That code was made in this browser" in page
    assert "Switch back to it" not in page


def test_code_errors_are_clear_and_change_nothing(app, client, seeded, clock):
    code = make_code(client)
    other = app.test_client()
    before = public_player(text(other.get("/me")))
    page = text(other.post("/carry", data={"code": "K7QP-M2X0"}), 400)
    assert "never contain" in page and 'role="alert"' in page
    page = text(other.post("/carry", data={"code": "AAAA-AAAA" if code != "AAAA-AAAA" else "BBBB-BBBB"}), 404)
    assert "there is no code" in page
    clock.advance(rules.CARRY_TTL_S + 1)
    page = text(other.post("/carry", data={"code": code}), 410)
    assert "has expired" in page and public_player(page) == before
    assert other.post("/me/switch-back").status_code == 302  # nothing to switch back to: same player
    page = text(other.get("/me"))
    assert public_player(page) == before and "no earlier player" in page


def test_guessing_codes_is_rate_limited_per_address(app, client, seeded):
    code = make_code(client)
    guesser = app.test_client()
    burst = int(pytest.importorskip("game.web.history").REDEEM_RATE[1])
    wrong = "AAAA-AAAA" if code != "AAAA-AAAA" else "BBBB-BBBB"
    for _ in range(burst):
        assert guesser.post("/carry", data={"code": wrong}).status_code == 404
    resp = guesser.post("/carry", data={"code": code})
    assert resp.status_code == 429 and resp.headers["Retry-After"] == "60"
    assert "too many codes tried" in text(resp, 429)
    # Another address has its own budget, and the refused try did not use the code up.
    fresh = app.test_client()
    resp = fresh.post("/carry", data={"code": code}, environ_base={"REMOTE_ADDR": "10.9.8.7"})
    assert resp.status_code == 302


def test_making_codes_is_rate_limited_per_player(client, seeded):
    from game.web.history import CREATE_RATE
    codes = {make_code(client) for _ in range(int(CREATE_RATE[1]))}
    assert len(codes) == CREATE_RATE[1]
    page = text(client.post("/me/code"), 429)
    assert "wait a minute" in page and 'id="carry-code"' not in page


def test_forms_from_other_sites_are_refused(client, seeded):
    client.get("/")
    assert client.post("/me/code", headers={"Origin": "https://evil.example"}).status_code == 403
    assert client.post("/carry", data={"code": "AAAA-AAAA"}, headers={"Origin": "https://evil.example"}).status_code == 403


def test_players_reindex_command_backfills_the_index(app, client, seeded):
    from game.store.history import HistoryStore
    store = app.extensions["store"]
    client.get("/")
    client.post("/api/submit", json={"puzzle": seeded[0].id, "caption": "old data"})
    for key in store.r.scan_iter(match=store.days_played_key("*")):
        store.r.delete(key)
    page = text(client.get("/me"))
    assert re.search(r'id="days-played">0<', page)
    result = app.test_cli_runner().invoke(args=["players", "reindex"], catch_exceptions=False)
    assert result.exit_code == 0 and "read 1 day; added 1 day to players' histories" in result.output
    assert re.search(r'id="days-played">1<', text(client.get("/me")))
    again = app.test_cli_runner().invoke(args=["players", "reindex"], catch_exceptions=False)
    assert "added 0 days" in again.output
    assert HistoryStore(store).played_days("not-a-player-at-all") == []

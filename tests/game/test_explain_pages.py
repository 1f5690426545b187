"""The pages that offer explanations (static/explain.js): where words and heatmaps are offered, and where not."""
from __future__ import annotations


def text(resp) -> str:
    assert resp.status_code == 200, resp.status_code
    return resp.get_data(as_text=True)


def test_running_day_play_page_offers_words_for_your_attempts_but_no_heatmap(client, seeded):
    p = seeded[0]
    client.get("/")
    client.post("/api/submit", json={"puzzle": p.id, "caption": "a red square"})
    page = text(client.get(f"/play/{p.date}/{p.index}"))
    assert f'data-explain="{p.id}"' in page and 'data-explain-img="target-img"' in page
    assert 'id="target-img"' in page and "/static/explain.js" in page
    assert "data-heatmap" not in page  # a running ranked day: no map to search with


def test_practice_page_offers_the_heatmap(client, archive):
    p = archive[0]
    page = text(client.get(f"/play/{p.date}/{p.index}"))
    assert f'data-explain="{p.id}"' in page and 'data-heatmap="1"' in page


def test_reveal_page_offers_both_for_every_caption(app, client, seeded, clock):
    for n in range(2):
        player = app.test_client()
        player.get("/")
        player.post("/api/submit", json={"puzzle": seeded[0].id, "caption": f"caption number {n}"})
    clock.advance(days=1)
    page = text(client.get(f"/reveal/{seeded[0].date}"))
    assert f'data-explain="{seeded[0].id}"' in page and 'data-heatmap="1"' in page
    assert 'data-explain-img="img-1"' in page and 'id="img-1"' in page
    assert page.count('class="cap"') >= 2 and "/static/explain.js" in page
    assert "Why?" in page


def test_explain_script_is_served_under_the_csp(client):
    resp = client.get("/static/explain.js")
    assert resp.status_code == 200 and "javascript" in resp.mimetype
    body = resp.get_data(as_text=True)
    assert "eval(" not in body and "innerHTML" not in body  # captions are only ever set as text
    assert "/api/explain/" in body


def test_how_page_explains_both_with_pictures(client):
    page = text(client.get("/how"))
    assert "Why did my caption score that?" in page and "Where CLIP looked" in page and "Chefer" in page
    for name in ("explain_words.png", "explain_heatmap.png"):
        assert f"/static/how/{name}" in page
        resp = client.get(f"/static/how/{name}")
        assert resp.status_code == 200 and resp.mimetype == "image/png"

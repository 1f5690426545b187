"""Play with friends pages (Flask test client, real Redis, tiny CLIP): create, join by code, the room
page, the QR code and the round pictures (none before its round begins)."""
from __future__ import annotations



def create(client, **form):
    data = {"nickname": "Hosty", "rounds": "2", "seconds": "60", "source": "archive"} | form
    return client.post("/rooms/", data=data)


def test_create_page_offers_only_sources_with_pictures(client, archive):
    page = client.get("/rooms/")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "Play with friends" in html and 'value="archive" checked' in html
    assert 'value="photos"' in html and "disabled" in html  # no starter photos in this test app


def test_create_redirects_to_the_room_page_with_link_code_and_qr(client, app, archive):
    resp = create(client)
    assert resp.status_code == 302
    path = resp.headers["Location"]
    code = path.rsplit("/", 1)[1]
    page = client.get(path)
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and code in html and 'data-member="true"' in html
    assert f"/rooms/{code}/qr.svg" in html and 'aria-live="assertive"' in html
    qr = client.get(f"/rooms/{code}/qr.svg")
    assert qr.status_code == 200 and qr.mimetype == "image/svg+xml" and b"<svg" in qr.data
    # Lower case in a link still finds the room; the code box joins by code.
    assert client.get(f"/rooms/{code.lower()}").status_code == 302
    assert client.get(f"/rooms/?code={code.lower()}").headers["Location"].endswith(f"/rooms/{code}")


def test_bad_forms_and_codes_get_clear_errors_and_create_nothing(client, app, archive):
    for form, text in (({"nickname": ""}, "nickname"), ({"nickname": "x"}, "at least"),
                       ({"rounds": "x"}, "whole number"), ({"rounds": "4"}, "choose at most 3 rounds"),
                       ({"seconds": "3"}, "seconds"), ({"source": "tomorrow"}, "source")):
        resp = create(client, **form)
        assert resp.status_code == 400 and text in resp.get_data(as_text=True), form
    assert not list(app.extensions["redis"].scan_iter(match="cap:room:*"))
    assert app.extensions["store"].nickname(player_of(client)) is None  # a refused room saves no nickname
    assert client.get("/rooms/?code=ZZZZZ").status_code == 404
    assert "no room" in client.get("/rooms/?code=bad!").get_data(as_text=True)
    assert client.get("/rooms/QQQQQ").status_code == 404


def test_round_pictures_are_served_only_once_their_round_began(client, app, archive):
    code = create(client).headers["Location"].rsplit("/", 1)[1]
    rooms = app.extensions["rooms"]
    assert client.get(f"/rooms/{code}/picture/1-1.png").status_code == 404  # lobby: nothing yet
    rooms.host_action(rooms.rooms.read(code).host, {"type": "room_start", "room": code})
    first = client.get(f"/rooms/{code}/picture/1-1.png")
    assert first.status_code == 200 and first.mimetype == "image/png"
    assert client.get(f"/rooms/{code}/picture/1-2.png").status_code == 404  # round 2 has not begun
    assert client.get(f"/rooms/{code}/picture/2-1.png").status_code == 404  # no second game yet


def player_of(client) -> str:
    with client.session_transaction() as session:
        return session["player"]


def test_fresh_instance_form_preselects_the_starter_photos_and_says_how_many(tmp_path, redis_url, redis_client,
                                                                          clock):
    """Day one of a fresh clone: no past day to draw from, so the form offers the starter photos, with
    enough pictures for the default five rounds, and says how many each source has."""
    from tests.helpers.web import make_app
    app = make_app(tmp_path, redis_url, clock, IMPORT_STARTER_PHOTOS=True)
    store = app.extensions["store"]
    store.puzzles_for(store.today())
    photos_count = app.extensions["rooms"].source_counts()["photos"]
    assert photos_count >= 8
    html = " ".join(app.test_client().get("/rooms/").get_data(as_text=True).split())
    assert 'value="photos" checked' in html and 'value="archive" checked' not in html
    assert f"({photos_count} pictures: up to {photos_count} rounds)" in html
    assert "(no pictures yet)" in html  # the archive and the machine's pictures, on day one


def test_room_state_json_is_the_http_fallback(client, app, archive):
    """GET /rooms/<code>/state: the snapshot /ws pushes, for a page whose websocket cannot connect."""
    code = create(client).headers["Location"].rsplit("/", 1)[1]
    resp = client.get(f"/rooms/{code.lower()}/state")
    assert resp.status_code == 200 and resp.headers["Cache-Control"] == "no-store"
    state = resp.get_json()
    assert state == {**app.extensions["rooms"].state(code), "now": state["now"]}
    assert state["type"] == "room" and state["phase"] == "lobby"
    assert [p["nickname"] for p in state["players"]] == ["Hosty"]
    rooms = app.extensions["rooms"]
    rooms.host_action(rooms.rooms.read(code).host, {"type": "room_start", "room": code})
    running = client.get(f"/rooms/{code}/state").get_json()
    assert running["phase"] == "round" and running["picture"].endswith("-1.png") and running["ends_at"] > running["now"]
    for bad in ("ZZZZZ" if code != "ZZZZZ" else "YYYYY", "bad!"):
        missing = client.get(f"/rooms/{bad}/state")
        assert missing.status_code == 404
        assert missing.get_json()["code"] == "unknown_room" and missing.get_json()["message"]

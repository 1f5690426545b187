"""Fair play, as a curious player would try it: the image bytes, other dates in the URL, the pool.

Nothing secret of a running day (a GAN target's prompt or seed) reaches a player in any
page, API reply, header or image; only real puzzle days are playable; pool targets that no
player has been shown are not served.
"""
from __future__ import annotations

import io
import json

import numpy as np
from PIL import Image

from engine.images import has_png_metadata, png_chunk_types, png_with_metadata
from game import puzzles as pz
from tests.helpers.images import png_bytes

PROMPT = "a secret zebra playing the bagpipes"
SEED = 424242


def _gan_png(color) -> bytes:
    """A PNG as the engine writes it: provenance in text chunks, the prompt among them."""
    image = Image.new("RGB", (48, 40), color)
    return png_with_metadata(image, {"prompt": PROMPT, "seed": str(SEED), "settings": '{"size": 48}',
                                     "Comment": "made by captionary"})


def _photo_with_exif_and_icc(color) -> bytes:
    image = Image.new("RGB", (48, 40), color)
    exif = Image.Exif()
    exif[0x010E] = "GPS home of the photographer"  # ImageDescription
    out = io.BytesIO()
    image.save(out, "PNG", exif=exif, icc_profile=b"\0" * 128)
    return out.getvalue()


def _add(app, kind, data):
    store, scorer = app.extensions["store"], app.extensions["scorer"]
    emb = scorer.embed_image(Image.open(io.BytesIO(data)))
    extra = {"prompt": PROMPT, "self_score": 0.3, "seed": SEED} if kind == "gan" else {}
    return store.add_target(kind, data, emb, title=None if kind == "gan" else "a photo", **extra)


def _gan_day(app):
    """Today: a GAN target made with metadata and two photos carrying EXIF and an ICC profile."""
    _add(app, "gan", _gan_png((30, 200, 90)))
    _add(app, "photo", _photo_with_exif_and_icc((200, 30, 30)))
    _add(app, "photo", _photo_with_exif_and_icc((30, 30, 200)))
    store = app.extensions["store"]
    return store.puzzles_for(store.today())


def test_served_images_carry_no_metadata_and_no_prompt(app, client):
    puzzles = _gan_day(app)
    assert {p.kind for p in puzzles} == {"gan", "photo"}
    for p in puzzles:
        resp = client.get(f"/target/{p.target_id}.png")
        assert resp.status_code == 200
        data = resp.get_data()
        assert png_chunk_types(data) == [b"IHDR", b"IDAT", b"IEND"]
        assert not has_png_metadata(data)
        for secret in (PROMPT.encode(), b"zebra", str(SEED).encode(), b"GPS", b"captionary"):
            assert secret not in data
        with Image.open(io.BytesIO(data)) as img:
            assert not img.info.get("exif") and not img.info.get("icc_profile") and not getattr(img, "text", {})
    # Admins keep everything: the prompt and seed live in Redis with the target.
    store = app.extensions["store"]
    gan = store.get_target(next(p.target_id for p in puzzles if p.kind == "gan"))
    assert gan.prompt == PROMPT and gan.seed == SEED


def test_no_page_reply_or_header_of_a_running_day_names_the_prompt(app, client):
    puzzles = _gan_day(app)
    gan = next(p for p in puzzles if p.kind == "gan")
    client.get("/")
    client.post("/api/submit", json={"puzzle": gan.id, "caption": "zebra"})
    urls = ["/", f"/play/{gan.date}/{gan.index}", f"/leaderboard/{gan.date}", f"/reveal/{gan.date}", "/archive",
            f"/api/state?puzzle={gan.id}", "/api/status", f"/target/{gan.target_id}.png"]
    for url in urls:
        resp = client.get(url, follow_redirects=True)
        blob = resp.get_data() + json.dumps(dict(resp.headers)).encode()
        for secret in (b"secret zebra", b"bagpipes", str(SEED).encode()):
            assert secret not in blob, (url, secret)
    hint = client.post("/api/hint", json={"puzzle": gan.id}).get_data()
    assert b"bagpipes" not in hint and gan.target_id not in PROMPT


def test_only_real_puzzle_days_are_playable_and_walking_dates_writes_nothing(app, client, clock):
    puzzles = _gan_day(app)
    redis = app.extensions["redis"]
    client.get("/")
    before = {k: redis.type(k) for k in redis.keys("*") if not k.startswith(b"cap:rl:")}
    today = puzzles[0].date
    for back in (-400, -2, -1, 1, 2, 30):
        day = pz.add_days(today, back)
        for url in (f"/play/{day}/1", f"/leaderboard/{day}", f"/reveal/{day}"):
            resp = client.get(url, follow_redirects=True)
            assert resp.status_code == 404, url
        reply = client.post("/api/submit", json={"puzzle": f"{day}/1", "caption": "walk"}).get_json()
        assert reply["type"] == "error" and reply["code"] in ("unknown_puzzle", "not_yet")
    after = {k: redis.type(k) for k in redis.keys("*") if not k.startswith(b"cap:rl:")}
    assert after == before
    # A real past puzzle day stays playable, as practice.
    clock.advance(days=1)
    assert client.get(f"/play/{today}/1").status_code == 200


def test_pool_targets_are_served_to_nobody_until_their_day(app, client, clock):
    _gan_day(app)
    store = app.extensions["store"]
    unseen = [_add(app, "photo", png_bytes((i * 40, 90, 90), size=(48, 40))) for i in range(1, 4)]
    for tid in unseen:
        assert client.get(f"/target/{tid}.png").status_code == 404
    assert client.get("/target/tnothere.png").status_code == 404
    tomorrow = pz.add_days(store.today(), 1)
    store.schedule(tomorrow, unseen[:1])
    assert client.get(f"/target/{unseen[0]}.png").status_code == 404  # scheduled is not shown
    clock.advance(days=1)
    app.extensions["game"]._shown = (-1e9, frozenset())  # the per-process copy lives a few seconds
    assert client.get(f"/target/{unseen[0]}.png").status_code == 200
    assert client.get(f"/target/{unseen[1]}.png").status_code == 404


def test_an_image_stored_before_cleaning_is_cleaned_when_served(app, client):
    puzzles = _gan_day(app)
    gan = next(p for p in puzzles if p.kind == "gan")
    redis = app.extensions["redis"]
    redis.set(f"cap:target:{gan.target_id}:image", _gan_png((30, 200, 90)))  # as an older version stored it
    data = client.get(f"/target/{gan.target_id}.png").get_data()
    assert b"zebra" not in data and not has_png_metadata(data)
    assert not has_png_metadata(redis.get(f"cap:target:{gan.target_id}:image"))
    with Image.open(io.BytesIO(data)) as img:
        assert np.asarray(img.convert("RGB"))[0, 0].tolist() == [30, 200, 90]


def test_target_ids_are_random_not_derived_from_the_prompt(app):
    store = app.extensions["store"]
    a = _add(app, "gan", _gan_png((1, 2, 3)))
    b = _add(app, "gan", _gan_png((3, 2, 1)))
    assert a != b and PROMPT.split()[1] not in a + b
    assert store.get_target(a).prompt == store.get_target(b).prompt == PROMPT

"""Photo validation and normalisation; the starter photos and their idempotent import; hints."""
import io
import struct
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from game import hints, photos
from game.photos import PhotoError, normalize_photo
from game.store import Store

ASSETS = Path(__file__).resolve().parents[2] / "assets"


def _encode(img, fmt, **kw):
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png_claiming(width, height, *, real_rows=False) -> bytes:
    """A PNG whose header claims width x height greyscale pixels. With real_rows the
    (all-zero) pixel data is really there, compressed ~1000:1: a true decompression bomb."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    if real_rows:
        comp = zlib.compressobj(9)
        row = b"\0" * (width + 1)
        idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    else:
        idat = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def test_jpeg_becomes_an_rgb_png_no_larger_than_768():
    out = normalize_photo(_encode(Image.new("RGB", (1200, 600), (10, 120, 200)), "JPEG"))
    img = Image.open(io.BytesIO(out))
    assert (img.format, img.mode, img.size) == ("PNG", "RGB", (768, 384))


def test_small_photos_keep_their_size_and_transparency_becomes_white():
    rgba = Image.new("RGBA", (100, 80), (255, 0, 0, 0))
    rgba.putpixel((0, 0), (255, 0, 0, 255))
    img = Image.open(io.BytesIO(normalize_photo(_encode(rgba, "PNG"))))
    assert img.size == (100, 80) and img.mode == "RGB"
    assert img.getpixel((50, 50)) == (255, 255, 255) and img.getpixel((0, 0)) == (255, 0, 0)
    grey = Image.open(io.BytesIO(normalize_photo(_encode(Image.new("L", (64, 64), 90), "PNG"))))
    assert grey.mode == "RGB" and grey.getpixel((3, 3)) == (90, 90, 90)


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (120, 60), "blue")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    out = Image.open(io.BytesIO(normalize_photo(_encode(img, "JPEG", exif=exif))))
    assert out.size == (60, 120)


@pytest.mark.parametrize("data, message", [
    (b"", "empty"),
    (b"%PDF-1.4 definitely not a picture" * 10, "not an image"),
    ("text", "bytes"),
])
def test_non_images_are_refused(data, message):
    with pytest.raises(PhotoError, match=message):
        normalize_photo(data)


def test_decompression_bombs_are_refused_before_decoding():
    # A header claiming 900 MP with almost no data behind it (Pillow's own guard trips).
    with pytest.raises(PhotoError, match="too large|MP"):
        normalize_photo(_png_claiming(30_000, 30_000))
    # A real bomb: 7000 x 7000 zero pixels, ~49 MB decoded, ~50 kB on disk; refused by our limit.
    bomb = _png_claiming(7000, 7000, real_rows=True)
    assert len(bomb) < 200_000
    with pytest.raises(PhotoError, match="49 MP"):
        normalize_photo(bomb)


def test_size_format_and_damage_limits():
    jpeg = _encode(Image.new("RGB", (200, 200), "green"), "JPEG")
    with pytest.raises(PhotoError, match="at most"):
        normalize_photo(jpeg, max_bytes=1000)
    with pytest.raises(PhotoError, match="TIFF images are not accepted"):
        normalize_photo(_encode(Image.new("RGB", (64, 64)), "TIFF"))
    with pytest.raises(PhotoError, match="32 pixels"):
        normalize_photo(_encode(Image.new("RGB", (300, 10)), "PNG"))
    png = _encode(Image.effect_noise((128, 128), 50).convert("RGB"), "PNG")
    with pytest.raises(PhotoError, match="damaged or truncated"):
        normalize_photo(png[: len(png) // 2])


def test_read_photo_names_the_file(tmp_path):
    bad = tmp_path / "holiday.jpg"
    bad.write_bytes(b"not a jpeg at all")
    with pytest.raises(PhotoError, match="holiday.jpg"):
        photos.read_photo(bad)
    with pytest.raises(PhotoError, match="no such file"):
        photos.read_photo(tmp_path / "missing.png")


def test_every_starter_photo_is_shipped_credited_and_valid():
    entries = photos.starter_manifest()
    assert 8 <= len(entries) <= 16  # rooms need pictures beyond the day's 3 (a 5-round game and more)
    attribution = (ASSETS / "photos" / "ATTRIBUTION.md").read_text()
    for entry in entries:
        assert entry["path"].is_file()
        assert entry["file"] in attribution
        assert entry["licence"].startswith(("public domain", "CC0"))
        assert entry["author"] and entry["source"] and entry["caption"]
        img = Image.open(io.BytesIO(photos.read_photo(entry["path"])))
        assert img.mode == "RGB" and max(img.size) <= 768
    shipped = {p.name for p in (ASSETS / "photos").iterdir()} - {"ATTRIBUTION.md", "photos.json"}
    assert shipped == {e["file"] for e in entries}


class CountingClip:
    """The real tiny CLIP, counting how many images it embeds (to check 'once per model')."""

    def __init__(self, clip):
        self.clip, self.model_id, self.images = clip, clip.model_id, 0
        self.lock = threading.Lock()

    def encode_images(self, images):
        with self.lock:
            self.images += len(images)
        return self.clip.encode_images(images)

    def __getattr__(self, name):  # tokenizer, model, device: the real ones
        return getattr(self.clip, name)


def test_starter_import_is_idempotent_across_concurrent_processes(redis_instance, redis_client, clock, tiny_clip):
    from game.store import server as redis_server
    counting = CountingClip(tiny_clip)
    results, errors = [], []

    def start():
        try:
            store = Store(redis_server.connect(redis_instance), tiny_clip.model_id, clock=clock)
            results.append(photos.import_starter_photos(store, counting))
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    n = len(photos.starter_manifest())
    assert sorted(len(r) for r in results) == [0, 0, n]
    assert counting.images == n  # each photo embedded exactly once
    store = Store(redis_client, tiny_clip.model_id, clock=clock)
    targets = store.list_targets()
    assert len(targets) == n and all(t.kind == "photo" and t.status == "ready" for t in targets)
    assert all(t.hint_word and t.attribution.startswith("Photo: ") and t.reference_caption for t in targets)
    assert {t.title for t in targets} >= {"Chelsea the cat", "Coffee cup"}
    assert len(store.puzzles_for(store.today())) == 3
    # Embedding matches what the model gives for the stored PNG.
    t = targets[0]
    again = tiny_clip.encode_images([Image.open(io.BytesIO(store.target_image(t.id)))])[0].numpy()
    assert np.allclose(store.target_embedding(t.id), again, atol=1e-5)


@pytest.fixture
def small_assets(tmp_path):
    """The shipped photos with a 60-word vocabulary (embedding the full one per model is slow)."""
    (tmp_path / "photos").mkdir()
    for item in (ASSETS / "photos").iterdir():
        (tmp_path / "photos" / item.name).symlink_to(item)
    (tmp_path / hints.VOCAB_NAME).write_text("\n".join(hints.load_vocab()[:60]))
    return tmp_path


def test_removed_starter_photos_stay_removed_and_other_models_embed_the_same_images(redis_client, clock,
                                                                                    tiny_clip, small_assets):
    store = Store(redis_client, tiny_clip.model_id, clock=clock)
    added = photos.import_starter_photos(store, tiny_clip, small_assets)
    store.remove_target(added[0])
    redis_client.delete(f"cap:m:{store.model_id}:starter_photos")  # as if the photo list changed
    assert photos.import_starter_photos(store, tiny_clip, small_assets) == []
    assert len(store.list_targets(status="ready")) == len(added) - 1

    class OtherModel(CountingClip):  # the same network under another model id: a second judge
        pass
    other_clip = OtherModel(tiny_clip)
    other_clip.model_id = "other-model/test"
    other = Store(redis_client, "other-model/test", clock=clock)
    with pytest.raises(ValueError, match="embedder is"):
        photos.import_starter_photos(store, other_clip, small_assets)
    embedded = photos.import_starter_photos(other, other_clip, small_assets)
    assert sorted(embedded) == sorted(added[1:])  # no new images, no revived removed one
    assert len(other.list_targets()) == len(added)


def test_hint_is_the_closest_vocabulary_word():
    words = ["cat", "rocket", "coffee"]
    vocab = np.eye(3, 4, dtype=np.float32)
    word, score = hints.compute_hint(np.array([0.1, 0.9, 0.2, 0.0]), vocab, words)
    assert word == "rocket" and score == pytest.approx(0.9 / np.linalg.norm([0.1, 0.9, 0.2]))
    with pytest.raises(ValueError):
        hints.compute_hint(np.ones(5), vocab, words)
    with pytest.raises(ValueError):
        hints.compute_hint(np.ones(4), vocab, words[:2])


def test_vocabulary_is_shipped_and_embedded_once_per_model(store, tiny_clip, monkeypatch):
    words = hints.load_vocab()
    assert len(words) >= 1000 and len({w.lower() for w in words}) == len(words)
    small = words[:40]
    monkeypatch.setattr(hints, "_memo", {})
    first = hints.vocab_matrix(store, tiny_clip, small)[1]
    assert first.shape == (40, tiny_clip.embed_dim)
    monkeypatch.setattr(hints, "_memo", {})  # a fresh process: the matrix comes from Redis

    class NoEncoding:
        model_id = tiny_clip.model_id

        def encode_images(self, images):
            raise AssertionError("images were not asked for")

        def embed_texts(self, texts):
            raise AssertionError("the vocabulary was embedded twice")
    assert np.array_equal(hints.vocab_matrix(store, NoEncoding(), small)[1], first)
    # The cached rows are the model's own text embeddings.
    ref = tiny_clip.encode_texts_reference(small[:3]).numpy()
    assert np.allclose(first[:3], ref, atol=1e-4)


def test_targets_added_later_get_a_hint_from_the_cached_vocabulary(store, tiny_clip, monkeypatch):
    from tests.helpers.images import png_bytes
    monkeypatch.setattr(hints, "_memo", {})  # a fresh process
    plain = store.add_target("photo", png_bytes((1, 1, 1)), np.ones(tiny_clip.embed_dim))
    assert store.get_target(plain).hint_word is None  # nothing cached yet for this model
    hints.vocab_matrix(store, tiny_clip)  # what the first start's photo import does
    vec = tiny_clip.encode_texts_reference(["a raccoon"])[0].numpy()
    gan = store.add_target("gan", png_bytes((2, 2, 2)), vec, prompt="a raccoon", self_score=0.5)
    expected = hints.compute_hint(vec, hints.vocab_matrix(store, tiny_clip)[1], hints.default_vocab())
    target = store.get_target(gan)
    assert (target.hint_word, target.hint_score) == (expected[0], pytest.approx(expected[1], abs=1e-6))
    assert hints.backfill_hints(store, tiny_clip) == 1  # the earlier target gets one too
    assert store.get_target(plain).hint_word

"""Photo targets: validate and normalise uploaded images; import the shipped starter photos.

`normalize_photo(data)` is the one gate every photo passes: file size first
(before any decoding), then the format (PNG, JPEG, WebP, GIF, BMP), then the
pixel count read from the header (a decompression bomb -- a small file that
claims a huge canvas -- is refused before a single pixel is decoded), then a
full decode that must succeed. The result is an RGB PNG (transparency flattened
onto white, EXIF orientation applied, metadata dropped) whose longer side is at
most `max_side` pixels.

`import_starter_photos` turns assets/photos/ (listed in photos.json, credited in
ATTRIBUTION.md) into targets on first start. Several processes may start at
once: a Redis lock serialises them, images are deduplicated by the sha256 of
their normalised PNG, and an embedding is computed only for a photo that lacks
one for the current CLIP model, so each is computed once per model. A starter
photo an admin removed is not re-imported.

`add_photos(store, scorer, paths)` is `flask targets add-photo`: every file is
checked before any is added, so a bad file means none is.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Optional

from PIL import Image, ImageOps, UnidentifiedImageError

from engine.images import png_without_metadata
from game import hints
from game.errors import AdminError

log = logging.getLogger(__name__)

ASSETS_DIR = Path(__file__).resolve().parents[1] / "assets"
MAX_FILE_BYTES = 20 * 1024 * 1024
MAX_PIXELS = 40_000_000  # ~6300 x 6300; a decoded RGB canvas of 120 MB at most
MIN_SIDE = 32
MAX_SIDE = 768
FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
IMPORT_LOCK_S = 900
MAX_TEXT_CHARS = 200  # a caption, title or attribution: what the judge scores for a caption


class PhotoError(ValueError):
    """An image that cannot become a target; the message says why."""


def normalize_photo(data: bytes, *, max_side: int = MAX_SIDE, max_bytes: int = MAX_FILE_BYTES,
                    max_pixels: int = MAX_PIXELS) -> bytes:
    """Validated image bytes -> RGB PNG bytes with the longer side <= max_side (PhotoError otherwise)."""
    if not isinstance(data, (bytes, bytearray)):
        raise PhotoError("the photo must be given as bytes")
    if len(data) == 0:
        raise PhotoError("the file is empty")
    if len(data) > max_bytes:
        raise PhotoError(f"the file is {len(data) / 1e6:.1f} MB; photos can be at most {max_bytes / 1e6:.0f} MB")
    with warnings.catch_warnings():
        # Pillow only warns between MAX_IMAGE_PIXELS and twice that; our own limit
        # below is checked from the header, so the warning adds nothing.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as probe:
                fmt, size = probe.format, probe.size
                if fmt not in FORMATS:
                    raise PhotoError(f"{fmt} images are not accepted; use one of {', '.join(FORMATS)}")
                pixels = size[0] * size[1]
                if pixels > max_pixels:
                    raise PhotoError(f"the image claims {size[0]}x{size[1]} pixels ({pixels / 1e6:.0f} MP); "
                                     f"at most {max_pixels / 1e6:.0f} MP are accepted")
                if min(size) < MIN_SIDE:
                    raise PhotoError(f"the image is {size[0]}x{size[1]}; both sides need {MIN_SIDE} pixels or more")
                probe.verify()  # structure and checksums, without decoding the pixels
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                image = _flatten(ImageOps.exif_transpose(img))
        except PhotoError:
            raise
        except Image.DecompressionBombError as exc:
            raise PhotoError(f"the image is too large to decode safely ({exc})") from None
        except UnidentifiedImageError:
            raise PhotoError("the file is not an image Captionary can read (PNG, JPEG, WebP, GIF or BMP)") from None
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise PhotoError(f"the image is damaged or truncated ({exc})") from None
    if max(image.size) > max_side:
        image.thumbnail((max_side, max_side), Image.LANCZOS)
    return png_without_metadata(image)  # EXIF, ICC profiles and comments of the upload stay behind


def _flatten(img: Image.Image) -> Image.Image:
    """Any mode -> RGB; transparent areas become white (the page background) rather than black."""
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        base = Image.new("RGB", rgba.size, (255, 255, 255))
        base.paste(rgba, mask=rgba.getchannel("A"))
        return base
    return img.convert("RGB")


def read_photo(path: str | os.PathLike, **limits) -> bytes:
    """A photo file -> normalised PNG bytes; the size is checked before the file is read."""
    path = Path(path)
    if not path.is_file():
        raise PhotoError(f"no such file: {path}")
    max_bytes = limits.get("max_bytes", MAX_FILE_BYTES)
    if path.stat().st_size > max_bytes:
        raise PhotoError(f"{path.name} is {path.stat().st_size / 1e6:.1f} MB; "
                         f"photos can be at most {max_bytes / 1e6:.0f} MB")
    try:
        return normalize_photo(path.read_bytes(), **limits)
    except PhotoError as exc:
        raise PhotoError(f"{path.name}: {exc}") from None


def add_photo(store, embedder, png: bytes, *, title: Optional[str] = None, attribution: Optional[str] = None,
              reference_caption: Optional[str] = None, vocab: Optional[list[str]] = None) -> str:
    """Embed a normalised PNG, compute its hint, add it to the pool; returns the target id."""
    emb = hints.as_embedder(embedder)
    with Image.open(io.BytesIO(png)) as img:
        vector = emb.embed_images([img.convert("RGB")])[0]
    word, score = hints.hint_for(store, emb, vector, vocab)
    return store.add_target("photo", png, vector, title=title, attribution=attribution,
                            reference_caption=reference_caption, hint_word=word, hint_score=score)


def starter_manifest(assets_dir: Optional[str | os.PathLike] = None) -> list[dict]:
    """assets/photos/photos.json: file, title, author, licence, source and a reference caption per photo."""
    folder = Path(assets_dir or ASSETS_DIR) / "photos"
    entries = json.loads((folder / "photos.json").read_text(encoding="utf-8"))
    for entry in entries:
        entry["path"] = folder / entry["file"]
    return entries


def _attribution(entry: dict) -> str:
    return f"Photo: {entry['author']} ({entry['licence']}). Source: {entry['source']}"


def import_starter_photos(store, scorer_or_clip, assets_dir: Optional[str | os.PathLike] = None) -> list[str]:
    """Import the shipped photos once (idempotent, safe from several processes); returns ids added
    or newly embedded for this store's model."""
    entries = starter_manifest(assets_dir)
    emb = hints.as_embedder(scorer_or_clip)
    if emb.model_id and emb.model_id != store.model_id:
        raise ValueError(f"the embedder is {emb.model_id} but the store keeps {store.model_id}'s embeddings")
    done_key = f"cap:m:{store.model_id}:starter_photos"
    names = sorted(e["file"] for e in entries)
    if store.r.get(done_key) == json.dumps(names).encode():
        return []  # the common case on every later start: one GET
    changed: list[str] = []
    with store.r.lock(f"cap:lock:starter_photos:{store.model_id}", timeout=IMPORT_LOCK_S,
                      blocking_timeout=IMPORT_LOCK_S):
        if store.r.get(done_key) == json.dumps(names).encode():
            return []  # another process finished the import while we waited
        vocab = hints.load_vocab(Path(assets_dir or ASSETS_DIR) / hints.VOCAB_NAME)
        for entry in entries:
            png = read_photo(entry["path"])
            sha = hashlib.sha256(png).hexdigest()
            known = store.target_by_sha(sha)
            if known is not None:
                target = store.get_target(known)
                if target.status != "pending":  # removed by an admin, or already embedded
                    continue
                with Image.open(io.BytesIO(png)) as img:
                    vector = emb.embed_images([img.convert("RGB")])[0]
                word, score = hints.hint_for(store, emb, vector, vocab)
                store.set_embedding(known, vector, hint_word=word, hint_score=score)
                changed.append(known)
                continue
            changed.append(add_photo(store, emb, png, title=entry["title"], attribution=_attribution(entry),
                                     reference_caption=entry.get("caption"), vocab=vocab))
            log.info("starter photo %s -> target %s", entry["file"], changed[-1])
        store.r.set(done_key, json.dumps(names))
    return changed


def import_on_first_start(store, scorer, logger: logging.Logger = log) -> None:
    """First start (the app factory, the worker): the shipped photos become targets, so a fresh install is playable."""
    try:
        added = import_starter_photos(store, scorer)
    except Exception:  # never keep the site down over the starter set; the log says why
        logger.exception("could not import the starter photos")
        return
    if added:
        logger.info("imported %d starter photos as targets for %s", len(added), store.model_id)


def add_photos(store, scorer, paths: list[str], *, caption: Optional[str] = None,
               title: Optional[str] = None, attribution: Optional[str] = None) -> list[str]:
    """Validate every file first, then add them all; one bad file means none is added."""
    for label, text in (("--caption", caption), ("--title", title), ("--attribution", attribution)):
        if text is not None and (not text.strip() or len(text) > MAX_TEXT_CHARS
                                 or any(ord(c) < 32 for c in text)):
            raise AdminError(f"{label} must be 1 to {MAX_TEXT_CHARS} printable characters")
    pngs, seen = [], {}
    for path in paths:
        try:
            png = read_photo(path)
        except PhotoError as exc:
            raise AdminError(f"{path}: {exc}; nothing added") from exc
        except OSError as exc:
            raise AdminError(f"{path}: cannot read it ({exc.strerror or exc}); nothing added") from exc
        sha = hashlib.sha256(png).hexdigest()
        existing = store.find_by_sha(sha)  # active targets only: a removed photo may be added again
        if existing:
            raise AdminError(f"{path} is already target {existing}; nothing added")
        if sha in seen:
            raise AdminError(f"{path} is the same image as {seen[sha]}; nothing added")
        seen[sha] = path
        pngs.append(png)
    added = []
    try:
        for png in pngs:
            added.append(add_photo(store, scorer, png, title=title, attribution=attribution,
                                          reference_caption=caption))
    except Exception:
        for target_id in added:  # keep "all or none" even if the store fails half-way
            store.remove_target(target_id)
        raise
    return added

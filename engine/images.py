"""Image input and output for generation: safe opening of user images, PNG text metadata.

Init images and image prompts come from admins and uploads, so they are
opened defensively: the header is read first and anything that is not an
image, or whose pixel count could exhaust memory when decoded (a
"decompression bomb": a tiny file that inflates to gigapixels), is refused
with a ValueError before any pixel is decoded.

Generated PNGs carry their provenance in tEXt chunks (prompt, seed, settings,
model ids, score), readable by any PNG tool and by `read_png_metadata`. That
provenance is for admins: what a game serves to players goes through
`png_without_metadata` / `strip_png_metadata` first, which keep the pixels and
nothing else (no text, EXIF, XMP, ICC profile, gamma or time chunks), because a
GAN target's text chunks hold its secret prompt.
"""
from __future__ import annotations

import io
import os
import struct
import zlib
from typing import Mapping, Union

from PIL import Image, PngImagePlugin, UnidentifiedImageError

MAX_INPUT_PIXELS = 40_000_000  # 40 MP: far above any init image we need, far below a bomb
ImageSource = Union[str, os.PathLike, bytes]


def open_user_image(source: ImageSource, what: str = "image") -> Image.Image:
    """Open and fully decode an RGB image from a path or bytes; ValueError if unusable."""
    try:
        handle = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else open(source, "rb")
    except FileNotFoundError:
        raise ValueError(f"{what} not found: {source}") from None
    except OSError as exc:
        raise ValueError(f"{what} cannot be read: {exc}") from None
    with handle:
        try:
            image = Image.open(handle)  # lazy: reads the header only
        except (UnidentifiedImageError, Image.DecompressionBombError) as exc:
            raise ValueError(f"{what} is not a readable image ({exc.__class__.__name__})") from None
        width, height = image.size
        if width < 1 or height < 1:
            raise ValueError(f"{what} has no pixels")
        if width * height > MAX_INPUT_PIXELS:
            raise ValueError(f"{what} is {width}x{height} pixels, over the {MAX_INPUT_PIXELS:,} pixel limit "
                             f"(a decompression bomb or a needlessly large file)")
        try:
            image.load()
        except (OSError, SyntaxError, Image.DecompressionBombError) as exc:
            raise ValueError(f"{what} is damaged or truncated ({exc})") from None
        return image.convert("RGB")


def png_with_metadata(image: Image.Image, metadata: Mapping[str, str]) -> bytes:
    """Encode `image` as PNG with each metadata item in a text chunk (iTXt when not Latin-1)."""
    info = PngImagePlugin.PngInfo()
    for key, value in metadata.items():
        text = str(value)
        try:
            text.encode("latin-1")
            info.add_text(key, text)
        except UnicodeEncodeError:
            info.add_itxt(key, text)
    out = io.BytesIO()
    image.save(out, format="PNG", pnginfo=info)
    return out.getvalue()


def read_png_metadata(data: bytes) -> dict[str, str]:
    """Text chunks of a PNG as a dict."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return {str(k): str(v) for k, v in getattr(image, "text", {}).items()}


# Chunks that carry pixels or how to read them; everything else (tEXt, zTXt, iTXt, eXIf,
# iCCP, gAMA, cHRM, sRGB, tIME, pHYs, private chunks...) is metadata a player must not see.
PIXEL_CHUNKS = frozenset({b"IHDR", b"PLTE", b"tRNS", b"IDAT", b"IEND"})
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_without_metadata(image: Image.Image) -> bytes:
    """Encode only the pixels of `image` as PNG: a fresh image, so nothing in `image.info` travels."""
    if image.mode not in ("RGB", "RGBA", "L", "LA"):
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    clean = Image.new(image.mode, image.size)
    clean.paste(image)
    out = io.BytesIO()
    clean.save(out, format="PNG")
    return out.getvalue()


def png_chunk_types(data: bytes) -> list[bytes]:
    """The chunk types of a PNG, in order; ValueError when the bytes are not a well-formed PNG."""
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError("not a PNG (bad signature)")
    types, pos = [], len(PNG_SIGNATURE)
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        end = pos + 12 + length
        if end > len(data):
            raise ValueError("truncated PNG chunk")
        if zlib.crc32(data[pos + 4:end - 4]) != struct.unpack(">I", data[end - 4:end])[0]:
            raise ValueError(f"bad CRC in PNG chunk {kind!r}")
        types.append(kind)
        pos = end
        if kind == b"IEND":
            break
    if not types or types[-1] != b"IEND":
        raise ValueError("PNG without IEND")
    return types


def has_png_metadata(data: bytes) -> bool:
    """True when the PNG carries any chunk besides pixels (or bytes after its end)."""
    types = png_chunk_types(data)
    return any(t not in PIXEL_CHUNKS for t in types) or _png_length(data) != len(data)


def _png_length(data: bytes) -> int:
    pos = len(PNG_SIGNATURE)
    while True:
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        pos += 12 + length
        if kind == b"IEND":
            return pos


def strip_png_metadata(data: bytes) -> bytes:
    """PNG bytes -> the same pixels re-encoded with no metadata. Idempotent: clean bytes come back equal."""
    if not has_png_metadata(data):
        return bytes(data)
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return png_without_metadata(image)

"""Image input and output for generation: safe opening of user images, PNG text metadata.

Init images and image prompts come from admins and uploads, so they are
opened defensively: the header is read first and anything that is not an
image, or whose pixel count could exhaust memory when decoded (a
"decompression bomb": a tiny file that inflates to gigapixels), is refused
with a ValueError before any pixel is decoded.

Generated PNGs carry their provenance in tEXt chunks (prompt, seed, settings,
model ids, score), readable by any PNG tool and by `read_png_metadata`.
"""
from __future__ import annotations

import io
import os
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

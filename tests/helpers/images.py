"""Small test images."""
from __future__ import annotations

import io


def png_bytes(color=(200, 40, 40), size=(32, 24)) -> bytes:
    """A small solid-colour PNG (distinct colours give distinct target images)."""
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()

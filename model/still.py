"""A start image: read a PNG or JPEG safely, then fit it to a stream's frame size.

Reading goes through Pillow, which reads a file's header before any pixel: the size is
checked against MAX_SIDE before decoding (a small file that claims 100,000 x 100,000 pixels
is refused unread), only PNG and JPEG are tried, and every failure is an `ImageError`
(protocol code "bad_image") that says what was wrong.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from model.errors import ImageError

MAX_BYTES = 4 * 1024 * 1024  # encoded size limit of a start image
MAX_SIDE = 4096  # decoded width and height limit
FORMATS = ("PNG", "JPEG")


def read_image(data: bytes, max_bytes: int = MAX_BYTES, max_side: int = MAX_SIDE) -> np.ndarray:
    """PNG or JPEG bytes -> uint8 (H, W, 3) RGB (EXIF rotation applied, alpha dropped)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not isinstance(data, bytes | bytearray):
        raise ImageError("the image must be bytes of a PNG or JPEG file", value=type(data).__name__)
    if len(data) > max_bytes:
        raise ImageError(
            f"the image is {len(data)} bytes; the limit is {max_bytes}", value=len(data)
        )
    if not data:
        raise ImageError("the image is empty", value=0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=FORMATS)  # reads the header only
            w, h = im.size
            if w > max_side or h > max_side or w < 1 or h < 1:
                raise ImageError(
                    f"the image is {w}x{h} pixels; the limit is {max_side}x{max_side}",
                    value=[w, h],
                )
            im = ImageOps.exif_transpose(im).convert("RGB")  # decodes the pixels
            return np.asarray(im, dtype=np.uint8).copy()
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError("not a PNG or JPEG image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"the image is over the limit of {max_side}x{max_side} pixels") from None
    except (OSError, ValueError, SyntaxError, Warning) as exc:
        raise ImageError(f"the image cannot be decoded: {exc}") from None


def read_image_file(path: str) -> np.ndarray:
    """read_image of a file, refusing a missing one or one over the size limit unread."""
    import os

    try:
        size = os.path.getsize(path)
    except OSError as exc:
        raise ImageError(f"cannot read the image {path}: {exc.strerror}", value=path) from None
    if size > MAX_BYTES:
        raise ImageError(f"the image {path} is {size} bytes; the limit is {MAX_BYTES}", value=path)
    with open(path, "rb") as f:
        return read_image(f.read())


def fit_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 (H, W, 3) -> uint8 (height, width, 3): scaled to cover the frame (antialiased
    when shrinking), then centre-cropped; an image of the frame's size is returned as is."""
    h, w = image.shape[:2]
    if (h, w) == (height, width):
        return np.ascontiguousarray(image)
    scale = max(height / h, width / w)
    sh, sw = max(height, round(h * scale)), max(width, round(w * scale))
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    x = F.interpolate(x, size=(sh, sw), mode="bilinear", align_corners=False, antialias=True)
    top, left = (sh - height) // 2, (sw - width) // 2
    x = x[..., top : top + height, left : left + width]
    return x[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()

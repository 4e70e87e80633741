"""A live `create`'s start image: base64 text -> the still the engine starts the stream from.

The server reads the image (model/still.py: PNG or JPEG, header first, size limits) and
fits it to the model's frame off the event loop, and completes the prompt from it where
the text encoder can; the engine process gets only the fitted uint8 array (OpenStream's
`image`), never the client's file. Anything wrong is an ImageError (`bad_image`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii

import numpy as np

from memory.stream import prepare_start_image
from model.bundle import VideoModel
from model.errors import ImageError
from model.still import read_image


def base64_limit(max_bytes: int) -> int:
    """Characters of base64 text that encode at most `max_bytes` bytes."""
    return 4 * -(-max_bytes // 3)


def decode_base64(text: object, max_bytes: int) -> bytes:
    """The file a create's "image" carries; ImageError for text that is not base64 or that
    encodes more than `max_bytes` (told from its length, before decoding)."""
    if not isinstance(text, str):
        raise ImageError("'image' must be a base64 string", value=type(text).__name__)
    if len(text) > base64_limit(max_bytes):
        raise ImageError(f"the image is over the limit of {max_bytes} bytes", value=len(text))
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ImageError("'image' must be base64 of a PNG or JPEG file") from None


async def start_image(
    model: VideoModel, prompt: str, text: object, max_bytes: int
) -> tuple[str, np.ndarray]:
    """(the prompt as used, the still fitted to the frame) for a create's "image"."""
    data = decode_base64(text, max_bytes)
    image = await asyncio.to_thread(read_image, data, max_bytes)
    return await asyncio.to_thread(prepare_start_image, model, prompt, image)

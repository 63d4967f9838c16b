"""The reference image a film starts from, sized the way SVI expects.

The authors cap the width at 832 (keeping the aspect ratio), round both sides down to multiples of 16 and resize
the whole image with PIL's default bicubic filter; the film is then rendered at that size (480×832 for a 16:9-ish
landscape image, the size the released LoRAs were trained at).
"""

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_WIDTH = 832


class ImageInputError(ValueError):
    """An input image that cannot be used; the message names the file and what to do."""


def film_size(width: int, height: int, max_width: int = MAX_WIDTH) -> tuple[int, int]:
    """(width, height) of the film for an image of this size: width capped, sides floored to multiples of 16."""
    if width > max_width:
        height, width = int(max_width * height / width), max_width
    width, height = width // 16 * 16, height // 16 * 16
    if width < 16 or height < 16:
        raise ImageInputError(f"an image of {width}x{height} is too small for a film: each side needs 16 px or more")
    return width, height


def load_reference(path: str | os.PathLike, max_width: int = MAX_WIDTH) -> torch.Tensor:
    """Read an image file as the film's first frame: uint8 `[H, W, 3]` at `film_size`.

    EXIF orientation is applied (phone photos are stored sideways) and any mode becomes RGB.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageInputError(f"image {path} does not exist: give the path of a PNG or JPEG file")
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image).convert("RGB")
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as err:
        raise ImageInputError(f"{path} is not a readable image ({err}): give a PNG or JPEG file") from err
    size = film_size(*image.size, max_width=max_width)
    return torch.from_numpy(np.asarray(image.resize(size, Image.BICUBIC)).copy())

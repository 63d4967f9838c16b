"""The reference image a film starts from, sized the way SVI expects.

The authors cap the width at 832 (keeping the aspect ratio), round both sides down to multiples of 16 and resize
the whole image with PIL's default bicubic filter; the film is then rendered at that size (480×832 for a 16:9-ish
landscape image, the size the released LoRAs were trained at).
"""

import os
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from PIL.PngImagePlugin import PngInfo

from svi_model.atomic_files import atomic_path
from svi_model.toyworld.files import DESCRIPTION_KEY

MAX_WIDTH = 832
# The size the released SVI LoRAs were trained at; "crop" normalisation produces exactly this.
FILM_SIZE = (MAX_WIDTH, 480)


class ImageInputError(ValueError):
    """An input image that cannot be used; the message names the file and what to do."""


def film_size(width: int, height: int, max_width: int = MAX_WIDTH) -> tuple[int, int]:
    """(width, height) of the film for an image of this size: width capped, sides floored to multiples of 16."""
    film_width, film_height = (max_width, int(max_width * height / width)) if width > max_width else (width, height)
    film_width, film_height = film_width // 16 * 16, film_height // 16 * 16
    if film_width < 16 or film_height < 16:
        if width > max_width:
            raise ImageInputError(
                f"an image of {width}x{height} is too wide for its height: at {max_width} px wide it is "
                f"{film_height} px tall, and each side needs 16 px or more; crop it closer to the film's 16:9 shape"
            )
        raise ImageInputError(
            f"an image of {width}x{height} is too small for a film: each side needs 16 px or more; give a larger one"
        )
    return film_width, film_height


def _film_size_of(path: Path, image: Image.Image, max_width: int) -> tuple[int, int]:
    """`film_size` of the picture at `path`, its errors naming the file."""
    try:
        return film_size(*image.size, max_width=max_width)
    except ImageInputError as err:
        raise ImageInputError(f"{path}: {err}") from None


def _open_upright_rgb(path: Path) -> Image.Image:
    """The image at `path`, EXIF orientation applied (phone photos are stored sideways), as RGB."""
    if path.is_dir():
        raise ImageInputError(
            f"image {path} is a folder: give picture files, or choose among its pictures with --source folder "
            f"--folder {path}"
        )
    if not path.is_file():
        raise ImageInputError(f"image {path} does not exist: give the path of a PNG or JPEG file")
    try:
        with Image.open(path) as image:
            return _eight_bit(ImageOps.exif_transpose(image)).convert("RGB")
    except Image.DecompressionBombError:
        raise ImageInputError(
            f"{path} has too many pixels to be opened safely (more than {2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} "
            "megapixels; it may be a decompression bomb): give a smaller picture"
        ) from None
    except (UnidentifiedImageError, OSError) as err:
        raise ImageInputError(f"{path} is not a readable image ({err}): give a PNG or JPEG file") from err


def _eight_bit(image: Image.Image) -> Image.Image:
    """16-bit greyscale pictures (PIL modes I;16 and I, from scanners and scientific cameras) scaled to 8 bits: PIL's
    own conversion to RGB clips them at 255, which turns nearly every pixel white."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        return image.convert("I").point(lambda value: value / 256).convert("L")
    return image


def picture_description(path: str | os.PathLike) -> str | None:
    """The text a PNG says about itself (its "Description" text chunk, as the toy world's pictures carry their
    caption), or None: another format, no description, or an unreadable file (reading it is reported elsewhere)."""
    try:
        with Image.open(path) as image:
            text = getattr(image, "text", {}).get(DESCRIPTION_KEY)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError):
        return None
    return text.strip() if isinstance(text, str) and text.strip() else None


def load_reference(path: str | os.PathLike, max_width: int = MAX_WIDTH) -> torch.Tensor:
    """Read an image file as the film's first frame: uint8 `[H, W, 3]` at `film_size`.

    EXIF orientation is applied (phone photos are stored sideways) and any mode becomes RGB.
    """
    image = _open_upright_rgb(Path(path))
    size = _film_size_of(Path(path), image, max_width)
    return torch.from_numpy(np.asarray(image.resize(size, Image.BICUBIC)).copy())


def normalise_reference(
    path: str | os.PathLike,
    out_path: str | os.PathLike,
    mode: Literal["fit", "crop"] = "fit",
    max_width: int = MAX_WIDTH,
) -> tuple[int, int]:
    """Write the image at `path` as the film's reference PNG at `out_path` (atomically); returns (width, height).

    "fit" keeps the whole picture: width capped at `max_width`, aspect kept, sides floored to multiples of 16 (the
    authors' recipe; 1920×1080 → 832×464). "crop" cuts the centre to the 832:480 shape the LoRAs were trained at
    and resizes to exactly 832×480 (to `film_size(832, 480, max_width)` for a smaller film). Both apply the EXIF
    orientation first and resize with bicubic filtering. A picture's description (`picture_description`) is kept.
    """
    if mode not in ("fit", "crop"):
        raise ValueError(f"mode={mode!r}: normalise with 'fit' (keep the whole picture) or 'crop' (exactly 832x480)")
    image = _open_upright_rgb(Path(path))
    if mode == "fit":
        image = image.resize(_film_size_of(Path(path), image, max_width), Image.BICUBIC)
    else:
        image = ImageOps.fit(image, film_size(*FILM_SIZE, max_width=max_width), Image.BICUBIC)
    description = picture_description(path)
    info = PngInfo()
    if description is not None:
        info.add_text(DESCRIPTION_KEY, description)
    with atomic_path(out_path) as tmp:
        image.save(tmp, format="PNG", pnginfo=info)
    return image.size

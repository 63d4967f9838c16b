"""Checks every candidate image passes before a film may start from it, whatever its source.

An image from the web can be anything: an HTML error page served as `image/jpeg`, a file cut off mid-download,
a thumbnail, a decompression bomb (a few KB on disk that decode to gigabytes), a banner, or the same photo again
at another size. `inspect_image` measures one file and says why it is unusable; `perceptual_hash` and
`hash_distance` find near-duplicates among the usable ones.

Measurements are taken after the EXIF orientation is applied, so width and height are what a viewer shows.
"""

import os
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..hashing import file_sha256

# PIL reports camera JPEGs carrying extra pictures (multi-picture format) as "MPO"; they are JPEGs to a user.
_FORMAT_ALIASES = {"MPO": "JPEG"}

# Errors PIL raises for files it recognises but cannot read to the end.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, IndexError, EOFError)


@dataclass(frozen=True)
class ImageFacts:
    """What `inspect_image` found. `reason` is None for a usable image, else a short, human-readable cause."""

    sha256: str | None
    width: int | None = None
    height: int | None = None
    format: str | None = None
    phash: str | None = None
    reason: str | None = None


def perceptual_hash(image: Image.Image, size: int = 8) -> str:
    """Difference hash (dHash) of an image: `size`² bits as hex.

    Each bit says whether a cell of a `(size+1)×size` grey thumbnail is brighter than its left neighbour, so the
    hash survives recompression, resizing and small colour shifts, but not crops or mirroring.
    """
    grey = np.asarray(image.convert("L").resize((size + 1, size), Image.Resampling.BOX), dtype=np.int16)
    return np.packbits(grey[:, 1:] > grey[:, :-1]).tobytes().hex()


def hash_distance(a: str, b: str) -> int:
    """Hamming distance between two perceptual hashes of the same size (0 = same picture)."""
    return (int(a, 16) ^ int(b, 16)).bit_count()


def _short(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".")


def inspect_image(
    path: str | os.PathLike,
    *,
    min_side: int,
    max_pixels: int,
    formats: tuple[str, ...],
    aspect_range: tuple[float, float],
) -> ImageFacts:
    """Measure the image file at `path` and say whether it is usable.

    Checks, in order: PIL identifies it; its format is one of `formats` (PIL names: "JPEG", "PNG", ...); its header
    size is at most `max_pixels` (before anything is decoded, so a bomb costs nothing); it verifies and decodes to
    the last byte; after EXIF orientation its short side is at least `min_side` and width/height lies within
    `aspect_range`. The file itself is never changed.
    """
    try:
        sha256 = file_sha256(path)
    except OSError as err:
        return ImageFacts(None, reason=f"unreadable: {err.strerror}")
    try:
        with warnings.catch_warnings():
            # PIL warns (or, past twice its limit, raises) on the header alone, against one process-wide limit.
            # The per-call `max_pixels` below is what decides; only PIL's hard refusal is reported as such.
            # (The filter list is process-wide too, but ignoring this one warning cannot change another thread's
            # results.)
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image_format, (width, height) = _FORMAT_ALIASES.get(image.format, image.format), image.size
    except UnidentifiedImageError:
        return ImageFacts(sha256, reason="not an image")
    except Image.DecompressionBombError as err:
        return ImageFacts(sha256, reason=f"too many pixels: {err}")
    except _DECODE_ERRORS as err:
        return ImageFacts(sha256, reason=f"truncated or corrupt: {err}")
    facts = dict(sha256=sha256, width=width, height=height, format=image_format)
    if image_format not in formats:
        return ImageFacts(**facts, reason=f"format {image_format} not allowed")
    if width * height > max_pixels:
        return ImageFacts(**facts, reason=f"too many pixels: {width * height} > {max_pixels}")
    try:
        # verify() checks structure (PNG CRCs) but leaves the image unusable, so decoding needs a fresh open;
        # load() is what notices a JPEG cut short.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.verify()
            with Image.open(path) as image:
                image.load()
                upright = ImageOps.exif_transpose(image)
    except _DECODE_ERRORS as err:
        return ImageFacts(**facts, reason=f"truncated or corrupt: {err}")
    width, height = upright.size
    facts.update(width=width, height=height, phash=perceptual_hash(upright))
    if min(width, height) < min_side:
        return ImageFacts(**facts, reason=f"too small: {width}x{height} < {min_side}")
    low, high = aspect_range
    if not low <= width / height <= high:
        return ImageFacts(**facts, reason=f"aspect {_short(width / height)} outside {_short(low)}..{_short(high)}")
    return ImageFacts(**facts)


def format_suffix(image_format: str | None, fallback: str) -> str:
    """File suffix for a PIL format name ("JPEG" → ".jpg"); `fallback` when PIL could not tell."""
    if image_format is None:
        return fallback
    return {"JPEG": ".jpg", "TIFF": ".tif"}.get(image_format, "." + image_format.lower())

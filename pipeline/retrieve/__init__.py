"""The retrieve stage: keywords → checked candidate pictures in `images/` → the reference picture(s) a film starts
from. Sources are the table `IMAGE_SOURCES` (built in: `sources.py`); every candidate is checked the same way."""

from . import sources  # noqa: F401  (fills IMAGE_SOURCES with the built-in sources)
from .reference import FILM_SIZE, MAX_WIDTH, ImageInputError, film_size, load_reference, normalise_reference
from .request import IMAGE_SOURCES, ImageSource, RetrievalError, RetrieveRequest
from .stage import ImageRecord, RetrievalReport, choose_references, read_report, retrieve_images

__all__ = [
    "FILM_SIZE",
    "IMAGE_SOURCES",
    "MAX_WIDTH",
    "ImageInputError",
    "ImageRecord",
    "ImageSource",
    "RetrievalError",
    "RetrievalReport",
    "RetrieveRequest",
    "choose_references",
    "film_size",
    "load_reference",
    "normalise_reference",
    "read_report",
    "retrieve_images",
]

"""What the retrieve stage is asked: `RetrieveRequest`, checked against the table of image sources.

`IMAGE_SOURCES` is that table (name → `ImageSource`); `sources.py` fills it with the built-in sources. This
module imports none of them, so every source module may import the request type without an import cycle.
"""

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, Field, HttpUrl, field_validator, model_validator

from ..keywords import Keywords
from ..registry import Registry


class RetrievalError(ValueError):
    """Retrieval could not give an image to start from; the message names the input and what to do."""


Candidates = list[tuple[Path, str]]
"""Candidate files as (file, where it came from: URL or path), in the source's order."""


@dataclass(frozen=True)
class ImageSource:
    """One place pictures come from.

    gather: (request, staging folder) → candidate files and a note for the user (or None). Files may be fetched
        into the staging folder, which is deleted afterwards.
    needs: the request field this source cannot do without ("site", "urls", "folder"), if any.
    takes_search_url: a search engine whose address can be pointed at a mirror (or a test server).
    check_filters: for a source that takes `filters`, a function raising ValueError on filters it refuses.
    environment: a variable the source cannot do without, and where to get its value.
    """

    gather: Callable[["RetrieveRequest", Path], tuple[Candidates, str | None]]
    help: str
    needs: str | None = None
    takes_search_url: bool = False
    check_filters: Callable[[dict[str, str]], None] | None = None
    environment: tuple[str, str] | None = None


IMAGE_SOURCES: Registry[ImageSource] = Registry("image source")
SourceName = IMAGE_SOURCES.name_type()


class RetrieveRequest(BaseModel):
    """Where to look for pictures for `keywords`, and what a usable picture is."""

    keywords: Keywords = Field(min_length=1, description="what the film is about, e.g. ['red ball', 'meadow']")
    source: SourceName = "bundled"
    site: HttpUrl | None = Field(None, description="source='greedy': the site to collect images from")
    urls: list[HttpUrl] = Field(default_factory=list, description="source='urls': image addresses")
    folder: Path | None = Field(None, description="source='folder': a folder of the user's own pictures")
    search_url: str | None = Field(
        None, description="bing/google/baidu: the engine's search address (a mirror, or a test server); None: real"
    )
    filters: dict[str, str] = Field(
        default_factory=dict,
        description="icrawler search filters, e.g. {'license': 'commercial,modify'} for bing, or Flickr search "
        "parameters (e.g. {'license': '9,10'})",
    )
    max_images: int = Field(8, ge=1, description="most accepted images kept")
    min_side: int = Field(256, ge=16, description="shortest side a picture may have, px")
    max_pixels: int = Field(40_000_000, ge=1, description="largest width×height accepted (decompression-bomb cap)")
    formats: tuple[str, ...] = Field(("JPEG", "PNG", "WEBP"), min_length=1, description="PIL format names")
    aspect_range: tuple[float, float] = Field((1 / 3, 3.0), description="allowed width/height, low..high")
    duplicate_distance: int = Field(4, ge=0, le=64, description="dHash distance (of 64 bits) that counts as same")
    downloader_threads: int = Field(4, ge=1)
    request_timeout_s: float = Field(10.0, gt=0, description="per HTTP request")
    queue_timeout_s: float = Field(2.0, gt=0, description="how long icrawler's threads wait for work before ending")
    crawl_timeout_s: float = Field(120.0, gt=0, description="the whole crawl")

    @field_validator("formats")
    @classmethod
    def _pil_format_names(cls, formats: tuple[str, ...]) -> tuple[str, ...]:
        # PIL names formats JPEG and TIFF; users often write the file suffix.
        return tuple({"JPG": "JPEG", "TIF": "TIFF"}.get(f.upper(), f.upper()) for f in formats)

    @model_validator(mode="after")
    def _source_has_its_input(self) -> "RetrieveRequest":
        source = IMAGE_SOURCES[self.source]
        if source.needs and not getattr(self, source.needs):
            raise ValueError(f"source={self.source!r} needs {source.needs}=…")
        low, high = self.aspect_range
        if not 0 < low <= high:
            raise ValueError(f"aspect_range {self.aspect_range} must be (low, high) with 0 < low <= high")
        if self.search_url and not source.takes_search_url:
            engines = [name for name in IMAGE_SOURCES if IMAGE_SOURCES[name].takes_search_url]
            raise ValueError(f"search_url is for the search engines {tuple(engines)}, not source={self.source!r}")
        if self.filters and source.check_filters is None:
            takers = [name for name in IMAGE_SOURCES if IMAGE_SOURCES[name].check_filters is not None]
            raise ValueError(f"filters are for the sources {tuple(takers)}, not {self.source!r}")
        if self.filters:
            source.check_filters(self.filters)
        return self

    def missing_environment(self) -> RetrievalError | None:
        """The error to raise when the source needs a variable the environment lacks (checked when retrieving, not
        when the request is made: a deployment's form is filled in on another machine)."""
        needed = IMAGE_SOURCES[self.source].environment
        if needed is None or os.environ.get(needed[0]):
            return None
        return RetrievalError(f"source {self.source!r} needs an API key: set {needed[0]} ({needed[1]})")

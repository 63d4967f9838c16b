"""The retrieve stage: keywords → checked candidate images in `images/` → the reference image(s) a film starts from.

Sources (the table `IMAGE_SOURCES`, filled in `sources.py`): the bundled library (offline default), a web search
(Bing, Google, Baidu, Flickr) or one site (greedy) through icrawler, a list of URLs, or the user's own folder. Every
candidate, whatever its source, is checked the same way (`image_checks.inspect_image`), near-duplicates are dropped
by perceptual hash, and `images/meta.json` records every candidate: where it came from, its hash and size, and why
it was rejected.

Files in `images/`: accepted candidates as `img_0001.jpg`, … byte for byte as fetched (EXIF orientation is not
baked in; sizes in meta.json are after orientation, and `normalise_reference` applies it). Rejected files are not
kept: meta.json names their source and SHA-256. The folder is built beside the old one and swapped in whole, so a
crash never leaves a half-filled `images/` that looks finished.
"""

import os
import shutil
from collections import Counter
from pathlib import Path

from pydantic import BaseModel, Field

from svi_model.atomic_files import write_text_atomic

from .image_checks import format_suffix, hash_distance, inspect_image
from .reference import FILM_SIZE
from .request import IMAGE_SOURCES, Candidates, RetrievalError, RetrieveRequest

# Why a URL the user gave has no file: icrawler logs the error of each try (it tries each address 3 times).
NOT_DOWNLOADED = "not downloaded: HTTP error, timeout, or larger than the download cap (see the log)"

# The film's own shape (832×480): choose_references prefers pictures that fill it.
FILM_ASPECT = FILM_SIZE[0] / FILM_SIZE[1]


class ImageRecord(BaseModel):
    """One candidate image, as recorded in `images/meta.json`."""

    name: str | None = Field(
        description="file name in images/ (a rejected file is not kept; the name still identifies it); None: never "
        "downloaded"
    )
    source: str = Field(description="the URL it was fetched from, or the path it was copied from")
    sha256: str | None = None
    width: int | None = Field(None, description="after EXIF orientation; None if unreadable")
    height: int | None = None
    format: str | None = Field(None, description="PIL's format name, e.g. JPEG")
    phash: str | None = Field(None, description="64-bit difference hash, hex")
    accepted: bool
    reason: str | None = Field(None, description="why it was rejected")


class RetrievalReport(BaseModel):
    """What retrieval found: every candidate in the order they came, accepted or not (meta.json holds this)."""

    source: str
    keywords: list[str]
    note: str | None = Field(None, description="anything the user should know, e.g. that no bundled tag matched")
    candidates: list[ImageRecord]

    @property
    def accepted(self) -> list[ImageRecord]:
        return [c for c in self.candidates if c.accepted]

    @property
    def rejected(self) -> list[ImageRecord]:
        return [c for c in self.candidates if not c.accepted]


def read_report(images_dir: str | os.PathLike) -> RetrievalReport:
    """The report a finished retrieval left in `images_dir/meta.json`."""
    return RetrievalReport.model_validate_json((Path(images_dir) / "meta.json").read_text(encoding="utf-8"))


def _inspect_all(candidates: Candidates, request: RetrieveRequest) -> list[ImageRecord]:
    """One record per candidate file, named `img_0001.jpg`, … in candidate order by the format PIL found."""
    records = []
    for index, (path, source) in enumerate(candidates, start=1):
        facts = inspect_image(
            path,
            min_side=request.min_side,
            max_pixels=request.max_pixels,
            formats=request.formats,
            aspect_range=request.aspect_range,
        )
        name = f"img_{index:04d}{format_suffix(facts.format, path.suffix.lower() or '.bin')}"
        records.append(ImageRecord(name=name, source=source, accepted=facts.reason is None, **vars(facts)))
    return records


def _reject_duplicates(records: list[ImageRecord], max_distance: int) -> None:
    """Mark accepted records that repeat another one as rejected.

    Among near-duplicates the copy with the most pixels stays (the earlier one on a tie), whatever order they
    arrived in.
    """
    kept: list[ImageRecord] = []
    for record in sorted((r for r in records if r.accepted), key=lambda r: -r.width * r.height):
        closest = min(kept, key=lambda k: hash_distance(k.phash, record.phash), default=None)
        if closest is None:
            kept.append(record)
        elif closest.sha256 == record.sha256:
            record.accepted, record.reason = False, f"duplicate of {closest.name} (identical file)"
        elif (distance := hash_distance(closest.phash, record.phash)) <= max_distance:
            record.accepted, record.reason = False, f"near-duplicate of {closest.name} (distance {distance})"
        else:
            kept.append(record)


def _nothing_usable(report: RetrievalReport, images_dir: Path) -> RetrievalError:
    where = f"{report.source} for {report.keywords}"
    advice = "try other keywords or another source, or give your own pictures with --images DIR"
    if not report.candidates:
        return RetrievalError(f"retrieval from {where} found no candidate image (no results, or no network): {advice}")
    kinds = Counter(record.reason.split(":")[0] for record in report.rejected)
    top = ", ".join(f"{count}× {kind}" for kind, count in kinds.most_common(3))
    return RetrievalError(
        f"none of the {len(report.candidates)} candidate images from {where} is usable ({top}; every reason is in "
        f"{images_dir / 'meta.json'}): {advice}"
    )


def retrieve_images(request: RetrieveRequest, run_dir: str | os.PathLike) -> RetrievalReport:
    """Gather, check and keep candidate images for `request` in `run_dir/images/`, with `images/meta.json`.

    Raises RetrievalError (after writing meta.json, so the reasons can be read) when no image is usable, when the
    user's folder is missing, or when Flickr is asked for without FLICKR_API_KEY.
    """
    missing = request.missing_environment()
    if missing is not None:
        raise missing
    run_dir = Path(run_dir)
    images_dir, building = run_dir / "images", run_dir / "images.partial"
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    candidates, note = IMAGE_SOURCES[request.source].gather(request, building / "staging")
    records = _inspect_all(candidates, request)
    _reject_duplicates(records, request.duplicate_distance)
    for record in [r for r in records if r.accepted][request.max_images :]:
        record.accepted, record.reason = False, f"more than max_images={request.max_images} accepted before it"
    for (path, _), record in zip(candidates, records, strict=True):
        if record.accepted:
            shutil.copyfile(path, building / record.name)
    if request.source == "urls":
        # A search engine's failed links are just fewer results, but a URL the user gave must not vanish unnoticed.
        fetched = {url for _, url in candidates}
        records += [
            ImageRecord(name=None, source=url, accepted=False, reason=NOT_DOWNLOADED)
            for url in dict.fromkeys(str(url) for url in request.urls)
            if url not in fetched
        ]
    report = RetrievalReport(source=request.source, keywords=request.keywords, note=note, candidates=records)
    shutil.rmtree(building / "staging", ignore_errors=True)
    write_text_atomic(building / "meta.json", report.model_dump_json(indent=2) + "\n")
    shutil.rmtree(images_dir, ignore_errors=True)
    building.rename(images_dir)
    if not report.accepted:
        raise _nothing_usable(report, images_dir)
    return report


def _preference(record: ImageRecord) -> tuple[int, float, int, str]:
    """Sort key, best first: enough pixels for the film, then shape closest to the film's, then size, then name.

    Pixels beyond the film's own 832×480 add nothing to it, so past that the shape decides; names follow the
    candidates' order (search rank, library match), which breaks the remaining ties.
    """
    pixels = record.width * record.height
    aspect = record.width / record.height
    shape_gap = max(aspect, FILM_ASPECT) / min(aspect, FILM_ASPECT)
    return -min(pixels, FILM_SIZE[0] * FILM_SIZE[1]), round(shape_gap, 3), -pixels, record.name


def choose_references(report: RetrievalReport, count: int = 1) -> list[ImageRecord]:
    """The `count` best accepted images, one per chapter, best first (deterministic).

    When fewer images were accepted than chapters asked for, the ranking is cycled (chapter k gets image
    k mod n). The files are `images/<record.name>`.
    """
    if count < 1:
        raise ValueError(f"count={count}: ask for at least one reference image")
    ranked = sorted(report.accepted, key=_preference)
    if not ranked:
        raise RetrievalError(
            "the retrieval report has no accepted image: run retrieval again with other keywords "
            "or give your own pictures with --images DIR"
        )
    return [ranked[k % len(ranked)] for k in range(count)]

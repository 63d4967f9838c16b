"""The `assemble` stage: a run folder's stored clips → film.mp4, film.srt, storyboard.png and manifest.json.

Everything is read from the run folder (request.yaml, the prompt stream, clips/), never from memory, so a resumed
run, an uninterrupted run and `svi assemble` give the same film. Clip k fills the film frames its stitching rule
keeps (`FilmSettings.kept_frames`); its subtitle and its storyboard frame come from exactly those frames. The
manifest is written last: when it is there, the other three are complete (each file is written atomically).
"""

import json
import platform
import time
from importlib import metadata
from pathlib import Path

import imageio_ffmpeg
from PIL import Image, ImageDraw, ImageFont

from svi_model.atomic_files import atomic_path, write_text_atomic

from .engines import EngineSpec
from .file_hashes import file_sha256
from .film_request import read_run_request
from .prompt_files import read_prompt_file
from .run_folder import RunFolder
from .video_files import FilmFrames, join_chapters, stitched_clips, write_film

VERSIONED_PACKAGES = (
    "svi-film",
    "torch",
    "diffusers",
    "transformers",
    "prefect",
    "moviepy",
    "imageio-ffmpeg",
    "pillow",
)

STORYBOARD_COLUMNS = 4
THUMB_WIDTH = 256  # widest thumbnail; smaller films are shown at their own size
CAPTION_WIDTH = 200  # narrowest caption column, so tiny films still get readable prompts
CAPTION_LINES = 8  # longer prompts are cut with "..." (the full text is in film.srt and manifest.json)
MARGIN = 8
FONT_SIZE = 13


def assemble_film(run_dir: Path) -> Path:
    """`assemble_run`; for a film in chapters, every chapter's, then `join_run_chapters`."""
    run = RunFolder(Path(run_dir))
    request = read_run_request(run)
    if request.chapter_count() == 1:
        return assemble_run(run_dir)
    for index in range(request.chapter_count()):
        assemble_run(run.chapter(index).root)
    return join_run_chapters(run_dir)


def join_run_chapters(run_dir: Path) -> Path:
    """The film of a run in chapters, from its assembled chapters: film.mp4 (chapters crossfaded), film.srt (every
    clip's prompt on the joined timeline), storyboard.png (the chapters' storyboards, one under the other) and
    manifest.json (the request, each chapter's manifest and place in the film); returns film.mp4's path.

    A chapter's cues end where the next chapter starts, so the crossfade shows the coming chapter's first prompt.
    """
    run = RunFolder(Path(run_dir))
    request = read_run_request(run)
    chapters = [run.chapter(index) for index in range(request.chapter_count())]
    manifests = [json.loads(chapter.manifest.read_text(encoding="utf-8")) for chapter in chapters]
    join_chapters([chapter.film for chapter in chapters], run.film, request.crossfade_s)

    overlap = round(request.crossfade_s * request.fps)
    starts = [0]
    for manifest in manifests[:-1]:
        starts.append(starts[-1] + manifest["film"]["frames"] - overlap)
    ends = [*starts[1:], starts[-1] + manifests[-1]["film"]["frames"]]
    prompts, spans = [], []
    for start, end, manifest in zip(starts, ends, manifests, strict=True):
        for clip in manifest["clips"]:
            first, stop = clip["film_frames"]
            prompts.append(clip["prompt"])
            spans.append(range(start + first, min(start + stop, end)))
    write_text_atomic(run.subtitles, subtitles(prompts, spans, request.fps))

    boards = [Image.open(chapter.storyboard).convert("RGB") for chapter in chapters]
    sheet = Image.new("RGB", (max(b.width for b in boards), sum(b.height for b in boards)), "white")
    top = 0
    for board in boards:
        sheet.paste(board, (0, top))
        top += board.height
    with atomic_path(run.storyboard) as tmp:
        sheet.save(tmp, format="PNG")

    manifest = {
        "request": request.model_dump(mode="json"),
        "versions": _versions(),
        "chapters": [
            {
                "run_dir": str(chapter.root),
                "manifest_sha256": file_sha256(chapter.manifest),
                "film_frames": [start, end],
            }
            for chapter, start, end in zip(chapters, starts, ends, strict=True)
        ],
        "film": {
            "file": run.film.name,
            "sha256": file_sha256(run.film),
            "frames": ends[-1],
            "fps": request.fps,
            "crossfade_frames": overlap,
        },
    }
    write_text_atomic(run.manifest, json.dumps(manifest, indent=2))
    return run.film


def assemble_run(run_dir: Path, timings: dict[str, float] | None = None) -> Path:
    """Write film.mp4, film.srt, storyboard.png and manifest.json from the run folder; returns film.mp4's path.

    `timings` are the seconds each earlier stage took, for the manifest; without them the previous manifest's are
    kept. The manifest also gets this stage's own time as `assemble`.
    """
    start = time.perf_counter()
    run = RunFolder(Path(run_dir))
    request = read_run_request(run)
    settings = request.settings()
    prompts_path = request.prompts_file or run.storyline
    if not prompts_path.is_file():
        raise FileNotFoundError(
            f"{prompts_path} is missing: run `svi film --run-dir {run.root}` (or `svi prompts`) to write the prompts"
        )
    prompts = read_prompt_file(prompts_path)
    clip_paths = [run.clip(k) for k in range(request.clips)]
    missing = [path.name for path in clip_paths if not path.is_file()]
    if missing:
        shown = ", ".join(missing[:5]) + (", …" if len(missing) > 5 else "")
        raise FileNotFoundError(
            f"{run.clips} lacks {len(missing)} of the {request.clips} clips ({shown}): "
            f"run `svi film --run-dir {run.root}` again to render them"
        )
    clip_prompts = [settings.prompt_for(k, prompts) for k in range(request.clips)]
    previous = _previous_timings(run.manifest) if timings is None else dict(timings)

    film = FilmFrames(stitched_clips(settings, clip_paths))
    write_film(film.parts, run.film, request.fps)
    write_text_atomic(run.subtitles, subtitles(clip_prompts, film.spans, request.fps))
    height, width = film.part_frames(0).shape[1:3]
    storyboard = draw_storyboard(film, clip_prompts, request.fps)
    with atomic_path(run.storyboard) as tmp:
        storyboard.save(tmp, format="PNG")

    manifest = {
        "request": request.model_dump(mode="json"),
        "settings": settings.model_dump(mode="json"),
        "versions": _versions(),
        "engine": _engine_identity(request.engine()),
        "inputs": {
            "reference.png": _sha256_if_present(run.reference),
            "prompts": {"path": str(prompts_path), "sha256": file_sha256(prompts_path)},
        },
        "clips": [
            {
                "file": str(path.relative_to(run.root)),
                "sha256": file_sha256(path),
                "prompt": prompt,
                "film_frames": [span.start, span.stop],
            }
            for path, prompt, span in zip(clip_paths, clip_prompts, film.spans, strict=True)
        ],
        "film": {
            "file": run.film.name,
            "sha256": file_sha256(run.film),
            "frames": len(film),
            "fps": request.fps,
            "duration_s": len(film) / request.fps,
            "width": width,
            "height": height,
            "codec": "h264 yuv420p",
        },
        "timings": {**previous, "assemble": time.perf_counter() - start},
    }
    write_text_atomic(run.manifest, json.dumps(manifest, indent=2))
    return run.film


def _previous_timings(manifest: Path) -> dict[str, float]:
    """The stage timings of an earlier manifest, so re-assembling keeps what the render took."""
    try:
        return dict(json.loads(manifest.read_text(encoding="utf-8"))["timings"])
    except (OSError, ValueError, KeyError, TypeError):
        return {}


# ---------------------------------------------------------------- film.srt


def srt_timestamp(seconds: float) -> str:
    """`HH:MM:SS,mmm`, rounded to the millisecond."""
    hours, rest = divmod(round(seconds * 1000), 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    return f"{hours:02d}:{minutes:02d}:{rest // 1000:02d},{rest % 1000:03d}"


def subtitles(prompts: list[str], spans: list[range], fps: float) -> str:
    """SRT text: cue k shows `prompts[k]` while the film shows the frames `spans[k]`."""
    cues = [
        f"{k + 1}\n{srt_timestamp(span.start / fps)} --> {srt_timestamp(span.stop / fps)}\n{' '.join(prompt.split())}\n"
        for k, (prompt, span) in enumerate(zip(prompts, spans, strict=True))
    ]
    return "\n".join(cues)


# ---------------------------------------------------------------- storyboard.png


def _caption_lines(text: str, font: ImageFont.FreeTypeFont, width: int) -> list[str]:
    """`text` broken into lines no wider than `width` pixels (a longer word keeps a line of its own)."""
    lines: list[str] = []
    for word in text.split():
        if lines and font.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    if len(lines) > CAPTION_LINES:
        last = lines[CAPTION_LINES - 1].split()
        while len(last) > 1 and font.getlength(" ".join(last) + " ...") > width:
            last.pop()
        lines = [*lines[: CAPTION_LINES - 1], " ".join(last) + " ..."]
    return lines


def _clock(seconds: float) -> str:
    """`m:ss.s`, for storyboard captions."""
    return f"{int(seconds // 60)}:{seconds % 60:04.1f}"


def draw_storyboard(film: FilmFrames, prompts: list[str], fps: float) -> Image.Image:
    """A grid of one frame per clip (the middle of what it contributes), its number, time and prompt below.

    Up to `STORYBOARD_COLUMNS` cells a row; thumbnails are at most `THUMB_WIDTH` wide.
    """
    font = ImageFont.load_default(size=FONT_SIZE)
    line_height = FONT_SIZE + 4
    height, width = film.part_frames(0).shape[1:3]
    thumb_width = min(width, THUMB_WIDTH)
    thumb_height = round(height * thumb_width / width)
    cell_width = max(thumb_width, CAPTION_WIDTH) + 2 * MARGIN
    captions = [
        [
            f"clip {k}   {_clock(span.start / fps)} - {_clock(span.stop / fps)}",
            *_caption_lines(prompt, font, cell_width - 2 * MARGIN),
        ]
        for k, (prompt, span) in enumerate(zip(prompts, film.spans, strict=True))
    ]
    columns = min(STORYBOARD_COLUMNS, len(captions))
    rows = [range(start, min(start + columns, len(captions))) for start in range(0, len(captions), columns)]
    row_heights = [
        MARGIN + thumb_height + MARGIN + max(len(captions[k]) for k in row) * line_height + MARGIN for row in rows
    ]
    sheet = Image.new("RGB", (columns * cell_width, sum(row_heights)), "white")
    draw = ImageDraw.Draw(sheet)
    top = 0
    for row, row_height in zip(rows, row_heights, strict=True):
        for column, k in enumerate(row):
            left = column * cell_width
            span = film.spans[k]
            frame = Image.fromarray(film[span.start + len(span) // 2])
            if thumb_width != width:
                frame = frame.resize((thumb_width, thumb_height), Image.Resampling.LANCZOS)
            sheet.paste(frame, (left + (cell_width - thumb_width) // 2, top + MARGIN))
            text_top = top + MARGIN + thumb_height + MARGIN
            for i, line in enumerate(captions[k]):
                draw.text((left + MARGIN, text_top + i * line_height), line, fill="black" if i else "gray", font=font)
        top += row_height
    return sheet


# ---------------------------------------------------------------- manifest.json


def _versions() -> dict[str, str | None]:
    """Versions of what made the film: the packages, Python, and the ffmpeg that encoded it."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for package in VERSIONED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    versions["ffmpeg"] = imageio_ffmpeg.get_ffmpeg_version()
    return versions


def _engine_identity(engine: EngineSpec) -> dict:
    """The model's fingerprint and the LoRA's SHA-256 (`EngineSpec.identity`), with their paths. Re-assembling
    where the weights are gone records only the paths."""
    paths = {"model_path": str(engine.model), "lora_path": None if engine.lora is None else str(engine.lora)}
    missing = [str(path) for path in (engine.model, engine.lora) if path is not None and not path.exists()]
    if missing:
        return {**paths, "unavailable": missing}
    return {**paths, **engine.identity()}


def _sha256_if_present(path: Path) -> str | None:
    return file_sha256(path) if path.is_file() else None

"""The `assemble` stage: a run folder's stored clips → film.mp4, film.srt, storyboard.png and manifest.json.

Everything is read from the run folder (request.json, the prompt stream, clips/), never from memory, so a resumed
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

from svi_model.atomic_files import atomic_path, write_text_atomic

from ..hashing import file_sha256
from ..request import FilmRequest, read_run_request
from ..run_folder import RunFolder
from ..storyline import PromptStream, read_prompt_stream
from ..synthesize import EngineSpec
from ..synthesize.seals import clip_damage
from .film_video import FilmFrames, join_chapters, stitched_clips, write_film
from .storyboard import draw_storyboard, stacked_storyboards
from .subtitles import subtitles

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
    join_chapters([chapter.film for chapter in chapters], run.film, request.output.crossfade_s)

    fps = request.render.fps
    overlap = round(request.output.crossfade_s * fps)
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
    write_text_atomic(run.subtitles, subtitles(prompts, spans, fps))

    sheet = stacked_storyboards([chapter.storyboard for chapter in chapters])
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
            "fps": fps,
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
    stream, prompts_record = _prompt_stream(request, run)
    job = request.clip_job(stream)
    clip_paths = [run.clip(k) for k in range(request.clips)]
    missing = [path.name for path in clip_paths if not path.is_file()]
    if missing:
        shown = ", ".join(missing[:5]) + (", …" if len(missing) > 5 else "")
        raise FileNotFoundError(
            f"{run.clips} lacks {len(missing)} of the {request.clips} clips ({shown}): "
            f"run `svi film --run-dir {run.root}` again to render them"
        )
    # A film is only ever replaced by one made of clips that are as they were stored (checked against the seal in
    # each clip's state file; a clip without one can only be checked for its frame count, when it is read).
    for k, path in enumerate(clip_paths):
        damage = clip_damage(path, run.state(k), settings.num_frames) if run.state(k).is_file() else None
        if damage is not None:
            raise ValueError(
                f"{path} is damaged ({damage}); the film was left as it was: run `svi film --run-dir {run.root}` "
                "again to make the clip again"
            )
    clip_prompts = [job.prompt_for(k) for k in range(request.clips)]
    previous = _previous_timings(run.manifest) if timings is None else dict(timings)

    film = FilmFrames(stitched_clips(settings, clip_paths))
    fps = request.render.fps
    write_film(film.parts, run.film, fps)
    write_text_atomic(run.subtitles, subtitles(clip_prompts, film.spans, fps))
    height, width = film.part_frames(0).shape[1:3]
    storyboard = draw_storyboard(film, clip_prompts, fps)
    with atomic_path(run.storyboard) as tmp:
        storyboard.save(tmp, format="PNG")

    manifest = {
        "request": request.model_dump(mode="json"),
        "settings": settings.model_dump(mode="json"),
        "versions": _versions(),
        "engine": _engine_identity(request.engine()),
        "inputs": {
            "reference.png": _sha256_if_present(run.reference),
            "prompts": prompts_record,
        },
        "clips": [
            {
                "file": str(path.relative_to(run.root)),
                "sha256": file_sha256(path),
                "prompt": prompt,
                **({"overrides": job.overrides_for(k).given()} if job.overrides_for(k) is not None else {}),
                "film_frames": [span.start, span.stop],
                "attempts": _attempts(run, k),
            }
            for k, (path, prompt, span) in enumerate(zip(clip_paths, clip_prompts, film.spans, strict=True))
        ],
        "film": {
            "file": run.film.name,
            "sha256": file_sha256(run.film),
            "frames": len(film),
            "fps": fps,
            "duration_s": len(film) / fps,
            "width": width,
            "height": height,
            "codec": "h264 yuv420p",
        },
        "timings": {**previous, "assemble": time.perf_counter() - start},
    }
    write_text_atomic(run.manifest, json.dumps(manifest, indent=2))
    return run.film


def _prompt_stream(request: FilmRequest, run: RunFolder) -> tuple[PromptStream, dict]:
    """The film's prompts (given in the request, from the user's file, or the run's storyline.yaml) and what the
    manifest records of where they came from."""
    if request.storyline.prompt:
        return request.own_prompt_stream(), {"given": "in the request"}
    path = request.storyline.prompts or run.storyline
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: run `svi film --run-dir {run.root}` (or `svi prompts`) to write the prompts"
        )
    return read_prompt_stream(path), {"path": str(path), "sha256": file_sha256(path)}


def _attempts(run: RunFolder, k: int) -> list[dict]:
    """Clip k's renders and the per-clip checks' verdicts (a clip stored before they were recorded: attempt 0)."""
    path = run.attempts(k)
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else [{"attempt": 0}]


def _previous_timings(manifest: Path) -> dict[str, float]:
    """The stage timings of an earlier manifest, so re-assembling keeps what the render took."""
    try:
        return dict(json.loads(manifest.read_text(encoding="utf-8"))["timings"])
    except (OSError, ValueError, KeyError, TypeError):
        return {}


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

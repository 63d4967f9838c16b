"""The `film` flow: keywords (or your pictures) → reference → storyline → one task per clip → film.mp4.

Every task is cached by content (its inputs' hashes, its settings and a stage version) with results persisted in
`$SVI_CACHE_DIR/prefect-results`, so a retried run (the UI's Retry button), a rerun, or a new run with the same
inputs reuses finished work; clip k's key includes the exact state clip k−1 handed over, so editing the prompt of
clip 3 re-renders clips 3… and nothing before. In follow mode each prompt after the first is a task of its own,
written after the clip before it and keyed by that clip: an edited prompt is kept (pinned), and those after it are
written again from the new clips. Clips run one at a time (the loop is sequential: clip k needs
clip k−1) on the sampler kept loaded in the process; served, each holds a slot of the global limit `svi-gpu`.

No `from __future__ import annotations` here: served runs must resolve the pydantic parameter types.
"""

import base64
import io
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock
from PIL import Image
from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.runtime import flow_run
from tqdm.auto import tqdm

from flows.crashes import close_crashed_attempt
from flows.fan_out import submit_films, wait_for_films
from flows.gpu_slot import gpu_slot
from flows.story import follower, story_for
from flows.task_results import RESULTS, cached_network_task
from pipeline.assemble import assemble_run, join_run_chapters
from pipeline.cache_folder import anchored_paths, cache_root, clip_store_folder
from pipeline.hashing import content_digest
from pipeline.input_checks import check_inputs
from pipeline.request import FilmRequest, start_run
from pipeline.retrieve import RetrieveRequest, choose_references, normalise_reference, retrieve_images
from pipeline.run_folder import RunFolder
from pipeline.storyline import PromptStream, read_prompt_stream
from pipeline.synthesize import ClipJob, ClipResult, ClipStore, render_clips, synthesize_clip
from svi_model.atomic_files import PARTIAL, atomic_path, replace_folder
from svi_model.clip_overrides import ClipOverrides
from svi_model.tiny import save_tiny_model

RETRIEVE_VERSION = "retrieve-2"


# ---------------------------------------------------------------- retrieve: keywords or pictures → reference.png


def _retrieve_key(context, parameters) -> str:
    request: RetrieveRequest = parameters["request"]
    return "retrieve-" + content_digest(
        {
            "stage": RETRIEVE_VERSION,
            "request": request.model_dump(mode="json"),
            "width": parameters["max_width"],
            "count": parameters["count"],
        }
    )


@cached_network_task("retrieve", _retrieve_key, retries=3)
def retrieve(request: RetrieveRequest, run_dir: Path, max_width: int, count: int) -> dict:
    """Pictures for the keywords, checked; the `count` best normalised (one per chapter).

    Returns their PNG bytes (so a cached result does not depend on files) and the retrieval report.
    """
    report = retrieve_images(request, run_dir)
    pngs = []
    for index, chosen in enumerate(choose_references(report, count)):
        normalised = _retrieved_picture(RunFolder(run_dir), index)
        normalise_reference(run_dir / "images" / chosen.name, normalised, max_width=max_width)
        pngs.append(normalised.read_bytes())
    return {"pngs": pngs, "report": report.model_dump(mode="json")}


def _retrieved_picture(run: RunFolder, index: int) -> Path:
    return run.images / f"reference-{index:02d}.png"


# ---------------------------------------------------------------- synthesize: one task per clip


def _clip_task_key(context, parameters) -> str:
    return "clip-result-" + parameters["key"]


@task(
    name="clip",
    task_run_name="clip-{k:04d}",
    cache_key_fn=_clip_task_key,
    persist_result=True,
    result_storage=RESULTS,
)
def clip_task(run_dir: Path, k: int, job: ClipJob, key: str) -> ClipResult:
    """Clip k into the run folder (from the clip store when it was made before), with a bar over its steps.

    `key` is the clip's content key (`run_clip_key`), computed once by the film driver; it is the task's cache key.
    """
    with tqdm(total=job.settings.steps, desc=f"clip {k}", unit="step", leave=False) as bar:
        result = synthesize_clip(RunFolder(run_dir), k, job, on_step=lambda *_: bar.update(), key=key)
    retakes = f" after {len(result.attempts)} renders" if len(result.attempts) > 1 else ""
    get_run_logger().info("clip %d %s%s (key %s…)", k, "reused" if result.reused else "rendered", retakes, key[:12])
    return result


@task(name="demo-model")
def demo_model(folder: Path) -> Path:
    """The demo's tiny random model, built offline once. Runs on several workers may need it at the same moment in
    a shared data root: one builds it (aside, then renamed into place) while the others wait, then find it."""
    with FileLock(folder.with_name(f"{folder.name}.lock")):
        if not (folder / "model_index.json").is_file():
            staged = folder.with_name(f".{folder.name}.{PARTIAL}{os.getpid()}")
            shutil.rmtree(staged, ignore_errors=True)
            save_tiny_model(staged)
            replace_folder(staged, folder)
    return folder


# ---------------------------------------------------------------- the flow


def _start_run(request: FilmRequest) -> RunFolder:
    return start_run(request, on_overwrite=get_run_logger().warning)


@contextmanager
def _claimed_run_folder(request: FilmRequest) -> Iterator[None]:
    """Every file the request names checked (a bad path found later would leave a request in the run folder that
    the corrected command then meets as "another film"), then the run folder held for this run alone."""
    check_inputs(request)
    with RunFolder(request.output.run_dir).claimed(owner=flow_run.get_id()):  # None outside a flow run
        yield


def _pictures(request: FilmRequest, run: RunFolder, timings: dict[str, float]) -> list[Path]:
    """One picture per chapter: the user's, or the best retrieved ones (normalised, in `images/`)."""
    if request.retrieve.images:
        return request.retrieve.images
    start = time.perf_counter()
    found = retrieve(request.retrieve_request(), run.root, request.render.max_width, request.chapter_count())
    pictures = []
    for index, png in enumerate(found["pngs"]):
        with atomic_path(_retrieved_picture(run, index)) as tmp:
            tmp.write_bytes(png)
        pictures.append(_retrieved_picture(run, index))
    rejected = [c for c in found["report"]["candidates"] if not c["accepted"]]
    if rejected:
        create_table_artifact(
            key="rejected-images",
            table=[{"source": c["source"], "reason": c["reason"]} for c in rejected],
            description="pictures that were not used, and why",
        )
    timings["retrieve"] = time.perf_counter() - start
    return pictures


def _chapters(
    request: FilmRequest, run: RunFolder, timings: dict[str, float]
) -> list[tuple[FilmRequest, RunFolder, Path]]:
    """(request, run folder, picture) of every chapter; a one-chapter film is its own chapter."""
    pictures = _pictures(request, run, timings)
    if len(pictures) == 1:
        return [(request, run, pictures[0])]
    chapters = []
    for index, picture in enumerate(pictures):
        chapter = request.chapter(index, picture)
        chapters.append((chapter, _start_run(chapter), picture))
    return chapters


@flow(name="prompts", log_prints=True)
def prompts(request: FilmRequest = FilmRequest()) -> list[Path]:
    """Only the storylines: retrieve the pictures and write storyline.yaml (per chapter), to edit before rendering."""
    request = anchored_paths(request, cache_root())
    with _claimed_run_folder(request):
        run = _start_run(request)
        chapters = _chapters(request, run, {})
        for chapter, chapter_run, picture in chapters:
            story_for(chapter, chapter_run, picture, {})
        return [chapter_run.storyline for _, chapter_run, _ in chapters]


@flow(name="film", log_prints=True)
def film(request: FilmRequest = FilmRequest()) -> Path:
    """Make one film (its chapters joined with a crossfade); returns the path of film.mp4 in the run folder.
    Relative paths in the request are taken from the data root (`cache_root`), wherever the flow runs."""
    request = anchored_paths(request, cache_root())
    with _claimed_run_folder(request):
        # Once the folder is held: an attempt that waited for another attempt of this run finds it done, with no
        # task run of it left Running to close.
        close_crashed_attempt()
        return _film(request)


def _film(request: FilmRequest) -> Path:
    run = _start_run(request)
    if request.uses_random_weights():
        get_run_logger().warning("demo profile without a model: tiny RANDOM weights, the pictures will be noise")
        demo_model(request.engine().model)
    timings: dict[str, float] = {}
    chapters = _chapters(request, run, timings)
    count = len(chapters)
    # With fan_out, chapters 2… go to free workers of the pool while this run makes chapter 1 on its own GPU.
    elsewhere = {}
    if request.output.fan_out and count > 1:
        elsewhere = submit_films([chapter for chapter, _, _ in chapters[1:]])
        chapters = chapters[:1]
    progress = _ClipProgress(total=request.clips * len(chapters))
    for number, (chapter, chapter_run, picture) in enumerate(chapters, start=1):
        label = "" if count == 1 else f"-chapter-{number}"
        _render_chapter(chapter, chapter_run, picture, dict(timings), progress, label)
    wait_for_films(elsewhere)
    if count > 1:
        join_run_chapters(run.root)
        get_run_logger().info("joined %d chapters into %s", count, run.film)
        create_markdown_artifact(
            key="storyboard", markdown=_storyboard_markdown(run.storyboard), description="every chapter's storyboard"
        )
    return run.film


class _ClipProgress:
    """The `clips-done` progress artifact, over every clip of every chapter."""

    def __init__(self, total: int):
        self.total, self.done = total, 0
        self.artifact = create_progress_artifact(progress=0.0, key="clips-done", description=f"clips done of {total}")

    def clip_done(self) -> None:
        self.done += 1
        update_progress_artifact(self.artifact, progress=100.0 * self.done / self.total)


def _render_chapter(
    request: FilmRequest,
    run: RunFolder,
    picture: Path,
    timings: dict[str, float],
    progress: _ClipProgress,
    label: str,
) -> None:
    """Storyline, clips and assembly of one chapter (or of a whole one-chapter film) in `run`."""
    prompt_stream = story_for(request, run, picture, timings)

    start = time.perf_counter()
    store = ClipStore(clip_store_folder())

    def clip_in_a_task(run: RunFolder, k: int, job: ClipJob, key: str) -> ClipResult:
        # A cached task result is only as good as the stored clip: without it, render again.
        stored = store.has(key, job.settings.num_frames)
        with gpu_slot():
            return clip_task.with_options(refresh_cache=not stored)(run.root, k, job, key)

    next_prompts = follower(request, run) if request.follows() else None
    render_clips(
        run,
        request.clip_job(prompt_stream),
        request.clips,
        clip_in_a_task,
        lambda _: progress.clip_done(),
        next_prompts=next_prompts,
    )
    if next_prompts is not None:
        prompt_stream = read_prompt_stream(run.storyline)
    timings["synthesize"] = time.perf_counter() - start

    start = time.perf_counter()
    assemble_run(run.root, timings=timings)
    timings["assemble"] = time.perf_counter() - start
    create_markdown_artifact(
        key=f"storyboard{label}",
        markdown=_storyboard_markdown(run.storyboard),
        description="a frame of every clip with its prompt",
    )
    create_markdown_artifact(
        key=f"film-summary{label}",
        markdown=_summary(request, run, timings, prompt_stream),
        description="where the film is and how long each stage took",
    )


def _storyboard_markdown(path: Path, width: int = 960) -> str:
    """The storyboard inline (a JPEG data URL), so the UI shows it without serving the run folder."""
    with Image.open(path) as board:
        board = board.convert("RGB")
        board.thumbnail((width, width * 8))
        buffer = io.BytesIO()
        board.save(buffer, format="JPEG", quality=85)
    return f"![storyboard](data:image/jpeg;base64,{base64.b64encode(buffer.getvalue()).decode()})\n\n`{path.resolve()}`"


def _summary(request: FilmRequest, run: RunFolder, timings: dict[str, float], stream: PromptStream) -> str:
    rows = "\n".join(f"| {stage} | {seconds:.1f} s |" for stage, seconds in timings.items())
    job = request.clip_job(stream)
    beats = "\n".join(f"{k + 1}. {job.prompt_for(k)}{_overridden(job.overrides_for(k))}" for k in range(request.clips))
    return (
        f"# {', '.join(request.keywords)}\n\n"
        f"- film: `{run.film.resolve()}`\n- subtitles: `{run.subtitles.resolve()}`\n"
        f"- storyboard: `{run.storyboard.resolve()}`\n- manifest: `{run.manifest.resolve()}`\n\n"
        f"| stage | time |\n|---|---|\n{rows}\n\n## Storyline\n{beats}\n"
    )


def _overridden(overrides: ClipOverrides | None) -> str:
    """What a clip's stream entry sets for it, as the storyline artifact shows it after the prompt."""
    given = overrides.given() if overrides is not None else {}
    return f" *({', '.join(f'{name} {value}' for name, value in given.items())})*" if given else ""

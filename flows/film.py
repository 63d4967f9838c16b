"""The `film` flow: keywords (or your pictures) → reference → storyline → one task per clip → film.mp4.

Every task is cached by content (its inputs' hashes, its settings and a stage version) with results persisted in
`$SVI_CACHE_DIR/prefect-results`, so a retried run (the UI's Retry button), a rerun, or a new run with the same
inputs reuses finished work; clip k's key includes the exact state clip k−1 handed over, so editing the prompt of
clip 3 re-renders clips 3… and nothing before. Clips run one at a time (the loop is sequential: clip k needs
clip k−1) on the engine kept loaded in the process; their tasks carry the tag `gpu` for a server-side limit.

No `from __future__ import annotations` here: served runs must resolve the pydantic parameter types.
"""

import base64
import hashlib
import io
import json
import time
from pathlib import Path

from PIL import Image
from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.tasks import exponential_backoff

from pipeline.assemble import assemble_run
from pipeline.engines import EngineSpec, file_sha256
from pipeline.film_request import FilmRequest
from pipeline.prompt_files import read_prompt_file
from pipeline.reference import normalise_reference
from pipeline.retrieve import RetrieveRequest, choose_references, retrieve_images
from pipeline.run_folder import RunFolder, load_reference_png, load_state
from pipeline.storyline import Storyline, StorylineRequest, save_storyline, write_storyline
from pipeline.storyline_qwen import release_qwen
from pipeline.synthesize import ClipStore, cache_root, clip_key, synthesize_clip
from svi_model.atomic_files import atomic_path, write_text_atomic
from svi_model.recipes import FilmSettings
from svi_model.tiny import save_tiny_model

RETRIEVE_VERSION = "retrieve-1"
STORYLINE_VERSION = "storyline-1"
RESULTS = cache_root() / "prefect-results"


def _digest(fields: dict) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()


# ---------------------------------------------------------------- retrieve: keywords or pictures → reference.png


def _retrieve_key(context, parameters) -> str:
    request: RetrieveRequest = parameters["request"]
    return "retrieve-" + _digest(
        {"stage": RETRIEVE_VERSION, "request": request.model_dump(mode="json"), "width": parameters["max_width"]}
    )


def _worth_retrying(task, task_run, state) -> bool:
    """Network hiccups are; a search that found nothing usable (or bad input) fails the same way again."""
    try:
        state.result()
    except ValueError:  # RetrievalError and bad requests
        return False
    except Exception:
        return True
    return False


@task(
    name="retrieve",
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=4),
    retry_condition_fn=_worth_retrying,
    cache_key_fn=_retrieve_key,
    persist_result=True,
    result_storage=RESULTS,
)
def retrieve(request: RetrieveRequest, run_dir: Path, max_width: int) -> dict:
    """Pictures for the keywords, checked; the best one normalised. Returns its PNG bytes and the report."""
    report = retrieve_images(request, run_dir)
    chosen = choose_references(report)[0]
    normalise_reference(run_dir / "images" / chosen.name, RunFolder(run_dir).reference, max_width=max_width)
    return {"png": RunFolder(run_dir).reference.read_bytes(), "report": report.model_dump(mode="json")}


# ---------------------------------------------------------------- storyline: reference.png → L prompts


def _storyline_key(context, parameters) -> str:
    request: StorylineRequest = parameters["request"]
    return "storyline-" + _digest(
        {
            "stage": STORYLINE_VERSION,
            "request": request.model_dump(mode="json"),
            "image": file_sha256(parameters["image"]),
        }
    )


@task(
    name="storyline",
    retries=2,
    retry_delay_seconds=exponential_backoff(backoff_factor=4),
    retry_condition_fn=_worth_retrying,
    cache_key_fn=_storyline_key,
    persist_result=True,
    result_storage=RESULTS,
)
def storyline(request: StorylineRequest, image: Path) -> Storyline:
    """The prompt stream for the picture; a local Qwen is unloaded afterwards to leave the GPU to Wan."""
    try:
        return write_storyline(image, request)
    finally:
        release_qwen()


# ---------------------------------------------------------------- synthesize: one task per clip


def _clip_task_key(context, parameters) -> str:
    return "clip-" + _clip_key(**parameters)


def _clip_key(run_dir: Path, k: int, settings: FilmSettings, prompts: list[str], engine: EngineSpec, fps: float) -> str:
    run = RunFolder(run_dir)
    previous = load_state(run.state(k - 1)) if k > 0 else None
    return clip_key(k, settings, prompts, engine, load_reference_png(run.reference), previous, fps)


@task(
    name="clip",
    tags=["gpu"],
    task_run_name="clip-{k:04d}",
    cache_key_fn=_clip_task_key,
    persist_result=True,
    result_storage=RESULTS,
)
def render_clip(
    run_dir: Path, k: int, settings: FilmSettings, prompts: list[str], engine: EngineSpec, fps: float
) -> dict:
    """Clip k into the run folder (from the clip store when it was made before)."""
    result = synthesize_clip(RunFolder(run_dir), k, settings, prompts, engine, fps)
    get_run_logger().info("clip %d %s (key %s…)", k, "reused" if result.reused else "rendered", result.key[:12])
    return {"k": k, "key": result.key, "reused": result.reused}


@task(name="demo-model")
def demo_model(folder: Path) -> Path:
    """The demo's tiny random model, built offline once."""
    if not (folder / "model_index.json").is_file():
        save_tiny_model(folder)
    return folder


# ---------------------------------------------------------------- the flow


def _start_run(request: FilmRequest) -> RunFolder:
    run = RunFolder(request.run_dir)
    run.root.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run.request, json.dumps(request.model_dump(mode="json"), indent=2))
    return run


def _story(request: FilmRequest, run: RunFolder, timings: dict[str, float]) -> list[str]:
    """Retrieve (or take) the reference picture and write (or take) the prompt stream; returns the prompts."""
    log = get_run_logger()
    start = time.perf_counter()
    if request.images:
        normalise_reference(request.images[0], run.reference, max_width=request.max_width())
    else:
        found = retrieve(request.retrieve_request(), run.root, request.max_width())
        with atomic_path(run.reference) as tmp:
            tmp.write_bytes(found["png"])
        rejected = [c for c in found["report"]["candidates"] if not c["accepted"]]
        if rejected:
            create_table_artifact(
                key="rejected-images",
                table=[{"source": c["source"], "reason": c["reason"]} for c in rejected],
                description="pictures that were not used, and why",
            )
    timings["retrieve"] = time.perf_counter() - start

    start = time.perf_counter()
    if request.prompts_file is not None:
        prompts = read_prompt_file(request.prompts_file)
    elif run.storyline.is_file():
        log.info("using %s as it is (edit it to change the film; delete it to write a new one)", run.storyline)
        prompts = read_prompt_file(run.storyline)
    else:
        written = storyline(request.storyline_request(), run.reference)
        save_storyline(written, run.storyline)
        prompts = written.prompts
    timings["storyline"] = time.perf_counter() - start
    return prompts


@flow(name="prompts", log_prints=True)
def prompts(request: FilmRequest = FilmRequest()) -> Path:
    """Only the storyline: retrieve the picture and write storyline.yaml (to edit before rendering)."""
    run = _start_run(request)
    _story(request, run, {})
    return run.storyline


@flow(name="film", log_prints=True)
def film(request: FilmRequest = FilmRequest()) -> Path:
    """Make one film; returns the path of film.mp4 in the run folder."""
    run = _start_run(request)
    timings: dict[str, float] = {}
    settings, engine = request.settings(), request.engine()
    if request.uses_random_weights():
        get_run_logger().warning("demo profile without a model: tiny RANDOM weights, the pictures will be noise")
        demo_model(engine.model)
    prompt_stream = _story(request, run, timings)

    start = time.perf_counter()
    store = ClipStore(cache_root() / "clips")
    progress = create_progress_artifact(progress=0.0, key="clips-done", description=f"clips done of {request.clips}")
    for k in range(request.clips):
        key = _clip_key(run.root, k, settings, prompt_stream, engine, request.fps)
        # A cached result is only as good as the stored clip: without it, render again.
        result = render_clip.with_options(refresh_cache=not store.has(key))(
            run.root, k, settings, prompt_stream, engine, request.fps
        )
        store.materialise(result["key"], run, k)
        update_progress_artifact(progress, progress=100.0 * (k + 1) / request.clips)
    timings["synthesize"] = time.perf_counter() - start

    start = time.perf_counter()
    assemble_run(run.root, timings=timings)
    timings["assemble"] = time.perf_counter() - start
    create_markdown_artifact(
        key="storyboard",
        markdown=_storyboard_markdown(run.storyboard),
        description="a frame of every clip with its prompt",
    )
    create_markdown_artifact(
        key="film-summary",
        markdown=_summary(request, run, timings, prompt_stream),
        description="where the film is and how long each stage took",
    )
    return run.film


def _storyboard_markdown(path: Path, width: int = 960) -> str:
    """The storyboard inline (a JPEG data URL), so the UI shows it without serving the run folder."""
    with Image.open(path) as board:
        board = board.convert("RGB")
        board.thumbnail((width, width * 8))
        buffer = io.BytesIO()
        board.save(buffer, format="JPEG", quality=85)
    return f"![storyboard](data:image/jpeg;base64,{base64.b64encode(buffer.getvalue()).decode()})\n\n`{path.resolve()}`"


def _summary(request: FilmRequest, run: RunFolder, timings: dict[str, float], prompts: list[str]) -> str:
    rows = "\n".join(f"| {stage} | {seconds:.1f} s |" for stage, seconds in timings.items())
    beats = "\n".join(f"{k + 1}. {request.settings().prompt_for(k, prompts)}" for k in range(request.clips))
    return (
        f"# {', '.join(request.keywords)}\n\n"
        f"- film: `{run.film.resolve()}`\n- subtitles: `{run.subtitles.resolve()}`\n"
        f"- storyboard: `{run.storyboard.resolve()}`\n- manifest: `{run.manifest.resolve()}`\n\n"
        f"| stage | time |\n|---|---|\n{rows}\n\n## Storyline\n{beats}\n"
    )

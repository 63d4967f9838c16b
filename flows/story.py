"""The film flow's storyline tasks: the plan (the whole prompt stream, one task), and in follow mode one task per
prompt after the first, written once the clip before it exists and keyed by that clip.
"""

import time
from pathlib import Path

from prefect import get_run_logger

from flows.task_results import cached_network_task
from pipeline.hashing import content_digest, file_sha256
from pipeline.request import FilmRequest
from pipeline.retrieve import normalise_reference
from pipeline.run_folder import RunFolder
from pipeline.storyline import (
    PromptStream,
    Storyline,
    StorylineRequest,
    follow_prompt,
    read_prompt_stream,
    read_storyline,
    save_storyline,
    write_storyline,
)
from pipeline.storyline.qwen_chat import release_qwen
from pipeline.synthesize import ClipResult, NextPrompts

STORYLINE_VERSION = "storyline-2"


def _storyline_key(context, parameters) -> str:
    request: StorylineRequest = parameters["request"]
    return "storyline-" + content_digest(
        {
            "stage": STORYLINE_VERSION,
            "request": request.model_dump(mode="json"),
            "image": file_sha256(parameters["image"]),
        }
    )


@cached_network_task("storyline", _storyline_key)
def storyline(request: StorylineRequest, image: Path) -> Storyline:
    """The prompt stream for the picture; a local Qwen is unloaded afterwards to leave the GPU to Wan."""
    try:
        return write_storyline(image, request)
    finally:
        release_qwen()


FOLLOW_VERSION = "follow-1"


def _follow_key(context, parameters) -> str:
    return "follow-" + content_digest(
        {
            "stage": FOLLOW_VERSION,
            "request": parameters["request"].model_dump(mode="json"),
            "picture": file_sha256(parameters["picture"]),
            "previous": parameters["previous_key"],  # the clip's content key: what its frames are made from
            "story": parameters["story"],
            "planned": parameters["planned"],
        }
    )


@cached_network_task("follow-prompt", _follow_key, task_run_name="prompt-{k:04d}")
def follow_prompt_task(
    request: StorylineRequest,
    picture: Path,
    previous_clip: Path,
    previous_key: str,
    story: list[str],
    planned: str | None,
    k: int,
) -> str:
    """Clip k's prompt, written from the last frames of clip k−1 (`previous_clip`, whose content key is
    `previous_key`) and the story so far. A local Qwen stays loaded: it is asked again after the next clip."""
    return follow_prompt(picture, previous_clip, story, planned, request)


def follower(request: FilmRequest, run: RunFolder) -> NextPrompts:
    """Follow mode's prompt writer for `run`: storyline.yaml is read before each clip (an edit made since is kept)
    and written after each new prompt."""
    storyline_request = request.storyline_request()

    def next_prompts(k: int, previous: ClipResult, prompts: list[str]) -> list[str]:
        record = read_storyline(run.storyline)
        if record.pinned(k):
            get_run_logger().info("clip %d: the prompt edited in %s is kept", k, run.storyline)
            return record.prompts
        planned = record.planned[k] if k < len(record.planned) else None
        prompt = follow_prompt_task(
            storyline_request, run.reference, run.clip(k - 1), previous.key, prompts[:k], planned, k
        )
        record = record.with_followed(k, prompt)
        save_storyline(record, run.storyline)
        return record.prompts

    return next_prompts


def story_for(request: FilmRequest, run: RunFolder, picture: Path, timings: dict[str, float]) -> PromptStream:
    """The reference frame from `picture`, and the prompt stream written for it (or taken), with the overrides its
    entries set."""
    normalise_reference(picture, run.reference, max_width=request.render.max_width)
    start = time.perf_counter()
    if request.own_prompts():
        stream = request.own_prompt_stream()
    elif run.storyline.is_file():
        get_run_logger().info(
            "using %s as it is (edit it to change the film; delete it to write a new one)", run.storyline
        )
        stream = read_prompt_stream(run.storyline)
    else:
        written = storyline(request.storyline_request(), run.reference)
        if request.follows():  # the plan's prompts stay on record as the beats follow mode writes towards
            written = written.model_copy(update={"planned": written.prompts})
        save_storyline(written, run.storyline)
        stream = written.prompts, []
    prompts = stream[0]
    if len(prompts) < request.clips and request.settings().prompt_mode == "stream" and not request.follows():
        remedy = (
            f"write one for every clip in {request.storyline.prompts or 'the request'}"
            if request.own_prompts()
            else f"delete {run.storyline} to write one for every clip"
        )
        get_run_logger().warning(
            "%d prompts for %d clips: the stream starts over (%s)", len(prompts), request.clips, remedy
        )
    timings["storyline"] = time.perf_counter() - start
    return stream

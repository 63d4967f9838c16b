"""`svi generate`: the engine without the orchestrator. One image + a prompt stream → a long video.

Every finished clip is stored losslessly in a work folder beside the output (`film.clips/` for `film.mp4`) with
the state the next clip needs, and a preview of the film so far is rewritten after every clip. Running the same
request again continues after the last stored clip and gives the same film as an uninterrupted run; a different
request never overwrites stored clips unless asked to.
"""

import hashlib
import json
import shutil
from pathlib import Path

import torch
from pydantic import BaseModel, Field
from tqdm.auto import tqdm

from svi_model.atomic_files import write_text_atomic
from svi_model.chain import FilmRenderer
from svi_model.recipes import FilmSettings

from .engines import EngineSpec, load_engine
from .reference import MAX_WIDTH, load_reference
from .run_folder import load_state, save_state
from .video_files import StoredFrames, stitched_clips, write_clip, write_film


class GenerateRequest(BaseModel):
    """A whole `svi generate` run; every default filled in."""

    image: Path
    prompts: list[str] = Field(min_length=1)
    clips: int = Field(ge=1)
    settings: FilmSettings
    engine: EngineSpec
    out: Path = Path("film.mp4")
    fps: float = 16
    max_width: int = MAX_WIDTH
    overwrite: bool = False

    def fingerprint(self, reference: torch.Tensor) -> dict:
        """What decides the frames: a changed field means stored clips belong to another film."""
        return {
            **self.model_dump(mode="json", include={"prompts", "settings"}),
            "engine": self.engine.identity(),
            "reference_sha256": hashlib.sha256(reference.numpy().tobytes()).hexdigest(),
        }


class StoredClipsMismatch(ValueError):
    """The work folder holds clips of a different request."""


def _clip_path(work: Path, k: int) -> Path:
    return work / f"clip_{k:04d}.mkv"


def _state_path(work: Path, k: int) -> Path:
    return work / f"clip_{k:04d}.state.safetensors"


def _stored_clip_count(work: Path, num_clips: int) -> int:
    """How many clips from clip 0 on are stored with their state (a clip without its state is redone)."""
    k = 0
    while k < num_clips and _clip_path(work, k).is_file() and _state_path(work, k).is_file():
        k += 1
    return k


def prepare_work_folder(request: GenerateRequest, reference: torch.Tensor) -> tuple[Path, int]:
    """The work folder and the first clip still to render, refusing to mix clips of different requests."""
    work = request.out.with_suffix(".clips")
    record = work / "request.json"
    fingerprint = request.fingerprint(reference)
    if record.is_file() and json.loads(record.read_text()) != fingerprint:
        if not request.overwrite:
            raise StoredClipsMismatch(
                f"{work} holds clips of a different request (prompts, settings, image, model or LoRA changed): "
                "choose another --out, or pass --overwrite to discard them"
            )
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    write_text_atomic(record, json.dumps(fingerprint, indent=2))
    return work, _stored_clip_count(work, request.clips)


def _film_so_far(settings: FilmSettings, work: Path, done: int) -> list[StoredFrames]:
    """The film of clips 0..done−1 (the last stored clip counts as the last)."""
    return stitched_clips(settings, [_clip_path(work, k) for k in range(done)])


def generate_film(request: GenerateRequest) -> Path:
    """Render (or finish rendering) the film of `request`; returns the path of the MP4."""
    reference = load_reference(request.image, request.max_width)
    work, start = prepare_work_folder(request, reference)
    preview = request.out.with_name(request.out.stem + ".preview.mp4")
    settings = request.settings
    if start < request.clips:
        renderer = FilmRenderer(load_engine(request.engine), settings, reference, request.prompts)
        stored = None if start == 0 else load_state(_state_path(work, start - 1))
        clip_bar = tqdm(total=request.clips, initial=start, desc="clips", unit="clip")
        step_bar = tqdm(total=settings.steps, desc="steps", unit="step", leave=False)

        def on_step(step: int, total: int) -> None:
            step_bar.n = step
            step_bar.refresh()

        for k, output, state in renderer.clips(request.clips, start, stored, on_step=on_step):
            write_clip(output.frames, _clip_path(work, k), request.fps)
            save_state(state, _state_path(work, k))
            write_film(_film_so_far(settings, work, k + 1), preview, request.fps, preset="ultrafast", progress=False)
            clip_bar.update()
            step_bar.reset()
        step_bar.close()
        clip_bar.close()
    write_film(_film_so_far(settings, work, request.clips), request.out, request.fps)
    preview.unlink(missing_ok=True)
    return request.out


def describe(request: GenerateRequest) -> str:
    """One line that says what will be rendered."""
    s = request.settings
    seconds = s.film_length(request.clips) / request.fps
    return (
        f"{request.clips} clips x {s.num_frames} frames ({s.chaining} chaining, m={s.motion_frames}, "
        f"{s.padding} padding, {s.steps} steps, CFG {s.guidance_scale}) -> {request.out} "
        f"({s.film_length(request.clips)} frames, {seconds:.1f} s at {request.fps:g} fps) on {request.engine.device}"
    )

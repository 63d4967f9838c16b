"""The synthesize stage: one clip at a time into the run folder, reusing any clip already made, rendering again
a clip that fails the request's checks.

A clip is fully decided by its *clip key*: the stage version, the engine's identity (model folder, LoRA, dtype), the
clip settings, its prompt and seed (and the overrides its stream entry sets), the reference image, the exact state
the previous clip handed over, and the checks it must pass (when there are any). Finished clips live in a
content-addressed store keyed by it (`ClipStore`), so a retried run, a rerun, or another run folder with the same
inputs reuses them without touching the GPU; changing the prompt of clip 3 changes the keys of clips 3, 4, … (each
depends on the state before it) and nothing before.
"""

import logging
from dataclasses import dataclass, field

import torch
from pydantic import BaseModel, ConfigDict, Field

from svi_model.chain import ChainState, FilmRenderer
from svi_model.clip_overrides import ClipOverrides, entry_overrides
from svi_model.modes import FilmSettings
from svi_model.sampler import ClipOutput, StepCallback

from ..cache_folder import clip_store_folder
from ..hashing import content_digest, tensor_digest
from ..run_folder import RunFolder, load_reference_png, load_state
from .checks import verdicts
from .clip_store import ClipStore
from .engines import EngineSpec, loaded_sampler

log = logging.getLogger(__name__)

# The memory mode to try after each one runs out of GPU memory (docs: README "Smaller GPUs").
LESS_MEMORY = {
    "none": "--offload model (each module moves to the GPU only while it runs)",
    "experts": "--offload group (blocks stream to the GPU as they run; slower, fits a 24 GB GPU)",
    "model": "--offload group (blocks stream to the GPU as they run; slower, fits a 24 GB GPU)",
}


class GpuOutOfMemory(RuntimeError):
    """The GPU ran out of memory rendering a clip; the message names the memory mode to try."""


def _out_of_memory(k: int, spec: EngineSpec, error: torch.OutOfMemoryError) -> GpuOutOfMemory:
    advice = [LESS_MEMORY[spec.offload]] if spec.offload in LESS_MEMORY else []
    if not spec.vae_tiling:
        advice.append("--vae-tiling (the VAE decodes in tiles)")
    advice.append("or a smaller --max-width")
    detail = str(error).splitlines()[0] if str(error) else "CUDA out of memory"
    return GpuOutOfMemory(
        f"the GPU ran out of memory rendering clip {k} with --offload {spec.offload} ({detail}): try "
        f"{', '.join(advice)}; finished clips are kept"
    )


# Bump when the code that renders a clip changes what it produces: old cache entries then stop matching.
STAGE_VERSION = "synthesize-1"


class ClipJob(BaseModel):
    """What decides every clip of one run folder, besides the files it starts from (reference, previous state)."""

    model_config = ConfigDict(frozen=True)

    settings: FilmSettings
    prompts: list[str] = Field(min_length=1, description="the prompt stream; clip k's is the settings' rule")
    overrides: list[ClipOverrides | None] = Field(
        default_factory=list, description="beside each entry of the stream, the settings it sets for its clips"
    )
    engine: EngineSpec
    fps: float = 16.0
    checks: tuple[str, ...] = Field((), description="names in CLIP_CHECKS a clip must pass")
    max_attempts: int = Field(1, ge=1, description="renders a clip may take to pass its checks")

    def prompt_for(self, k: int) -> str:
        return self.settings.prompt_for(k, self.prompts)

    def overrides_for(self, k: int) -> ClipOverrides | None:
        """What the stream entry clip k takes its prompt from sets for it (None: nothing)."""
        return entry_overrides(self.settings, self.overrides, k, len(self.prompts))


@dataclass
class ClipResult:
    """What the stage did for one clip: its key, whether it came from the store, and every render behind it
    (`{"attempt", "seed", "verdicts", "passed"}`; the last one is the clip)."""

    k: int
    key: str
    reused: bool
    attempts: list[dict] = field(default_factory=list)


def clip_key(k: int, job: ClipJob, reference: torch.Tensor, previous: ChainState | None) -> str:
    """The content key of clip `k` (see the module docstring)."""
    settings = job.settings
    fields = {
        "stage": STAGE_VERSION,
        "engine": job.engine.identity(),
        "settings": settings.clip_fields(),
        "prompt": settings.prompt_for(k, job.prompts),
        "seed": settings.seed_for(k),
        "fps": float(job.fps),  # 16 and 16.0 are the same film
        "reference": tensor_digest({"reference": reference}),
        "previous": None if previous is None else tensor_digest(previous.tensors()),
    }
    overrides = job.overrides_for(k)
    if overrides is not None and overrides.given():  # (absent without overrides: keys made before them still match)
        fields["overrides"] = overrides.given()
    if job.checks:  # without checks the key is what it was before checks existed, so stored clips still match
        fields["checks"] = {"names": list(job.checks), "max_attempts": job.max_attempts}
    return content_digest(fields)


def _clip_inputs(run: RunFolder, k: int) -> tuple[torch.Tensor, ChainState | None]:
    """What clip `k` of `run` starts from: the reference and clip k−1's stored state (None for clip 0)."""
    if k > 0 and not run.state(k - 1).is_file():
        raise FileNotFoundError(f"clip {k} needs clip {k - 1} first: {run.state(k - 1)} is missing")
    return load_reference_png(run.reference), load_state(run.state(k - 1)) if k > 0 else None


def run_clip_key(run: RunFolder, k: int, job: ClipJob) -> str:
    """The content key of clip `k` of `run`, from the files it starts from."""
    return clip_key(k, job, *_clip_inputs(run, k))


def _render_and_store(
    k: int,
    job: ClipJob,
    store: ClipStore,
    key: str,
    reference: torch.Tensor,
    previous: ChainState | None,
    on_step: StepCallback | None,
) -> None:
    """Render clip `k` (again with the next attempt's seed while it fails a check) and store the last render."""
    try:
        output, state, attempts = _render_until_checks_pass(k, job, reference, previous, on_step)
    except torch.OutOfMemoryError as error:
        raise _out_of_memory(k, job.engine, error) from None
    store.put(key, output.frames, state, job.fps, attempts if job.checks else None)


def _render_until_checks_pass(
    k: int, job: ClipJob, reference: torch.Tensor, previous: ChainState | None, on_step: StepCallback | None
) -> tuple[ClipOutput, ChainState, list[dict]]:
    """Clip `k`'s last render (the first that passes every check, or the last attempt), the state after it, and the
    record of every render."""
    renderer = FilmRenderer(loaded_sampler(job.engine), job.settings, reference, job.prompts, job.overrides)
    attempts = []
    for attempt in range(job.max_attempts):
        output, state = renderer.render_clip(k, previous, on_step, attempt=attempt)
        found = verdicts(output.frames, job.checks)
        failed = {name: why for name, why in found.items() if why}
        seed = renderer.overrides_for(k).seed_for(job.settings, k, attempt)
        attempts.append({"attempt": attempt, "seed": seed, "verdicts": found, "passed": not failed})
        if not failed:
            break
        log.warning("clip %d attempt %d (seed %d) failed %s", k, attempt, seed, "; ".join(failed.values()))
    return output, state, attempts


def synthesize_clip(
    run: RunFolder,
    k: int,
    job: ClipJob,
    store: ClipStore | None = None,
    on_step: StepCallback | None = None,
    key: str | None = None,
) -> ClipResult:
    """Make clip `k` of `run` from its reference and clip k−1's stored state; reuse it if it was made before.

    A render that fails one of `job.checks` is made again with the next attempt's seed, up to `job.max_attempts`
    renders; when none passes, the last one is kept (a film is not stopped by a check) and the record says so.
    key: the clip's `run_clip_key` when the caller has it already (the flow's cache key); else computed here.
    """
    store = store or ClipStore(clip_store_folder())
    reference, previous = _clip_inputs(run, k)
    key = key or clip_key(k, job, reference, previous)
    reused = store.has(key, job.settings.num_frames)
    if not reused:
        with store.making(key):
            # Another run may have made it while this one waited for the lock.
            reused = store.has(key, job.settings.num_frames)
            if not reused:
                _render_and_store(k, job, store, key, reference, previous, on_step)
    store.materialise(key, run, k)
    return ClipResult(k=k, key=key, reused=reused, attempts=store.attempts(key))

"""The `synthesize` stage: one clip at a time into the run folder, reusing any clip already made.

A clip is fully decided by its *clip key*: the stage version, the engine's identity (model folder, LoRA, dtype),
the clip settings, its prompt and seed, the reference image, and the exact state the previous clip handed over.
Finished clips live in a content-addressed store keyed by it (`$SVI_CACHE_DIR/clips/<key>/`), so a retried run,
a rerun, or another run folder with the same inputs reuses them without touching the GPU; changing the prompt of
clip 3 changes the keys of clips 3, 4, … (each depends on the state before it) and nothing before.
"""

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from svi_model.chain import ChainState, FilmRenderer
from svi_model.recipes import FilmSettings
from svi_model.sampler import StepCallback

from .cache_folder import clip_store_folder
from .engines import EngineSpec, load_engine
from .file_hashes import content_digest
from .run_folder import RunFolder, load_reference_png, load_state, save_state
from .video_files import write_clip

# Bump when the code that renders a clip changes what it produces: old cache entries then stop matching.
STAGE_VERSION = "synthesize-1"


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 of named tensors: names, dtypes, shapes and bytes (independent of how they were stored)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        value = tensors[name].contiguous()
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)}".encode())
        digest.update(value.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def clip_key(
    k: int,
    settings: FilmSettings,
    prompts: list[str],
    engine: EngineSpec,
    reference: torch.Tensor,
    previous: ChainState | None,
    fps: float,
) -> str:
    """The content key of clip `k` (see the module docstring)."""
    fields = {
        "stage": STAGE_VERSION,
        "engine": engine.identity(),
        "settings": settings.model_dump(mode="json"),
        "prompt": settings.prompt_for(k, prompts),
        "seed": settings.seed_for(k),
        "fps": float(fps),  # 16 and 16.0 are the same film
        "reference": tensor_digest({"reference": reference}),
        "previous": None if previous is None else tensor_digest(_state_tensors(previous)),
    }
    return content_digest(fields)


def _state_tensors(state: ChainState) -> dict[str, torch.Tensor]:
    return {name: value for name, value in vars(state).items() if value is not None}


@dataclass
class ClipStore:
    """Finished clips by content key: `<root>/<key>/clip.mkv` and `state.safetensors`."""

    root: Path

    def clip(self, key: str) -> Path:
        return self.root / key / "clip.mkv"

    def state(self, key: str) -> Path:
        return self.root / key / "state.safetensors"

    def has(self, key: str) -> bool:
        """Both files are there (each is written atomically, the state last)."""
        return self.clip(key).is_file() and self.state(key).is_file()

    def put(self, key: str, frames: torch.Tensor, state: ChainState, fps: float) -> None:
        write_clip(frames, self.clip(key), fps)
        save_state(state, self.state(key))

    def materialise(self, key: str, run: RunFolder, k: int) -> None:
        """Place the stored clip `key` as clip `k` of `run` (a hard link where possible, else a copy)."""
        for source, target in ((self.clip(key), run.clip(k)), (self.state(key), run.state(k))):
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.tmp")
            tmp.unlink(missing_ok=True)
            try:
                os.link(source, tmp)
            except OSError:
                shutil.copyfile(source, tmp)
            os.replace(tmp, target)


@dataclass
class ClipResult:
    """What the stage did for one clip."""

    k: int
    key: str
    reused: bool


def _clip_inputs(run: RunFolder, k: int) -> tuple[torch.Tensor, ChainState | None]:
    """What clip `k` of `run` starts from: the reference and clip k−1's stored state (None for clip 0)."""
    if k > 0 and not run.state(k - 1).is_file():
        raise FileNotFoundError(f"clip {k} needs clip {k - 1} first: {run.state(k - 1)} is missing")
    return load_reference_png(run.reference), load_state(run.state(k - 1)) if k > 0 else None


def run_clip_key(
    run: RunFolder, k: int, settings: FilmSettings, prompts: list[str], engine: EngineSpec, fps: float
) -> str:
    """The content key of clip `k` of `run`, from the files it starts from."""
    return clip_key(k, settings, prompts, engine, *_clip_inputs(run, k), fps)


def synthesize_clip(
    run: RunFolder,
    k: int,
    settings: FilmSettings,
    prompts: list[str],
    engine: EngineSpec,
    fps: float = 16,
    store: ClipStore | None = None,
    on_step: StepCallback | None = None,
    key: str | None = None,
) -> ClipResult:
    """Make clip `k` of `run` from its reference and clip k−1's stored state; reuse it if it was made before.

    key: the clip's `run_clip_key` when the caller has it already (the flow's cache key); else computed here.
    """
    store = store or ClipStore(clip_store_folder())
    reference, previous = _clip_inputs(run, k)
    key = key or clip_key(k, settings, prompts, engine, reference, previous, fps)
    reused = store.has(key)
    if not reused:
        renderer = FilmRenderer(load_engine(engine), settings, reference, prompts)
        output, state = renderer.render_clip(k, previous, on_step)
        store.put(key, output.frames, state, fps)
    store.materialise(key, run, k)
    return ClipResult(k=k, key=key, reused=reused)

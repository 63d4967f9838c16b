"""The synthesize stage: the clips of a run folder, one at a time on the loaded engine, kept by content key in the
clip store and checked by the request's per-clip checks (`CLIP_CHECKS`)."""

from .checks import CLIP_CHECKS, ClipCheck
from .clip_store import ClipStore
from .driver import NextPrompts, render_clips
from .engines import EngineSpec, loaded_sampler
from .stage import ClipJob, ClipResult, GpuOutOfMemory, clip_key, run_clip_key, synthesize_clip

__all__ = [
    "CLIP_CHECKS",
    "ClipCheck",
    "ClipJob",
    "ClipResult",
    "ClipStore",
    "EngineSpec",
    "GpuOutOfMemory",
    "clip_key",
    "loaded_sampler",
    "NextPrompts",
    "render_clips",
    "run_clip_key",
    "synthesize_clip",
]

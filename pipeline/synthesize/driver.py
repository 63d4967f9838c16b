"""The film driver: the clips of one run folder, in order, each from the state the one before left. `svi film`
(a Prefect task per clip) and `svi generate` (no orchestrator) both render through it, so resuming (a clip whose
key is in the store is reused), the clip store and the per-clip checks are one implementation.
"""

import logging
import time
from collections.abc import Callable

from svi_model.sampler import StepCallback

from ..cache_folder import clip_store_folder
from ..run_folder import RunFolder
from .clip_store import ClipStore
from .stage import ClipJob, ClipResult, run_clip_key, synthesize_clip

log = logging.getLogger(__name__)

# A run expected to take longer than this is announced after its first rendered clip, with the estimate.
LONG_RUN_S = 3600.0

ClipRenderer = Callable[[RunFolder, int, ClipJob, str], ClipResult]
"""(run, k, job, clip key) → what was done for clip k; `synthesize_clip` itself, or a Prefect task around it."""

NextPrompts = Callable[[int, ClipResult, list[str]], list[str]]
"""(k, what was done for clip k−1, the prompt stream) → the stream with clip k's prompt written (follow mode)."""


def render_clips(
    run: RunFolder,
    job: ClipJob,
    clips: int,
    render: ClipRenderer | None = None,
    on_clip: Callable[[ClipResult], None] | None = None,
    on_step: StepCallback | None = None,
    next_prompts: NextPrompts | None = None,
) -> list[ClipResult]:
    """Clips 0 … clips−1 of `run`, each placed in the run folder from the clip store; returns what was done.

    render: how one clip is made (default: `synthesize_clip`, in this process). Whatever it does, the clip is then
    placed in the run folder from the store, so a renderer whose result was cached elsewhere (a Prefect task
    result) still leaves the run folder complete. on_clip: called after each clip (progress, previews); on_step:
    after each sampling step of the default renderer. next_prompts: called before each clip after the first, to
    write its prompt from the clip before it (follow mode).
    """
    store = ClipStore(clip_store_folder())
    render = render or (lambda run, k, job, key: synthesize_clip(run, k, job, store, on_step, key))
    results, timed = [], False
    for k in range(clips):
        if next_prompts is not None and k > 0:
            job = job.model_copy(update={"prompts": next_prompts(k, results[-1], list(job.prompts))})
        started = time.monotonic()
        result = render(run, k, job, run_clip_key(run, k, job))
        store.materialise(result.key, run, k)
        results.append(result)
        if not (timed or result.reused):
            _warn_if_long(time.monotonic() - started, clips - k - 1)
            timed = True
        if on_clip is not None:
            on_clip(result)
    return results


def _warn_if_long(clip_s: float, clips_left: int) -> None:
    """Say how long the rest will take when the first rendered clip (`clip_s` seconds) makes it more than an hour."""
    left_s = clip_s * clips_left
    if left_s > LONG_RUN_S:
        log.warning(
            "a clip took %.0f s here: the %d clips left will take about %.1f hours (finished clips are kept; stop and "
            "resume at any time)",
            clip_s,
            clips_left,
            left_s / 3600,
        )

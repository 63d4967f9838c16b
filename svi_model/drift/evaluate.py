"""The drift evaluation: chained films of held-out toy-world pictures, rendered by several variants of one model
(the base, the base with an SVI LoRA at some strength, ablation LoRAs), measured clip by clip (`metrics`).

Each held-out film starts from a still of a random scene (a seed the training data does not use) and follows the
template's toy-world prompt stream (`toyworld.story.prompt_stream`), so the prompts are in the language the
model knows and any drift is the chain's own. Results: `drift-<date>.json`, a plot of every metric against the
clip index, and a contact sheet per variant (`report`).
"""

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..chain import FilmRenderer
from ..demo_model import PADDING
from ..loading import load_wan_pipeline
from ..lora_files import apply_lora, read_lora_file
from ..modes import mode_settings
from ..sampler import ClipSampler
from ..toyworld import random_scene, render_frames
from ..toyworld.story import prompt_stream
from .metrics import METRICS, clip_metrics

log = logging.getLogger(__name__)

# Scenes for held-out films are drawn from this seed; the demo model's training videos use seed 0.
HELD_OUT_SEED = 20261201
# Which clips the contact sheet shows (the last clip is added).
CONTACT_CLIPS = (0, 10, 25)
# `drift_growth` compares this many clips at the film's end with as many at its start (clips 1 on: clip 0 is not
# conditioned on generated frames).
GROWTH_WINDOW = 5


@dataclass(frozen=True)
class Variant:
    """One way of rendering: the model folder's DiT, with `lora` (None: the base alone) fused at `scale`."""

    name: str
    lora: Path | None = None
    scale: float = 1.0


@dataclass(frozen=True)
class HeldOutFilm:
    """A film to render: its first frame (uint8 `[H, W, 3]`), its prompt stream, and its toy's colour."""

    reference: torch.Tensor
    prompts: list[str]
    toy_colour: str


@dataclass
class VariantResult:
    """A variant's figures, each film's own (`per_film[metric][film][k]`: paired comparisons between variants,
    which render the same films), its contact frames, its render time."""

    variant: Variant
    per_film: dict[str, list[list[float | None]]]
    contact: list[np.ndarray] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def per_clip(self) -> dict[str, list[float | None]]:
        """Each metric's mean over the films, clip by clip (`per_clip[metric][k]`; None where no film has a value)."""
        return {name: [_mean(list(clip)) for clip in zip(*films, strict=True)] for name, films in self.per_film.items()}


def contact_clips(clips: int) -> list[int]:
    """The clips a contact sheet shows: those of `CONTACT_CLIPS` the film has, and its last."""
    return sorted({k for k in CONTACT_CLIPS if k < clips} | {clips - 1})


def held_out_films(count: int, clips: int, height: int, width: int, seed: int = HELD_OUT_SEED) -> list[HeldOutFilm]:
    """`count` films of `clips` prompts each, from random still-camera scenes drawn from `seed`."""
    rng = np.random.default_rng(seed)
    films = []
    for _ in range(count):
        scene = random_scene(rng, camera="still")
        reference = torch.from_numpy(render_frames(scene, 1, height, width)[0].copy())
        films.append(HeldOutFilm(reference, prompt_stream(scene.toy, scene.background, clips), scene.toy.colour))
    return films


def variant_sampler(model: Path, variant: Variant) -> ClipSampler:
    """The model folder on the CPU in float32, with the variant's LoRA fused in."""
    pipe = load_wan_pipeline(model, device="cpu", transformer_dtype=torch.float32, text_encoder_dtype=torch.float32)
    if variant.lora is not None:
        apply_lora(pipe.transformer, read_lora_file(variant.lora), scale=variant.scale)
    return ClipSampler(pipe)


def evaluate_variant(
    model: Path, variant: Variant, films: list[HeldOutFilm], clips: int, num_frames: int, steps: int, progress: bool
) -> VariantResult:
    """Render every film with `variant` and average each metric over the films, clip by clip.

    Sampling as the demo does (SVI-Film with the demo model's padding, `steps` steps, no guidance); film 0's
    clips give the contact frames (the middle frame of clips `CONTACT_CLIPS` and of the last clip).
    """
    started = time.perf_counter()
    sampler = variant_sampler(model, variant)
    settings = mode_settings("film", num_frames=num_frames, padding=PADDING, steps=steps, guidance_scale=1.0)
    shown = contact_clips(clips)
    per_film, contact = [], []
    bar = tqdm(total=len(films) * clips, desc=f"drift: {variant.name}", unit="clip", disable=not progress)
    for index, film in enumerate(films):
        renderer = FilmRenderer(sampler, settings, film.reference, film.prompts)
        frames = []
        for k, output, _ in renderer.clips(clips):
            frames.append(output.frames.numpy())
            if index == 0 and k in shown:
                contact.append(frames[-1][len(frames[-1]) // 2])
            bar.update()
        per_film.append(clip_metrics(frames, film.reference.numpy(), film.toy_colour, settings.motion_frames))
    bar.close()
    by_film = {name: [[_number(film[k].get(name)) for k in range(clips)] for film in per_film] for name in METRICS}
    return VariantResult(variant, by_film, contact, time.perf_counter() - started)


def _number(value: float | None) -> float | None:
    """A metric as a number, or None where it has none (None for clip 0's seam, NaN where a toy vanished)."""
    return None if value is None or not np.isfinite(value) else float(value)


def _mean(values: list[float | None]) -> float | None:
    """The mean of the values that are numbers (`_number`)."""
    numbers = [v for v in values if _number(v) is not None]
    return float(np.mean(numbers)) if numbers else None


def drift_growth(per_clip: dict[str, list[float | None]], window: int = GROWTH_WINDOW) -> dict[str, float | None]:
    """Per metric, how much it moved along the chain: the mean of the last `window` clips minus that of clips 1 to
    `window`. A figure at the last clip mixes what every clip loses (the model's error within one clip) with what
    the chain adds up; this is the second alone, about 0 for a chain whose clips are as good at the end as at the
    start. None where the film has fewer than 2·window + 1 clips or a metric has no value at its start or end."""
    growth = {}
    for name, values in per_clip.items():
        start, end = _mean(values[1 : window + 1]), _mean(values[-window:])
        known = len(values) > 2 * window and start is not None and end is not None
        growth[name] = end - start if known else None
    return growth


def targets(base: VariantResult, erft: VariantResult) -> dict[str, float | bool | None]:
    """The issue's targets at the last clip: ERFT's colour drift and sharpness loss at most half the base's, its
    dynamic degree at least 80% of the base's (a model that copies the reference must not win)."""

    def last(result: VariantResult, name: str) -> float | None:
        return result.per_clip[name][-1]

    drift = (last(erft, "colour_drift"), last(base, "colour_drift"))
    loss = tuple(None if r is None else 1.0 - r for r in (last(erft, "sharpness_ratio"), last(base, "sharpness_ratio")))
    motion = (last(erft, "dynamic_degree"), last(base, "dynamic_degree"))
    known = all(v is not None for v in (*drift, *loss, *motion))
    return {
        "colour_drift_ratio": drift[0] / drift[1] if known and drift[1] else None,
        "sharpness_loss_ratio": loss[0] / loss[1] if known and loss[1] else None,
        "dynamic_degree_ratio": motion[0] / motion[1] if known and motion[1] else None,
        "met": bool(
            known and drift[0] <= 0.5 * drift[1] and loss[0] <= 0.5 * max(loss[1], 0.0) and motion[0] >= 0.8 * motion[1]
        ),
    }

"""Phase 2's check: does the base DiT carry what its condition shows into the frames it has to make up?

A clip sampled from pure noise gets its later frames' layout from the condition alone. At σ = 1 the DiT's input
holds nothing of the clip but the condition, so its prediction of the clean latents there (x0 = x_t − σ·v) is
what it has learned to read from the condition. The check compares that prediction's error on held-out clips'
later latent frames with the error of predicting each latent channel's mean over those frames (the clip's colours
without their layout): a base that does no better than that keeps the picture's colours and forgets where things
are, and its samples dissolve after the condition's frames (what the demo model measured on 2026-12-02).
"""

import numpy as np
import torch

from ..conditioning import condition_video, unit_range
from ..sampler import ClipSampler, mask_and_latents, predict_velocity
from ..seeds import derived_seed
from ..toyworld import random_scene, render_frames
from ..toyworld.captions import caption
from .recipe import HEIGHT, NUM_FRAMES, WIDTH

# Latent frames from this one on are made up in both conditions (five motion frames fill latent frames 0 and 1).
FIRST_MADE_UP_FRAME = 2
# The conditions a film's clips have: clip 0's first frame alone, then SVI-Film's five motion frames.
CONDITION_FRAMES = {"first_frame": 1, "motion_frames": 5}


@torch.no_grad()
def condition_use(sampler: ClipSampler, seed: int, count: int = 8, sigma: float = 1.0) -> dict[str, float]:
    """The DiT's x0 error at `sigma` on the made-up latent frames of `count` held-out world clips, per condition,
    beside the channel-mean baseline's; each a mean squared error over normalised latents.

    Returns {"first_frame": …, "motion_frames": …, "channel_mean": …, "gain": 1 − (mean of the two) / channel_mean}:
    gain 0 is a base that reads only colours from its condition, gain 1 one that predicts the clip exactly.
    """
    transformer = sampler.pipe.transformer
    timestep = torch.tensor([1000.0 * sigma], device=sampler.device)
    errors = {name: [] for name in CONDITION_FRAMES}
    baseline = []
    for index in range(count):
        rng = np.random.default_rng(derived_seed(seed, "base-check", index))
        scene = random_scene(rng)
        frames = torch.from_numpy(render_frames(scene, NUM_FRAMES, HEIGHT, WIDTH))
        latents = sampler.encode(unit_range(frames))
        later = latents[:, FIRST_MADE_UP_FRAME:]
        baseline.append((later - later.mean(dim=(1, 2, 3), keepdim=True)).square().mean().item())
        # Cast as the sampler casts them for the DiT (`ClipSampler.denoise`).
        text = sampler.text_embeddings(caption(scene)).to(transformer.dtype)
        image = sampler.image_embeddings(frames[0])
        image = None if image is None else image.to(transformer.dtype)
        noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(derived_seed(seed, "noise", index)))
        noisy = (1 - sigma) * latents + sigma * noise
        for name, motion in CONDITION_FRAMES.items():
            condition = mask_and_latents(sampler.encode(condition_video(frames[:motion], NUM_FRAMES)))
            model_input = torch.cat([noisy, condition])[None].to(sampler.device, transformer.dtype)
            velocity = predict_velocity(transformer, model_input, timestep, text, image)[0].float().cpu()
            predicted = noisy - sigma * velocity
            errors[name].append((predicted - latents)[:, FIRST_MADE_UP_FRAME:].square().mean().item())
    result = {name: float(np.mean(values)) for name, values in errors.items()}
    result["channel_mean"] = float(np.mean(baseline))
    result["gain"] = 1.0 - float(np.mean(list(errors.values()))) / result["channel_mean"]
    return result

"""Phase 2's check: does the base DiT carry what its condition shows into the frames it has to make up?

A clip sampled from pure noise gets its later frames' layout from the condition alone. At σ = 1 the DiT's input
holds nothing of the clip but the condition, so its prediction of the clean latents there (x0 = x_t − σ·v) is
what it has learned to read from the condition. The check compares that prediction's error on held-out clips'
later latent frames with two baselines: predicting each latent channel's mean over those frames (the clip's colours
without their layout: a grey-padded base on the 2026-12-02 recipe scored no better, and its samples dissolved after
the condition's frames), and copying the condition's own latents there (its reference picture, where the padding
is the reference: a base that only copies keeps the scene and moves nothing).
"""

import numpy as np
import torch

from ..conditioning import condition_video, unit_range
from ..sampler import ClipSampler, mask_and_latents, predict_velocity
from ..seeds import derived_seed
from ..toyworld import random_scene, render_frames
from ..toyworld.captions import caption
from .recipe import HEIGHT, NUM_FRAMES, WIDTH
from .shipped import PADDING

# Latent frames from this one on are made up in both conditions (five motion frames fill latent frames 0 and 1).
FIRST_MADE_UP_FRAME = 2
# The clips of a film the check stands for: clip 0 from the first frame alone, and clip 1, which starts at film
# frame NUM_FRAMES − 5 from the five frames before (SVI-Film's stitching), padded with the film's first frame.
CONDITION_STARTS = {"first_frame": (0, 1), "motion_frames": (NUM_FRAMES - 5, 5)}


@torch.no_grad()
def condition_use(sampler: ClipSampler, seed: int, count: int = 8, sigma: float = 1.0) -> dict[str, float]:
    """The DiT's x0 error at `sigma` on the made-up latent frames of `count` held-out world films' clips 0 and 1,
    beside the baselines'; each a mean squared error over normalised latents.

    Returns {"first_frame": …, "motion_frames": …, "channel_mean": …, "reference_copy": …, "gain": 1 − (mean of the
    two) / channel_mean}: gain 0 is a base that reads only colours from its condition, gain 1 one that predicts the
    clip exactly; an error at `reference_copy` is a base that copies its condition's picture.
    """
    transformer = sampler.pipe.transformer
    timestep = torch.tensor([1000.0 * sigma], device=sampler.device)
    errors = {name: [] for name in CONDITION_STARTS}
    channel_mean, reference_copy = [], []
    for index in range(count):
        rng = np.random.default_rng(derived_seed(seed, "base-check", index))
        scene = random_scene(rng)
        film = torch.from_numpy(render_frames(scene, 2 * NUM_FRAMES, HEIGHT, WIDTH))
        # Cast as the sampler casts them for the DiT (`ClipSampler.denoise`).
        text = sampler.text_embeddings(caption(scene)).to(transformer.dtype)
        for name, (start, motion) in CONDITION_STARTS.items():
            frames = film[start : start + NUM_FRAMES]
            latents = sampler.encode(unit_range(frames))
            later = latents[:, FIRST_MADE_UP_FRAME:]
            channel_mean.append((later - later.mean(dim=(1, 2, 3), keepdim=True)).square().mean().item())
            condition_latents = sampler.encode(condition_video(frames[:motion], NUM_FRAMES, PADDING, film[0]))
            reference_copy.append((condition_latents[:, FIRST_MADE_UP_FRAME:] - later).square().mean().item())
            image = sampler.image_embeddings(frames[0])
            image = None if image is None else image.to(transformer.dtype)
            generator = torch.Generator().manual_seed(derived_seed(seed, "noise", index, name))
            noise = torch.randn(latents.shape, generator=generator)
            noisy = (1 - sigma) * latents + sigma * noise
            model_input = torch.cat([noisy, mask_and_latents(condition_latents)])[None]
            model_input = model_input.to(sampler.device, transformer.dtype)
            velocity = predict_velocity(transformer, model_input, timestep, text, image)[0].float().cpu()
            predicted = noisy - sigma * velocity
            errors[name].append((predicted - latents)[:, FIRST_MADE_UP_FRAME:].square().mean().item())
    result = {name: float(np.mean(values)) for name, values in errors.items()}
    result["channel_mean"] = float(np.mean(channel_mean))
    result["reference_copy"] = float(np.mean(reference_copy))
    result["gain"] = 1.0 - float(np.mean(list(errors.values()))) / result["channel_mean"]
    return result

"""Phase 1: the demo's `AutoencoderKLWan`, trained on toy-world clips shaped like what it will be asked to encode.

At test time the VAE encodes whole clips (frame 0 alone, then groups of 4) and SVI's condition videos: one or
five real frames, then mid-grey padding. An autoencoder trained on whole clips alone reconstructs neither the
lone first frame nor the grey padding well, so a third of the training clips are condition-style (one real frame
then grey, or five), and frame 0, which every later clip's conditioning starts from, weighs `FIRST_FRAME_WEIGHT`
times as much as the others. The loss is L1 on pixels, decoding slightly noised latents, plus a small penalty on
the latents' size.
"""

import logging
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKLWan
from tqdm.auto import tqdm

from ..conditioning import unit_range
from ..seeds import derived_seed
from ..toyworld import random_scene, render_frames
from . import phase_checkpoint
from .recipe import HEIGHT, NUM_FRAMES, VIDEO_FRAMES, WIDTH, DemoRecipe, demo_vae, learning_rate_factor

log = logging.getLogger(__name__)

FIRST_FRAME_WEIGHT = 4.0
# The latents are the posterior mean (sampling it with the variance the encoder starts with buries the signal for
# hundreds of steps); a fixed small noise on them teaches the decoder to forgive the DiT's small errors, and a
# small penalty on their size keeps the noise small relative to them.
LATENT_NOISE = 0.02
SIZE_WEIGHT = 1e-4
# Gradient norms run at 2-3 early on; clipping only the spikes (a new colour, a new pattern).
MAX_GRAD_NORM = 5.0
# Real frames of a condition-style training clip: the first frame alone (clip 0), or SVI-Film's five motion frames.
CONDITION_REAL_FRAMES = (1, 5)


def world_clip(seed: int, num_frames: int, crop: tuple[int, int]) -> torch.Tensor:
    """A random toy-world clip float32 `[3, num_frames, *crop]` in [-1, 1]: a random scene from a random start,
    cropped at a random place, and with probability 1/3 condition-style (1 or 5 real frames, then 0 = mid-grey)."""
    rng = np.random.default_rng(seed)
    start = int(rng.integers(VIDEO_FRAMES - num_frames))
    frames = render_frames(random_scene(rng), start + num_frames, HEIGHT, WIDTH)[start:]
    top, left = int(rng.integers(HEIGHT - crop[0] + 1)), int(rng.integers(WIDTH - crop[1] + 1))
    video = unit_range(torch.from_numpy(frames[:, top : top + crop[0], left : left + crop[1]].copy()))
    if rng.random() < 1 / 3:
        video[:, int(rng.choice(CONDITION_REAL_FRAMES)) :] = 0.0
    return video


def frame_weights(num_frames: int) -> torch.Tensor:
    """`[1, 1, num_frames, 1, 1]`: frame 0 weighs FIRST_FRAME_WEIGHT, the others 1, normalised to mean 1."""
    weights = torch.ones(num_frames)
    weights[0] = FIRST_FRAME_WEIGHT
    return (weights / weights.mean()).view(1, 1, -1, 1, 1)


def train_vae(recipe: DemoRecipe, work: Path, progress: bool = True) -> AutoencoderKLWan:
    """Train (or resume training) the demo VAE; returns it in eval mode. Checkpoints go to `work/vae.pt`."""
    torch.manual_seed(derived_seed(recipe.seed, "vae", "init"))
    vae = demo_vae()
    optimizer = torch.optim.Adam(vae.parameters(), lr=recipe.vae_learning_rate)
    checkpoint = work / "vae.pt"
    done = phase_checkpoint.resume(checkpoint, vae, optimizer)
    vae.train()
    total = recipe.vae_steps + recipe.vae_long_steps
    bar = tqdm(total=total, initial=done, desc="phase 1: VAE", unit="step", disable=not progress)
    for step in range(done, total):
        long = step >= recipe.vae_steps
        for group in optimizer.param_groups:
            group["lr"] = (
                recipe.vae_long_learning_rate
                if long
                else recipe.vae_learning_rate * learning_rate_factor(step, recipe.vae_steps)
            )
        frames, batch_size = (NUM_FRAMES, 1) if long else (recipe.vae_frames, recipe.vae_batch)
        batch = torch.stack(
            [world_clip(derived_seed(recipe.seed, "vae", step, i), frames, recipe.vae_crop) for i in range(batch_size)]
        )
        latents = vae.encode(batch).latent_dist.mode()
        generator = torch.Generator().manual_seed(derived_seed(recipe.seed, "vae", "latent-noise", step))
        noisy = latents + LATENT_NOISE * torch.randn(latents.shape, generator=generator)
        decoded = vae.decode(noisy).sample
        reconstruction = ((decoded - batch).abs() * frame_weights(frames)).mean()
        size = latents.square().mean()
        loss = reconstruction + SIZE_WEIGHT * size
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), MAX_GRAD_NORM)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        bar.set_postfix(l1=f"{reconstruction.item():.4f}", size=f"{size.item():.2f}", refresh=False)
        bar.update()
        if (step + 1) % recipe.checkpoint_every == 0 or step + 1 == total:
            phase_checkpoint.save(checkpoint, vae, optimizer, step + 1)
            log.info("VAE step %d: L1 %.4f, latent mean square %.3f", step + 1, reconstruction.item(), size.item())
    bar.close()
    return vae.eval()


@torch.no_grad()
def reconstruction_psnr(vae: AutoencoderKLWan, seed: int, count: int = 8, num_frames: int = 33) -> dict[str, float]:
    """PSNR (dB) of the VAE's reconstruction of `count` held-out full-size world clips: of frame 0, of the later
    frames, and of condition-style clips (five real frames then grey), each a mean over clips."""
    results = {"first_frame": [], "later_frames": [], "condition": []}
    for index in range(count):
        rng = np.random.default_rng(derived_seed(seed, "vae-check", index))
        clip = unit_range(torch.from_numpy(render_frames(random_scene(rng), num_frames, HEIGHT, WIDTH)))
        condition = clip.clone()
        condition[:, 5:] = 0.0
        for name, video in (("clip", clip), ("condition", condition)):
            decoded = vae.decode(vae.encode(video[None]).latent_dist.mode()).sample[0].clamp(-1, 1)
            if name == "condition":
                results["condition"].append(_psnr(decoded, video))
            else:
                results["first_frame"].append(_psnr(decoded[:, :1], video[:, :1]))
                results["later_frames"].append(_psnr(decoded[:, 1:], video[:, 1:]))
    return {name: float(np.mean(values)) for name, values in results.items()}


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two videos in [-1, 1] (peak-to-peak 2)."""
    mse = (a - b).square().mean().item()
    return float(10 * np.log10(4.0 / max(mse, 1e-12)))

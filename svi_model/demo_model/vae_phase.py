"""Phase 1: the demo's `AutoencoderKLWan`, trained on toy-world clips shaped like what it will be asked to encode.

At test time the VAE encodes whole clips (frame 0 alone, then groups of 4) and SVI's condition videos: one or
five real frames, then mid-grey padding. An autoencoder trained on whole clips alone reconstructs neither the
lone first frame nor the grey padding well, so a third of the training clips are condition-style (one real frame
then grey, or five), and frame 0, which every later clip's conditioning starts from, weighs `FIRST_FRAME_WEIGHT`
times as much as the others. The loss is L1 on pixels, decoding slightly noised latents, plus a small penalty on
the latents' size.

The toy is a few percent of a frame, so an L1 over whole frames barely sees it: after the first two stages the
VAE kept backgrounds and lost moving toys (`reconstruction_quality`'s toy_kept 0.21: a rolling ball's colour
washed into the background after a few frames). The third stage crops clips around the toy and weighs its pixels,
and those it has just left, TOY_WEIGHT times more: 1000 steps took toy_kept to 0.95 and the later frames from 21.5
to 23.8 dB (2026-12-07 build).
"""

import logging
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKLWan
from tqdm.auto import tqdm

from ..conditioning import unit_range
from ..drift.metrics import toy_mask
from ..seeds import derived_seed
from ..toyworld import frames_and_toy_coverage, random_scene, render_frames
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
# The third stage's extra weight on toy pixels, and how many frames a toy's trail lasts: where it was in the last
# four frames (one latent frame) the background must come back, where the VAE smeared it.
TOY_WEIGHT = 10.0
TRAIL_FRAMES = 4


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


def toy_clip(seed: int, num_frames: int, crop: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """A random toy-world clip cropped around its toy, and its pixels' loss weights.

    Returns the video float32 `[3, num_frames, *crop]` in [-1, 1] and the weights float32 `[num_frames, *crop]`:
    1 + TOY_WEIGHT × the toy's coverage over this frame and the TRAIL_FRAMES − 1 before it. The crop is centred on
    the toy's mean position over the clip, moved by up to a quarter of its size either way.
    """
    rng = np.random.default_rng(seed)
    start = int(rng.integers(VIDEO_FRAMES - num_frames))
    scene = random_scene(rng)
    frames, coverage = (part[start:] for part in frames_and_toy_coverage(scene, start + num_frames, HEIGHT, WIDTH))
    trail = np.stack([coverage[max(0, f - TRAIL_FRAMES + 1) : f + 1].max(axis=0) for f in range(num_frames)])
    where = coverage.sum(axis=0)
    corner = []
    for axis, (size, extent) in enumerate(zip(crop, (HEIGHT, WIDTH), strict=True)):
        profile = where.sum(axis=1 - axis)
        centre = float((profile * np.arange(extent)).sum() / profile.sum()) if profile.sum() > 0 else extent / 2
        jitter = int(rng.integers(-(size // 4), size // 4 + 1))
        corner.append(int(np.clip(round(centre - size / 2) + jitter, 0, extent - size)))
    (top, left), (height, width) = corner, crop
    video = unit_range(torch.from_numpy(frames[:, top : top + height, left : left + width].copy()))
    weights = 1 + TOY_WEIGHT * torch.from_numpy(trail[:, top : top + height, left : left + width].copy())
    return video, weights


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
    total = recipe.vae_steps + recipe.vae_long_steps + recipe.vae_toy_steps
    bar = tqdm(total=total, initial=done, desc="phase 1: VAE", unit="step", disable=not progress)
    for step in range(done, total):
        learning_rate, batch, weights = _stage_batch(recipe, step)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate
        latents = vae.encode(batch).latent_dist.mode()
        generator = torch.Generator().manual_seed(derived_seed(recipe.seed, "vae", "latent-noise", step))
        noisy = latents + LATENT_NOISE * torch.randn(latents.shape, generator=generator)
        decoded = vae.decode(noisy).sample
        reconstruction = ((decoded - batch).abs() * weights).mean()
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


def _stage_batch(recipe: DemoRecipe, step: int) -> tuple[float, torch.Tensor, torch.Tensor]:
    """Step `step`'s learning rate, batch `[B, 3, F, h, w]` and loss weights (broadcasting against it), by stage:
    crops, then whole-length clips, then clips around the toy with its pixels weighed up."""
    seeds = [derived_seed(recipe.seed, "vae", step, i) for i in range(recipe.vae_batch)]
    if step < recipe.vae_steps:
        batch = torch.stack([world_clip(seed, recipe.vae_frames, recipe.vae_crop) for seed in seeds])
        factor = learning_rate_factor(step, recipe.vae_steps)
        return recipe.vae_learning_rate * factor, batch, frame_weights(recipe.vae_frames)
    if step < recipe.vae_steps + recipe.vae_long_steps:
        batch = world_clip(seeds[0], NUM_FRAMES, recipe.vae_crop)[None]
        return recipe.vae_long_learning_rate, batch, frame_weights(NUM_FRAMES)
    videos, weights = zip(*(toy_clip(seed, recipe.vae_toy_frames, recipe.vae_toy_crop) for seed in seeds), strict=True)
    factor = learning_rate_factor(step - recipe.vae_steps - recipe.vae_long_steps, recipe.vae_toy_steps)
    pixel_weights = torch.stack(weights)[:, None] * frame_weights(recipe.vae_toy_frames)
    return recipe.vae_toy_learning_rate * factor, torch.stack(videos), pixel_weights


@torch.no_grad()
def reconstruction_quality(vae: AutoencoderKLWan, seed: int, count: int = 8, num_frames: int = 33) -> dict[str, float]:
    """How well the VAE reconstructs `count` held-out full-size world clips, each figure a mean over clips: PSNR
    (dB) of frame 0, of the later frames, and of conditions as the demo pads them (five real frames, then a frame
    of the same scene from after the clip, as `recipe.TRAINING_CLIPS` pads with one from outside); and
    `toy_kept`, the toy's pixels found in the reconstruction's later frames over those in the truth's
    (`drift.metrics.toy_mask`: 1 when every toy pixel keeps its colour, 0 when the toy is lost, above 1 when its
    colour spreads around it)."""
    results = {"first_frame": [], "later_frames": [], "condition": [], "toy_kept": []}
    for index in range(count):
        rng = np.random.default_rng(derived_seed(seed, "vae-check", index))
        scene = random_scene(rng)
        rendered = render_frames(scene, num_frames + CONDITION_REAL_FRAMES[-1], HEIGHT, WIDTH)
        frames = rendered[:num_frames]
        clip = unit_range(torch.from_numpy(frames))
        condition = clip.clone()
        condition[:, CONDITION_REAL_FRAMES[-1] :] = unit_range(torch.from_numpy(rendered[-1:]))
        for name, video in (("clip", clip), ("condition", condition)):
            decoded = vae.decode(vae.encode(video[None]).latent_dist.mode()).sample[0].clamp(-1, 1)
            if name == "condition":
                results["condition"].append(_psnr(decoded, video))
                continue
            results["first_frame"].append(_psnr(decoded[:, :1], video[:, :1]))
            results["later_frames"].append(_psnr(decoded[:, 1:], video[:, 1:]))
            pixels = ((decoded.permute(1, 2, 3, 0) + 1) * 127.5).round().to(torch.uint8).numpy()
            truth = toy_mask(frames[1:], scene.toy.colour).sum()
            results["toy_kept"].append(float(toy_mask(pixels[1:], scene.toy.colour).sum() / max(truth, 1)))
    return {name: float(np.mean(values)) for name, values in results.items()}


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two videos in [-1, 1] (peak-to-peak 2)."""
    mse = (a - b).square().mean().item()
    return float(10 * np.log10(4.0 / max(mse, 1e-12)))

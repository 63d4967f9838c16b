"""The demo model's recipe: its sizes, its classes' configurations, and how long each training phase runs.

Sizes are chosen for 2 CPU cores. 64×112 frames, 33 per clip (9 latent frames), an `AutoencoderKLWan` that
compresses 4× in space (two spatial stages, both also temporal: Wan's 4× in time after a lone first frame), so a
clip is 9 × 16 × 28 latents; the DiT's 2×2 patches make that 1008 tokens. A clip encodes in about half a second
and a 30-step clip renders in a few seconds. The phase lengths are step counts (so a seed always gives the same
weights); on 2 cores the whole recipe takes 100 to 160 minutes, with the cores' speed (see the README's figures).
"""

import math
from dataclasses import dataclass

from diffusers import AutoencoderKLWan, WanTransformer3DModel

from ..tiny import tiny_transformer
from .shipped import PADDING

HEIGHT, WIDTH, NUM_FRAMES, FPS = 64, 112, 33, 16
# Training videos are longer than a clip so that clips start at every phase of a motion, as a film's later clips do.
VIDEO_FRAMES = 97
# How phases 2 and 3 cut and condition training clips (`erft.dataset.ClipSettings` changes to mode "film"): half
# continue from five motion frames, half start from the first frame alone; the padding is a frame of the same video
# from outside the clip, as a film's later clips are padded with a picture from before them.
TRAINING_CLIPS = dict(
    num_frames=NUM_FRAMES,
    height=HEIGHT,
    width=WIDTH,
    motion_probability=0.5,
    padding=PADDING,
    padding_anchor="outside",
)


@dataclass(frozen=True)
class DemoRecipe:
    """How the demo model is trained. Steps per phase, batch sizes, learning rates and seeds.

    videos: toy-world training videos (`toyworld.write_dataset`), each VIDEO_FRAMES long.
    vae_*: phase 1, the autoencoder on world clips of `vae_frames` frames cropped to `vae_crop` (it is
        convolutional: crops teach it the same at a quarter of the cost), a third of them condition-style; then
        `vae_long_steps` more on whole-length clips (NUM_FRAMES, batch 1) at `vae_long_learning_rate`: a causal
        VAE trained on short clips only reconstructs the frames after them at about 10 dB (measured: 24-27 dB for
        frames 0-8 of a 33-frame clip, 10-17 dB from frame 9 on).
    vae_toy_*: then `vae_toy_steps` on `vae_toy_frames`-frame clips cropped to `vae_toy_crop` around the toy, its
        pixels weighed up (`vae_phase.toy_clip`): the first two stages keep backgrounds and lose moving toys.
    check_clips: held-out clips phase 1's reconstruction is measured on, and min_vae_psnr the first-frame PSNR
        (dB) it must reach before phase 2 starts (below it the DiT would learn the VAE's blur, not the world).
    statistics_clips: clips the latents' per-channel mean and deviation are measured on (the VAE's
        `latents_mean` / `latents_std`).
    cache_samples: clips per video encoded for phases 2 and 3 (each with its own start and conditioning).
    base_*: phase 2, the whole DiT by flow matching (no error recycling), on clip-0 and motion-frame conditions.
    lora_*: phase 3, the SVI LoRA by the project's ERFT trainer on that base.
    """

    seed: int = 0
    videos: int = 400
    vae_steps: int = 4500
    vae_batch: int = 2
    vae_frames: int = 9
    vae_crop: tuple[int, int] = (32, 56)
    vae_learning_rate: float = 1e-3
    vae_long_steps: int = 500
    vae_long_learning_rate: float = 2e-4
    vae_toy_steps: int = 1000
    vae_toy_frames: int = 17
    vae_toy_crop: tuple[int, int] = (48, 64)
    vae_toy_learning_rate: float = 3e-4
    check_clips: int = 8
    min_vae_psnr: float = 22.0
    statistics_clips: int = 16
    cache_samples: int = 2
    base_steps: int = 3500
    base_batch: int = 4
    base_learning_rate: float = 4e-4
    lora_steps: int = 600
    lora_rank: int = 32
    checkpoint_every: int = 250

    def quick(self) -> "DemoRecipe":
        """The same recipe at a few steps per phase: a check that every phase runs (tests, `--quick`)."""
        return DemoRecipe(
            seed=self.seed,
            videos=6,
            vae_steps=3,
            vae_long_steps=1,
            vae_toy_steps=1,
            vae_batch=1,
            check_clips=1,
            min_vae_psnr=0.0,
            statistics_clips=2,
            cache_samples=1,
            base_steps=3,
            base_batch=2,
            lora_steps=3,
            lora_rank=4,
            checkpoint_every=2,
        )


def learning_rate_factor(step: int, total: int, warmup: int = 0, floor: float = 0.1) -> float:
    """A phase's learning-rate factor at `step` of `total`: a linear warm-up over `warmup` steps, then half a cosine
    from 1 down to `floor`."""
    if step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(step - warmup, span) / span))


def demo_vae() -> AutoencoderKLWan:
    """A fresh `AutoencoderKLWan`: base width 16, two stages (4× space, 4× time), 16 latent channels."""
    return AutoencoderKLWan(
        base_dim=16,
        z_dim=16,
        dim_mult=[1, 2, 2],
        num_res_blocks=1,
        temperal_downsample=[True, True],
        # Wan2.2's residual blocks: their parameter-free space-to-depth shortcuts carry the picture through from the
        # first step; without them a VAE this narrow outputs one grey picture for hundreds of steps.
        is_residual=True,
        scale_factor_spatial=4,
    )


def demo_transformer(seed: int) -> WanTransformer3DModel:
    """A fresh Wan2.1-I2V-layout DiT: 4 blocks × 4 heads × 32 dims, FFN 512, 2×2 patches, text 32 and CLIP image
    tokens 16 wide (the tiny encoders' widths, `svi_model.tiny`): 1.4 M parameters."""
    return tiny_transformer(seed, heads=4, head_dim=32, ffn_dim=512, layers=4, rope_max_seq_len=1024)

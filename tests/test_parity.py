"""One SVI clip with m=1 and zero padding is exactly diffusers' own WanImageToVideoPipeline output.

Both run the same tiny components, SVI's schedule, the same seed and prompts. The frame is 32×32, the tiny CLIP's
input size, so the authors' whole-frame resize and diffusers' resize + centre crop both leave it untouched and
the CLIP tokens agree; everything else (text padding, VAE condition, mask, noise, Euler/CFG loop, decoding) is
compared as it is.
"""

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, WanImageToVideoPipeline
from PIL import Image

from svi_model.chain import FilmRenderer
from svi_model.modes import mode_settings
from svi_model.sampler import ClipSampler, mask_and_latents
from svi_model.schedule import SVIFlowMatchScheduler
from svi_model.tiny import tiny_components

PROMPT, NEGATIVE, SEED, STEPS, FRAMES = "a cat walks on the beach at sunset", "low quality, static", 42, 4, 9


def frame() -> torch.Tensor:
    return torch.from_numpy((np.random.default_rng(0).random((32, 32, 3)) * 255).astype("uint8"))


def stock_video(scheduler) -> torch.Tensor:
    components = tiny_components()
    components["scheduler"] = scheduler
    pipe = WanImageToVideoPipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(
        image=Image.fromarray(frame().numpy()),
        prompt=PROMPT,
        negative_prompt=NEGATIVE,
        height=32,
        width=32,
        num_frames=FRAMES,
        num_inference_steps=STEPS,
        guidance_scale=5.0,
        generator=torch.Generator("cpu").manual_seed(SEED),
        output_type="pt",
    )
    return out.frames[0]  # [F, 3, H, W] in [0, 1]


def svi_video() -> torch.Tensor:
    components = tiny_components()
    components["scheduler"] = SVIFlowMatchScheduler()
    sampler = ClipSampler(WanImageToVideoPipeline(**components), negative_prompt=NEGATIVE)
    settings = mode_settings("tom", num_frames=FRAMES, steps=STEPS)  # m=1, zero padding
    condition = FilmRenderer(sampler, settings, frame(), [PROMPT]).condition(0, None)
    latents = sampler.denoise(
        mask_and_latents(condition.latents),
        sampler.image_embeddings(condition.image_encoder_frame),
        sampler.text_embeddings(PROMPT),
        sampler.text_embeddings(NEGATIVE),
        SEED,
        STEPS,
        5.0,
    )
    return (sampler.decode(latents).permute(1, 0, 2, 3) / 2 + 0.5).clamp(0, 1)


@pytest.fixture(scope="module")
def ours() -> torch.Tensor:
    return svi_video()


def test_one_clip_equals_diffusers_pipeline(ours):
    theirs = stock_video(SVIFlowMatchScheduler())
    assert ours.shape == theirs.shape == (FRAMES, 3, 32, 32)
    assert (ours - theirs).abs().max().item() <= 1e-5


def test_parity_check_is_sensitive_to_the_schedule(ours):
    """The comparison above can fail: diffusers' default shift-5 schedule moves the output well past 1e-5."""
    theirs = stock_video(FlowMatchEulerDiscreteScheduler(shift=5.0))
    assert (ours - theirs).abs().max().item() > 1e-4

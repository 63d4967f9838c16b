"""The demo model as a folder in diffusers' layout: the trained VAE and DiT beside the tiny kind's text and image
encoders (random, built offline from a seed: the DiT learned to read them as they are), with a tokenizer that has
one token per word of the toy world's captions."""

import shutil
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKLWan, WanImageToVideoPipeline, WanTransformer3DModel

from ..atomic_files import replace_folder
from ..conditioning import unit_range
from ..seeds import derived_seed
from ..tiny import tiny_components
from ..toyworld import (
    CAMERA_WORDS,
    COLOUR_WORDS,
    MOTION_WORDS,
    PATTERN_WORDS,
    SHAPE_WORDS,
    SIZE_WORDS,
    random_scene,
    render_frames,
)
from .recipe import HEIGHT, NUM_FRAMES, WIDTH

# The caption grammar's fixed words (`toyworld.captions`): "a ... on a ... background, the camera pans ...".
_GRAMMAR_WORDS = ("a", "on", "background", "the", "camera")


def world_words() -> tuple[str, ...]:
    """Every word the toy world's captions use, each once, in a fixed order."""
    phrases = [*SIZE_WORDS, *COLOUR_WORDS, *SHAPE_WORDS, *PATTERN_WORDS, *MOTION_WORDS.values()]
    phrases += [*CAMERA_WORDS.values(), *_GRAMMAR_WORDS]
    return tuple(dict.fromkeys(word for phrase in phrases for word in phrase.split()))


@torch.no_grad()
def set_latent_statistics(vae: AutoencoderKLWan, seed: int, count: int = 16) -> None:
    """Record the per-channel mean and standard deviation of the VAE's latents of `count` world clips in its
    config (`latents_mean`, `latents_std`), which the pipeline and the sampler normalise latents with: the DiT then
    sees latents of about unit variance, as Wan's does."""
    latents = []
    for index in range(count):
        rng = np.random.default_rng(derived_seed(seed, "latent-statistics", index))
        clip = unit_range(torch.from_numpy(render_frames(random_scene(rng), NUM_FRAMES, HEIGHT, WIDTH)))
        latents.append(vae.encode(clip[None]).latent_dist.mode()[0])
    stacked = torch.stack(latents).transpose(0, 1).flatten(1)  # [16, everything]
    vae.register_to_config(latents_mean=stacked.mean(1).tolist(), latents_std=stacked.std(1).tolist())


def write_model_folder(folder: Path, vae: AutoencoderKLWan, transformer: WanTransformer3DModel, seed: int) -> Path:
    """Save a `WanImageToVideoPipeline` of `vae`, `transformer` and the tiny encoders of `seed` to `folder`
    (replacing it whole, never half-written). Returns `folder`."""
    components = tiny_components(seed, words=world_words())
    components.update(vae=vae.eval(), transformer=transformer.eval())
    staged = folder.with_name(f".{folder.name}.staged")
    shutil.rmtree(staged, ignore_errors=True)
    WanImageToVideoPipeline(**components).save_pretrained(str(staged))
    replace_folder(staged, folder)
    return folder

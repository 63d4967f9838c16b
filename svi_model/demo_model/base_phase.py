"""Phase 2: the demo's base DiT, every weight trained by plain flow matching on the encoded toy-world clips.

This is what Wan's own I2V training is, at toy size: the same loss, σ grid and conditioning as ERFT
(`erft.step.ErftStep`) with error recycling off. The latent cache mixes clip-0 conditions (the first frame alone)
and SVI-Film's five motion frames, so the base can start a film and continue one; continuing without drift is
what phase 3 teaches.
"""

import math
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from diffusers import WanTransformer3DModel
from tqdm.auto import tqdm

from ..erft.error_bank import grid_sigmas
from ..erft.latent_cache import LatentCacheDataset
from ..erft.recycling import ErrorRecycler, RecyclingSettings
from ..erft.step import ErftStep
from ..erft.training_data import TrainingClips, process_order
from ..seeds import derived_seed
from . import phase_checkpoint
from .recipe import DemoRecipe, demo_transformer, learning_rate_factor

WARMUP_STEPS = 100


def train_base(
    recipe: DemoRecipe, cache: Path, work: Path, progress: bool = True
) -> tuple[WanTransformer3DModel, list]:
    """Train (or resume training) the base DiT on the latent cache `cache`; checkpoints go to `work/base.pt`.

    Returns the DiT in eval mode and the loss of every step run by this call (step, loss).
    """
    dataset = LatentCacheDataset(cache)
    transformer = demo_transformer(derived_seed(recipe.seed, "base", "init")).train()
    parameters = list(transformer.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=recipe.base_learning_rate, weight_decay=0.01)
    checkpoint = work / "base.pt"
    done = phase_checkpoint.resume(checkpoint, transformer, optimizer)
    AcceleratorState._reset_state()
    accelerator = Accelerator(cpu=True, mixed_precision="no")
    model, optimizer = accelerator.prepare(transformer, optimizer)
    latent_shape = tuple(dataset[0].latents.shape)
    recycler = ErrorRecycler(RecyclingSettings(enabled=False), latent_shape, grid_sigmas(), recipe.seed)
    step = ErftStep(accelerator, model, optimizer, parameters, recycler, torch.float32, 1.0, recipe.seed)
    clips = TrainingClips(dataset)
    steps_per_epoch = math.ceil(len(dataset) / recipe.base_batch)
    losses = []
    bar = tqdm(total=recipe.base_steps, initial=done, desc="phase 2: base DiT", unit="step", disable=not progress)
    while done < recipe.base_steps:
        epoch, position = divmod(done, steps_per_epoch)
        order = process_order(len(dataset), epoch, recipe.seed, 1, 0)[position * recipe.base_batch :]
        for items in clips.batches(order, recipe.base_batch, 0, epoch):
            for group in optimizer.param_groups:
                group["lr"] = recipe.base_learning_rate * learning_rate_factor(done, recipe.base_steps, WARMUP_STEPS)
            generator = torch.Generator().manual_seed(derived_seed(recipe.seed, "base", done))
            record, _ = step(clips.inputs(items, generator, accelerator.device, torch.float32), done)
            done += 1
            losses.append((done, record["loss"]))
            bar.set_postfix(loss=f"{record['loss']:.4f}", sigma=f"{record['sigma']:.2f}", refresh=False)
            bar.update()
            if done % recipe.checkpoint_every == 0 or done == recipe.base_steps:
                phase_checkpoint.save(checkpoint, transformer, optimizer, done)
            if done == recipe.base_steps:
                break
    bar.close()
    return transformer.eval(), losses

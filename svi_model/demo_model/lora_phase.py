"""Phase 3: the demo's SVI LoRA, trained by the project's ERFT trainer (`erft.trainer.train`) as it is, on the
phase-2 base and the same latent cache. Variants for the drift evaluation's ablations change `recycling`."""

from pathlib import Path

from ..erft.train_config import TrainConfig
from ..erft.trainer import TrainResult, train
from .recipe import HEIGHT, NUM_FRAMES, WIDTH, DemoRecipe

# Half of the clips in the cache continue from five motion frames, half start from the first frame alone.
MOTION_PROBABILITY = 0.5
LORA_LEARNING_RATE = 5e-4
# Bank size per grid: at the demo's latent size, 2 banks × 50 grids × 100 errors stay under 1.3 GB.
ERRORS_PER_GRID = 100


def lora_config(recipe: DemoRecipe, model: Path, cache: Path, out: Path, **recycling) -> TrainConfig:
    """The ERFT configuration of phase 3 (SVI-Film, m = 5) at the demo's size; `recycling` overrides the error
    recycling settings (e.g. `use_image_errors=False`)."""
    return TrainConfig(
        model=model,
        data={"latent_cache": cache},
        output_dir=out,
        mode="film",
        clip={"num_frames": NUM_FRAMES, "height": HEIGHT, "width": WIDTH, "motion_probability": MOTION_PROBABILITY},
        recycling={"errors_per_grid": ERRORS_PER_GRID, "storage_dtype": "float32", **recycling},
        learning_rate=LORA_LEARNING_RATE,
        steps=recipe.lora_steps,
        lora_rank=recipe.lora_rank,
        lora_alpha=recipe.lora_rank,
        seed=recipe.seed,
        checkpoint_every=recipe.checkpoint_every,
        mixed_precision="no",
        gradient_checkpointing=False,
    )


def train_lora(recipe: DemoRecipe, model: Path, cache: Path, out: Path, **recycling) -> TrainResult:
    """Train (or resume) the SVI LoRA on `model` from `cache` into `out`; returns the trainer's result."""
    return train(lora_config(recipe, model, cache, out, **recycling))

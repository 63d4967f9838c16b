"""Phase 3: the demo's SVI LoRA, trained by the project's ERFT trainer (`erft.trainer.train`) as it is, on the
phase-2 base and the same latent cache; and the drift evaluation's ablation LoRAs, trained the same way with one
thing changed (`ABLATIONS`)."""

from pathlib import Path

from ..erft.train_config import TrainConfig
from ..erft.trainer import TrainResult, train
from .recipe import TRAINING_CLIPS, DemoRecipe

LORA_LEARNING_RATE = 5e-4
# Bank size per grid: at the demo's latent size, 2 banks × 50 grids × 100 errors stay under 1.3 GB.
ERRORS_PER_GRID = 100

# The paper's ablations of error recycling, as changes to phase 3's recycling settings: Table 4's ERFT without the
# image errors (E_img), and Table 6's handcrafted degradation of the motion frames instead of the model's own errors
# (it degrades frames before they are encoded, so it trains from the videos, not the latent cache).
ABLATIONS: dict[str, dict] = {
    "no-image-errors": {"use_image_errors": False},
    "augmentation": {"enabled": False, "handcrafted_augmentation": True},
}


def lora_config(
    recipe: DemoRecipe, model: Path, cache: Path, out: Path, videos: Path | None = None, **recycling
) -> TrainConfig:
    """The ERFT configuration of phase 3 (SVI-Film, m = 5, reference padding) at the demo's size; `recycling`
    overrides the error recycling settings (e.g. `use_image_errors=False`). With `videos`, clips are cut and encoded
    at every step from them instead of read from `cache` (raw mode)."""
    return TrainConfig(
        model=model,
        data={"videos": videos} if videos is not None else {"latent_cache": cache},
        output_dir=out,
        mode="film",
        clip=TRAINING_CLIPS,
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


def train_lora(
    recipe: DemoRecipe, model: Path, cache: Path, out: Path, videos: Path | None = None, **recycling
) -> TrainResult:
    """Train (or resume) the SVI LoRA on `model` from `cache` (or `videos`) into `out`; returns the trainer's
    result."""
    return train(lora_config(recipe, model, cache, out, videos, **recycling))


def train_ablation(name: str, recipe: DemoRecipe, work: Path) -> TrainResult:
    """Train (or resume) the ablation LoRA `name` of `ABLATIONS` on the base in `work/base-model` into
    `work/lora-<name>`; the build (`build.build_demo_model`) must have run in `work` first."""
    recycling = ABLATIONS[name]
    base, cache = work / "base-model", work / "latents"
    if not (base / "model_index.json").is_file():
        raise FileNotFoundError(f"no base model in {base}: build the demo model with --work {work} first")
    videos = work / "videos" if recycling.get("handcrafted_augmentation") else None
    return train_lora(recipe, base, cache, work / f"lora-{name}", videos, **recycling)

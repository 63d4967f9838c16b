"""What an Error-Recycling Fine-Tuning run is: `TrainConfig`, read from a YAML file (`docs/train.yaml` explains it).

Defaults are the authors' released training scripts (`recipe: released`); `recipe: paper` takes the paper's
Table 9 values where they differ (learning rate 2e-5 against 1e-4, motion-frame probability 0.95 against 0.9,
warm-up 20 against 50 steps). `expert: high` or `low` trains one expert of Wan2.2-I2V-A14B on its share of the
timesteps (`experts.py`). Relative paths are relative to the folder the command runs in.
"""

import dataclasses
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..modes import MODES
from ..sampler import SVI_EXPERT_BOUNDARY
from .dataset import PIXEL_CHAINED_MODES, ClipSettings, MissingCaption
from .error_bank import grid_sigmas
from .experts import Expert, expert_share
from .loss import training_sigmas
from .recycling import CLEAN_PROBABILITIES, Recipe, RecyclingSettings

# A mode can be trained when its clips can be cut (pixel chaining) and error recycling has its authors' settings.
TRAINABLE_MODES = tuple(mode for mode in PIXEL_CHAINED_MODES if mode in CLEAN_PROBABILITIES)
Mode = Literal[TRAINABLE_MODES]
LEARNING_RATES = {"released": 1e-4, "paper": 2e-5}
MOTION_PROBABILITIES = {"released": 0.9, "paper": 0.95}
DEFAULT_EPOCHS = 10


class TrainConfigError(ValueError):
    """A training configuration that cannot be used; the message names the file and the key."""


class DataConfig(BaseModel):
    """Where the training clips come from.

    videos only: raw mode, clips are cut and encoded by the frozen encoders at every step (new random draws each
    epoch, as the authors train). latent_cache only: clips encoded earlier (`latent_cache.build_latent_cache`).
    Both: the cache is built (or completed) from the videos first, then training reads it.
    """

    model_config = ConfigDict(extra="forbid")

    videos: Path | None = Field(None, description="MixKit layout (<category>/<category>.csv) or metadata.csv folder")
    latent_cache: Path | None = Field(None, description="folder of encoded clips (built from `videos` if given)")
    samples_per_video: int = Field(1, ge=1, description="clips encoded per video into the cache")
    missing_caption: MissingCaption = Field("error", description="error, skip, or category (authors' fallback)")
    num_workers: int = Field(1, ge=0, description="DataLoader worker processes (the authors use 1)")

    @model_validator(mode="after")
    def _has_a_source(self) -> "DataConfig":
        if self.videos is None and self.latent_cache is None:
            raise ValueError("give videos (a dataset folder), latent_cache (an encoded cache folder), or both")
        return self


class ClipOverrides(BaseModel):
    """Changes to the mode's clip settings (`ClipSettings.for_mode`: the mode's motion frames and padding)."""

    model_config = ConfigDict(extra="forbid")

    num_frames: int | None = Field(None, description="4k+1; 81 as trained")
    height: int | None = Field(None, description="multiple of 16; 480 as trained")
    width: int | None = Field(None, description="multiple of 16; 832 as trained")
    motion_frames: int | None = None
    motion_probability: float | None = Field(None, ge=0.0, le=1.0)
    padding: Literal["zeros", "reference"] | None = None
    padding_anchor: Literal["inside", "outside"] | None = None


class TrainConfig(BaseModel):
    """One ERFT run: the model, the data, the recipe and its overrides, and where results go."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: Path = Field(
        description="local Wan2.1-I2V-14B-480P folder, or Wan2.2-I2V-A14B with expert (diffusers or original layout)"
    )
    expert: Expert = Field(
        "none", description="none: a one-DiT model (Wan2.1); high or low: that expert of Wan2.2-I2V-A14B alone"
    )
    expert_boundary: float = Field(
        SVI_EXPERT_BOUNDARY, gt=0, lt=1, description="the high expert owns timesteps ≥ 1000·this, the low one the rest"
    )
    data: DataConfig
    output_dir: Path = Field(description="checkpoints/, logs/, and the final LoRA files go here")
    mode: Mode = Field(
        "film",
        description="; ".join(
            f"{mode}: m={MODES[mode]['motion_frames']}, {MODES[mode]['padding']} padding" for mode in TRAINABLE_MODES
        ),
    )
    recipe: Recipe = Field("released", description="released: the authors' scripts; paper: Table 9")
    recycling: dict[str, Any] = Field(
        default_factory=dict, description="overrides of RecyclingSettings, e.g. enabled: false (plain fine-tuning)"
    )
    clip: ClipOverrides = Field(default_factory=ClipOverrides)
    learning_rate: float | None = Field(None, gt=0, description="AdamW, constant; 1e-4 released, 2e-5 paper")
    epochs: int | None = Field(None, ge=1, description=f"passes over the data (default {DEFAULT_EPOCHS})")
    steps: int | None = Field(None, ge=1, description="optimiser steps instead of epochs")
    batch_size: int = Field(1, ge=1, description="clips per step and process (1 as trained)")
    lora_rank: int = Field(128, ge=1)
    lora_alpha: float = Field(128, gt=0)
    seed: int = Field(0, ge=0)
    checkpoint_every: int = Field(500, ge=1, description="steps between checkpoints (and one at the end)")
    keep_checkpoints: int = Field(2, ge=1, description="the newest this many checkpoints are kept")
    checkpoint_banks: bool = Field(
        True,
        description="false: leave the error banks (up to ~210 GB per process) out; a resume then starts them empty",
    )
    resume: str = Field("auto", description="auto (the newest checkpoint, if any), none, or a checkpoint folder")
    mixed_precision: Literal["bf16", "no"] = Field("bf16", description="bf16: base weights bf16 + autocast")
    gradient_checkpointing: bool = True
    max_grad_norm: float = Field(1.0, gt=0)
    log_dir: Path | None = Field(None, description="TensorBoard logs (default output_dir/logs)")

    @field_validator("recycling")
    @classmethod
    def _known_recycling_fields(cls, overrides: dict[str, Any]) -> dict[str, Any]:
        known = {f.name for f in dataclasses.fields(RecyclingSettings)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return overrides

    @model_validator(mode="after")
    def _consistent(self) -> "TrainConfig":
        if self.steps is not None and self.epochs is not None:
            raise ValueError("give steps or epochs, not both")
        self.clip_settings()
        if self.recycling_settings().handcrafted_augmentation and self.data.latent_cache is not None:
            raise ValueError(
                "recycling.handcrafted_augmentation degrades the motion frames before encoding, so it needs raw mode: "
                "remove data.latent_cache"
            )
        if self.resume not in ("auto", "none") and not Path(self.resume).is_dir():
            raise ValueError(f"resume must be auto, none, or an existing checkpoint folder; {self.resume} is none")
        try:
            self.training_positions()
            self.test_grid_sigmas()
        except ValueError as error:
            raise ValueError(f"expert_boundary: {error}") from error
        return self

    # ---- what the settings mean ----------------------------------------------------------------------------------

    def clip_settings(self) -> ClipSettings:
        """How clips are cut and conditioned: the mode's, the recipe's motion probability, then `clip:`."""
        changes = {"motion_probability": MOTION_PROBABILITIES[self.recipe]}
        changes |= self.clip.model_dump(exclude_none=True)
        try:
            return ClipSettings.for_mode(self.mode, **changes)
        except ValueError as error:
            raise ValueError(f"clip: {error}") from error

    def recycling_settings(self) -> RecyclingSettings:
        """The recipe's recycling settings for the mode, then `recycling:`."""
        try:
            return RecyclingSettings.for_recipe(self.recipe, self.mode, **self.recycling)
        except (TypeError, ValueError) as error:
            raise ValueError(f"recycling: {error}") from error

    def training_positions(self) -> torch.Tensor:
        """The positions on the 1000-step training grid (`loss.training_sigmas`) the run draws σ from: int64 `[M]`,
        all of them, or the expert's share."""
        return expert_share(training_sigmas(), self.expert, self.expert_boundary)

    def test_grid_sigmas(self) -> torch.Tensor:
        """The test-time sigmas the error banks keep a grid for: float64 `[G]`, the 50 of `error_bank.grid_sigmas`,
        or the expert's share (21 high, 29 low at the default boundary)."""
        sigmas = grid_sigmas(50)
        return sigmas[expert_share(sigmas, self.expert, self.expert_boundary)]

    def dtype(self) -> torch.dtype:
        """The base weights' and embeddings' dtype: bfloat16 under bf16 mixed precision, else float32."""
        return torch.bfloat16 if self.mixed_precision == "bf16" else torch.float32

    def optimizer_learning_rate(self) -> float:
        return self.learning_rate if self.learning_rate is not None else LEARNING_RATES[self.recipe]

    def total_steps(self, steps_per_epoch: int) -> int:
        """Optimiser steps of the whole run, given the steps one epoch takes on each process."""
        return self.steps if self.steps is not None else (self.epochs or DEFAULT_EPOCHS) * steps_per_epoch

    def logs(self) -> Path:
        return self.log_dir if self.log_dir is not None else self.output_dir / "logs"

    def identity(self) -> dict:
        """What decides the numbers a run computes (JSON-ready): a checkpoint resumes exactly only under the same.

        The effective settings, so spelling a default out does not block a resume. Left out, free to change:
        folders (a run may resume after its data, model or bank files moved; the trainer checks the sample count),
        the length of the run, checkpointing, logging, workers, and gradient checkpointing (the same numbers).
        The expert and its boundary count only for a Wan2.2 expert, so that one-DiT checkpoints written before
        they existed still resume.
        """
        recycling = dataclasses.asdict(self.recycling_settings())
        recycling.pop("storage_dir")
        expert = {} if self.expert == "none" else {"expert": self.expert, "expert_boundary": self.expert_boundary}
        return expert | {
            "mode": self.mode,
            "clip": dataclasses.asdict(self.clip_settings()),
            "recycling": recycling,
            "data": self.data.model_dump(mode="json", include={"samples_per_video", "missing_caption"}),
            "learning_rate": self.optimizer_learning_rate(),
            "batch_size": self.batch_size,
            "lora": [self.lora_rank, self.lora_alpha],
            "seed": self.seed,
            "mixed_precision": self.mixed_precision,
            "max_grad_norm": self.max_grad_norm,
        }

    @classmethod
    def from_yaml(cls, path: str | Path) -> "TrainConfig":
        """Read and check a YAML file; TrainConfigError names the file and each wrong key."""
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as error:
            raise TrainConfigError(f"cannot read the training config {path}: {error}") from error
        except yaml.YAMLError as error:
            raise TrainConfigError(f"{path} is not valid YAML: {error}") from error
        if not isinstance(raw, dict):
            raise TrainConfigError(f"{path} must hold a mapping of settings (model:, data:, output_dir:, ...)")
        try:
            return cls.model_validate(raw)
        except ValidationError as error:
            problems = [
                f"{'.'.join(map(str, problem['loc'])) or 'top level'}: {problem['msg']}" for problem in error.errors()
            ]
            raise TrainConfigError(f"{path}: " + "; ".join(problems)) from None

"""Training Wan2.2-I2V-A14B one expert at a time, as the SVI authors did: which DiT a run trains, which σ it owns.

Wan2.2-A14B denoises with two DiTs: the high-noise `transformer` while the timestep t = 1000·σ is at or above
1000·boundary, the low-noise `transformer_2` below it (`sampler.ClipSampler`, boundary `SVI_EXPERT_BOUNDARY`). Each
expert gets its own LoRA, trained only where it runs at test time: a run for one expert draws its training σ from
that expert's share of the training grid, and its error banks keep only that expert's test-time grids (the other
expert's grids would never be filled or drawn from).

At the defaults (boundary 0.875, shift 5; σ here is the shifted σ, t = 1000·σ):

    training grid (1000 points, i = 0..999)     high owns i = 0..416 (σ 1 … 0.87530), low i = 417..999
                                                (σ 0.87485 … 0.00498): DiffSynth's `--max_timestep_boundary 0.417`
    test-time grids (50 steps, j = 0..49)       high owns j = 0..20 (σ 1 … 0.88235), low j = 21..49
                                                (σ 0.87349 … 0.09259): the steps the sampler gives each expert

No grid point lies on the boundary there, so the ownership does not hinge on rounding.
"""

from pathlib import Path
from typing import Literal

import torch

from ..original_checkpoints import ORIGINAL_EXPERTS

Expert = Literal["none", "high", "low"]
# The pipeline attribute (and diffusers subfolder) of each expert's DiT.
EXPERT_DITS = {"none": "transformer", "high": "transformer", "low": "transformer_2"}
# How the LoRA files of an expert's run are named (the released Wan2.2 LoRAs say "high_noise"/"low_noise" too).
EXPERT_FILE_TAGS = {"none": "", "high": "-high_noise", "low": "-low_noise"}


def expert_share(sigmas: torch.Tensor, expert: Expert, boundary: float) -> torch.Tensor:
    """The positions in `sigmas` (float `[N]`, shifted σ) that `expert` owns: int64 `[M]`, ascending.

    none: all of them (a one-DiT model). high: 1000·σ ≥ 1000·boundary, the sampler's test for the high-noise
    expert; low: the rest. Raises ValueError when the expert owns none of them (a boundary at a grid's end).
    """
    timesteps = 1000.0 * sigmas.to(torch.float64)
    switch = 1000.0 * boundary
    owned = {"none": torch.ones_like(timesteps, dtype=torch.bool), "high": timesteps >= switch}
    owned["low"] = ~owned["high"]
    positions = owned[expert].nonzero().flatten()
    if len(positions) == 0:
        raise ValueError(
            f"at boundary {boundary} the {expert}-noise expert owns none of the {len(sigmas)} grid sigmas "
            f"({float(sigmas.min()):.5f} … {float(sigmas.max()):.5f}): choose a boundary inside that range"
        )
    return positions


def holds_two_experts(folder: Path) -> bool:
    """Whether a model folder holds Wan2.2-A14B's two DiTs: diffusers' `transformer_2/`, or the original release's
    `high_noise_model/` and `low_noise_model/` (the loader lists what either lacks)."""
    return any((folder / name).is_dir() for name in ("transformer_2", *ORIGINAL_EXPERTS))

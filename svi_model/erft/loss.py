"""The flow-matching objective SVI fine-tunes with: training timesteps, their loss weight, the target velocity.

The authors train on the 1000-step shift-5 grid (the test-time schedule's formula at N=1000, without its final 0):
σ_i = 5·s_i / (1 + 4·s_i) for s_i = linspace(1, 0, 1001)[:-1], drawn uniformly by index. The loss of a step is the
MSE between the predicted and the target velocity times a weight of its timestep t = 1000·σ: a Gaussian bump
exp(−2·((t − 500)/1000)²), shifted so its minimum over the grid is 0 and scaled so its mean over the grid is 1.
The weight lowers the shift-5 grid's many near-pure-noise timesteps and the few near-clean ones.

The target velocity is `noise − clean latents` (σ=1 is noise): it points at the clean latents whatever error the
recycler injected into the DiT's input, which is what teaches the LoRA to correct errors.
"""

import torch

from ..schedule import SVI_SHIFT, shifted_sigmas

TRAIN_TIMESTEPS = 1000


def training_sigmas(count: int = TRAIN_TIMESTEPS, shift: float = SVI_SHIFT) -> torch.Tensor:
    """The training grid: float64 `[count]`, from σ=1 down to the last step before 0."""
    return shifted_sigmas(count, shift)[:-1]


def timestep_weights(sigmas: torch.Tensor) -> torch.Tensor:
    """The loss weight of each training timestep: float64 `[len(sigmas)]`, mean 1 over the grid.

    Only the authors' 1000-step grid is supported: their formula for other grid lengths is an empirical patch.
    """
    if len(sigmas) != TRAIN_TIMESTEPS:
        raise ValueError(f"the timestep weight is defined on the {TRAIN_TIMESTEPS}-step grid, got {len(sigmas)} steps")
    t = TRAIN_TIMESTEPS * sigmas.to(torch.float64)
    bump = torch.exp(-2.0 * ((t - TRAIN_TIMESTEPS / 2) / TRAIN_TIMESTEPS) ** 2)
    bump = bump - bump.min()
    return bump * (len(bump) / bump.sum())


def velocity_target(latents: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The velocity the DiT must predict, `noise − latents`, float32 (any shape; `latents` are the clean ones)."""
    return noise.float() - latents.float()


def weighted_mse(prediction: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of each sample's MSE times its timestep weight: a float32 scalar.

    prediction, target: `[B, ...]`; weight: `[B]`. With batch 1 (as trained) this is the authors' loss exactly.
    """
    per_sample = (prediction.float() - target.float()).square().flatten(1).mean(dim=1)
    return (per_sample * weight.to(per_sample)).mean()

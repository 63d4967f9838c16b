"""The flow-matching noise schedule SVI was trained and tested with.

σ is the noise level (σ=1 pure noise, σ=0 data). At test time the authors take N Euler steps on
σ_k = linspace(1, 0, N+1)[:-1], warped by σ' = s·σ / (1 + (s−1)·σ) with shift s=5, then step to σ=0; the DiT sees
timestep 1000·σ'. diffusers' default FlowMatchEuler/UniPC schedules differ from this by up to 0.07 in σ.
"""

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

SVI_SHIFT = 5.0


def shifted_sigmas(num_steps: int, shift: float = SVI_SHIFT) -> torch.Tensor:
    """The N sampling sigmas followed by the final 0: a float64 tensor of shape [N+1], from 1 down to 0."""
    sigma = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)[:-1]
    warped = shift * sigma / (1.0 + (shift - 1.0) * sigma)
    return torch.cat([warped, warped.new_zeros(1)])


class SVIFlowMatchScheduler(FlowMatchEulerDiscreteScheduler):
    """diffusers' Euler flow-matching scheduler with SVI's schedule as its default.

    `set_timesteps(N)` feeds the unshifted linspace to the parent, which applies the shift itself, so the
    sigmas equal `shifted_sigmas(N)` and the final step goes to σ=0, exactly as in the authors' sampler.
    """

    def __init__(self, num_train_timesteps: int = 1000, shift: float = SVI_SHIFT, **kwargs):
        super().__init__(num_train_timesteps=num_train_timesteps, shift=shift, **kwargs)

    def set_timesteps(self, num_inference_steps=None, device=None, sigmas=None, mu=None, timesteps=None):
        if sigmas is None and timesteps is None and num_inference_steps is not None:
            sigmas = np.linspace(1.0, 0.0, num_inference_steps + 1)[:-1].tolist()
        return super().set_timesteps(
            num_inference_steps=num_inference_steps, device=device, sigmas=sigmas, mu=mu, timesteps=timesteps
        )

"""One optimiser step of Error-Recycling Fine-Tuning, on a model, optimizer and recycler prepared by accelerate.

As the authors' training script takes it (`svi-reference.md` §4):

    σ, ε                        σ uniform on the 1000-step shift-5 grid (a Wan2.2 expert: on its share of it,
                                `experts.py`), ε ~ N(0, I), drawn on the CPU from a generator seeded by
                                (seed, process, step): a resumed run draws what the uninterrupted one drew, on
                                any device
    x̃_t, ε̃, ỹ                    `ErrorRecycler.prepare`: banked errors injected, x̃_t = (1−σ)·x̃ + σ·ε̃
    v̂ = DiT([x̃_t, mask, ỹ])     `sampler.predict_velocity` at timestep 1000·σ, the model input in the
                                transformer's dtype: the sampler's own call
    loss = w(σ)·MSE(v̂, ε̃ − x)    the target leads to the clean latents; backward, clip the norm, AdamW
    `ErrorRecycler.recycle`      this step's errors curated and banked
"""

from dataclasses import dataclass

import torch
from accelerate import Accelerator

from ..sampler import mask_and_latents, predict_velocity
from ..seeds import derived_seed
from .loss import timestep_weights, training_sigmas, velocity_target, weighted_mse
from .recycling import ErrorRecycler, PreparedStep


@dataclass
class StepInputs:
    """A step's batch on the training device: latents, condition_latents float32 `[B, 16, T, h, w]` (the clip and
    its condition video, VAE-encoded); text `[B, 512, D]` and clip_tokens `[B, 257, 1280]` in the model's dtype
    (None for a DiT without image tokens, Wan2.2-A14B)."""

    latents: torch.Tensor
    condition_latents: torch.Tensor
    text: torch.Tensor
    clip_tokens: torch.Tensor | None


class ErftStep:
    """Runs ERFT steps: `step(inputs, n)` returns step n's record and what the recycler injected.

    Args:
        model, optimizer: the PEFT-wrapped transformer and AdamW over `parameters`, both `accelerator.prepare`d.
        dtype: the base weights' dtype; the model input is cast to it, as the sampler does.
        seed: the run's seed; step n draws from (seed, process, n).
        positions: int64 `[M]`, the positions on the training grid σ is drawn from (`TrainConfig.training_positions`:
            a Wan2.2 expert's share); None: all of them.
    """

    def __init__(
        self,
        accelerator: Accelerator,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        parameters: list[torch.nn.Parameter],
        recycler: ErrorRecycler,
        dtype: torch.dtype,
        max_grad_norm: float,
        seed: int,
        positions: torch.Tensor | None = None,
    ):
        self.accelerator, self.model, self.optimizer, self.parameters = accelerator, model, optimizer, parameters
        self.recycler, self.dtype, self.max_grad_norm, self.seed = recycler, dtype, max_grad_norm, seed
        self.sigmas = training_sigmas()
        # The weight stays the whole grid's (mean 1 over all 1000 steps), so an expert's steps weigh what they
        # weigh in a one-DiT run.
        self.weights = timestep_weights(self.sigmas)
        self.positions = torch.arange(len(self.sigmas)) if positions is None else positions.to("cpu", torch.int64)

    def __call__(self, inputs: StepInputs, step: int) -> tuple[dict, PreparedStep]:
        """One optimiser step (0-based `step`). The record: step (1-based), loss (averaged over processes), σ of
        the first sample, the gradient norm before clipping (None under DeepSpeed, which clips itself), clean."""
        accelerator, device = self.accelerator, self.accelerator.device
        generator = torch.Generator().manual_seed(derived_seed(self.seed, "step", accelerator.process_index, step))
        noise = torch.randn(inputs.latents.shape, generator=generator).to(device)
        # Drawn as an entry of `positions`: over the whole grid that entry is the draw itself, the draws of runs
        # (and checkpoints) from before experts existed.
        index = self.positions[torch.randint(len(self.positions), (inputs.latents.shape[0],), generator=generator)]
        sigma = self.sigmas[index].to(device, torch.float32)
        prepared = self.recycler.prepare(inputs.latents, noise, inputs.condition_latents, sigma)
        velocity, target, loss, grad_norm = self.update(inputs, prepared, sigma, index)
        self.recycler.recycle(velocity.detach(), target, sigma, prepared, step)
        record = {
            "step": step + 1,
            "loss": accelerator.reduce(loss.detach(), reduction="mean").item(),
            "sigma": float(sigma[0]),
            "grad_norm": None if grad_norm is None else float(grad_norm),
            "clean": prepared.clean,
        }
        return record, prepared

    def update(
        self, inputs: StepInputs, prepared: PreparedStep, sigma: torch.Tensor, index: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The step's work on the training device: DiT forward, loss, backward, clipping, AdamW update.

        sigma: float32 `[B]` on the device, each sample's σ; index: int64 `[B]`, its position on the training grid
        (for the loss weight). Returns the
        predicted velocity and the target, float32 `[B, 16, T, h, w]`, the loss (a scalar) and the gradient norm
        before clipping (None under DeepSpeed). Kept apart from the host-side drawing and banking so that
        `bench/erft_memory_estimate.py` can run exactly this on fake tensors.
        """
        model_input = torch.cat([prepared.noisy_latents, mask_and_latents(prepared.condition_latents)], dim=1)
        velocity = predict_velocity(
            self.model, model_input.to(self.dtype), 1000.0 * sigma, inputs.text, inputs.clip_tokens
        ).float()
        target = velocity_target(inputs.latents, prepared.noise)
        loss = weighted_mse(velocity, target, self.weights[index].to(self.accelerator.device))
        self.accelerator.backward(loss)
        grad_norm = self.accelerator.clip_grad_norm_(self.parameters, self.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return velocity, target, loss, grad_norm

"""Error recycling: inject the DiT's own past errors into a training step, then bank the errors it makes now.

The core of Error-Recycling Fine-Tuning (paper §4), as the authors' released training code does it. Per step:

1. `ErrorRecycler.prepare` draws, independently, E_noi (p 0.01), E_img (p 0.9) and E_vid (p 0.9), then a clean draw
   (p 0.5 Film, 0.2 Shot) that cancels all three. E_noi is added to the noise and E_vid to the clean latent, each
   drawn uniformly from its bank's grid nearest to the step's σ; E_img is drawn from the video bank over all grids,
   and a random window of 3 of its latent frames is added to the first 3 latent frames of the condition latents
   y. The DiT input is (1−σ)·x̃_vid + σ·x̃_noi.
2. The training loop predicts v̂ and regresses it on v = x̃_noi − x_vid (`PreparedStep.noise` minus the *clean*
   latent): whatever was injected, the target leads back to the clean video.
3. `ErrorRecycler.recycle` curates two errors by integrating v̂ and v one step to either end of the trajectory:
   E_noi = (1−σ)·(v̂ − v) (to σ=1) and E_vid = −σ·(v̂ − v) (to σ=0), and files them in the noise and video banks at
   the step's grid; after a clean step only with p 0.1 (the authors' fix: errors of clean inputs polluted the
   banks). During warm-up every rank banks the errors of all ranks (all-gathered), so that banks fill faster.

Naming: the "noise bank" is the paper's B_noi, the "video bank" its B_vid.
"""

import logging
import os
from dataclasses import dataclass, field, replace
from typing import Literal

import torch
import torch.distributed as dist

from ..seeds import derived_seed
from .error_bank import ErrorBank, grid_of

log = logging.getLogger(__name__)

Recipe = Literal["released", "paper"]
# Warm-up steps of each recipe: the released scripts' 50, the paper's Table 9 20 (the recipes' only difference here).
WARMUP_STEPS: dict[str, int] = {"released": 50, "paper": 20}
# Clean-step probability of each mode the authors trained (their Film and Shot scripts): the modes recycling knows.
CLEAN_PROBABILITIES: dict[str, float] = {"film": 0.5, "shot": 0.2}
STORAGE_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
ERROR_KINDS = ("noise", "image", "video")


@dataclass(frozen=True)
class RecyclingSettings:
    """How errors are injected and banked. Defaults: SVI-Film as released; `for_recipe` gives the others.

    enabled: False is plain fine-tuning (no injection, no banks).
    *_probability: of injecting E_noi, E_img, E_vid; `clean_probability` of a clean step that injects nothing.
    clean_bank_probability: of banking the errors of a clean step (1 banks every step, as the paper describes).
    use_*_errors: ablation switches (paper Table 4); a bank nothing is drawn from is not kept.
    errors_per_grid: Z, the most errors a grid holds (paper Table 8: 1 to 2000).
    warmup_steps: steps during which every rank banks every rank's errors (released 50, paper Table 9 20).
    image_window: latent frames of E_img added to the first latent frames of y (3; 1 for SVI-Dance).
    storage_dtype: of banked errors ("bfloat16" as the authors, "float16" or "float32").
    memory_budget_gb: the most both banks of one process may take; lowers Z to fit (see `ErrorBank`).
    storage_dir: keep the banks in memory-mapped files under this folder (one subfolder per rank).
    handcrafted_augmentation: the paper's Table 6 ablation: colour jitter, blur and sharpness on the motion frames
        (`augmentation.augment_condition_frames`, applied by the training loop before encoding; it needs raw
        mode, since a latent cache holds encoded condition frames). Combine with `enabled=False`.
    """

    enabled: bool = True
    noise_probability: float = 0.01
    image_probability: float = 0.9
    video_probability: float = 0.9
    clean_probability: float = 0.5
    clean_bank_probability: float = 0.1
    use_noise_errors: bool = True
    use_image_errors: bool = True
    use_video_errors: bool = True
    errors_per_grid: int = 500
    warmup_steps: int = 50
    image_window: int = 3
    storage_dtype: str = "bfloat16"
    memory_budget_gb: float | None = None
    storage_dir: str | None = None
    handcrafted_augmentation: bool = False

    def __post_init__(self):
        probabilities = ("noise", "image", "video", "clean", "clean_bank")
        for name in probabilities:
            value = getattr(self, f"{name}_probability")
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}_probability must be in [0, 1], got {value}")
        if self.errors_per_grid < 1 or self.warmup_steps < 0 or self.image_window < 1:
            raise ValueError(
                f"need errors_per_grid ≥ 1, warmup_steps ≥ 0 and image_window ≥ 1, got {self.errors_per_grid}, "
                f"{self.warmup_steps}, {self.image_window}"
            )
        if self.storage_dtype not in STORAGE_DTYPES:
            raise ValueError(f"storage_dtype must be one of {sorted(STORAGE_DTYPES)}, got {self.storage_dtype!r}")
        if self.memory_budget_gb is not None and self.memory_budget_gb <= 0:
            raise ValueError(f"memory_budget_gb must be positive or None, got {self.memory_budget_gb}")

    @classmethod
    def for_recipe(cls, recipe: Recipe = "released", mode: str = "film", **changes) -> "RecyclingSettings":
        """The settings of the authors' training scripts ("released") or of the paper's Table 9 ("paper") for a mode
        of `CLEAN_PROBABILITIES`.

        They differ only in warm-up (50 against 20 steps). Table 9 lists one clean probability, 0.5, Film's; Shot
        keeps its script's 0.2 in both. `changes` override fields, e.g. `use_image_errors=False` for an ablation.
        """
        if recipe not in WARMUP_STEPS or mode not in CLEAN_PROBABILITIES:
            raise ValueError(
                f"unknown recipe {recipe!r} or mode {mode!r}: use {'/'.join(WARMUP_STEPS)} and "
                f"{'/'.join(CLEAN_PROBABILITIES)}"
            )
        settings = cls(clean_probability=CLEAN_PROBABILITIES[mode], warmup_steps=WARMUP_STEPS[recipe])
        return replace(settings, **changes)

    @property
    def dtype(self) -> torch.dtype:
        return STORAGE_DTYPES[self.storage_dtype]


@dataclass
class PreparedStep:
    """One training step's inputs after injection. Tensors keep the dtype and device of the inputs.

    noisy_latents: `[B, 16, T, h, w]`, (1−σ)·x̃_vid + σ·x̃_noi, the DiT's noisy input.
    noise: `[B, 16, T, h, w]`, x̃_noi = noise + E_noi if injected; the target velocity is `noise − latents` (clean).
    condition_latents: `[B, 16, T, h, w]`, y with E_img added to its first `image_window` latent frames.
    clean: the clean draw fired: nothing was injected, and the step's errors are banked only with p 0.1.
    grid: int64 `[B]`, the test-time grid of each sample's σ.
    injected: for "noise", "image", "video": whether that error was added (to at least one sample).
    """

    noisy_latents: torch.Tensor
    noise: torch.Tensor
    condition_latents: torch.Tensor
    clean: bool
    grid: torch.Tensor
    injected: dict[str, bool] = field(default_factory=lambda: dict.fromkeys(ERROR_KINDS, False))


class ErrorRecycler:
    """Injects banked errors into training steps and banks the new ones: `prepare`, forward pass, `recycle`.

    Args:
        settings: what to inject and bank.
        latent_shape: one sample's latent shape `(16, T, h, w)`; every error has it.
        test_sigmas: the test-time sampling sigmas, one grid each: `error_bank.grid_sigmas(50)`, or
            `shifted_sigmas(50)` whose final 0 (where sampling ends, no step) is dropped.
        seed: of the recycler's own generator, offset per rank; every draw comes from it, so a resumed run
            (`state_dict`) draws exactly what the uninterrupted one would.
    Construct it after `torch.distributed` is initialised, when it is: the rank picks the seed and the files.
    """

    def __init__(
        self, settings: RecyclingSettings, latent_shape: tuple[int, ...], test_sigmas: torch.Tensor, seed: int
    ):
        if len(latent_shape) != 4:
            raise ValueError(f"latent_shape is one sample's (16, T, h, w), got {tuple(latent_shape)}")
        if settings.image_window > latent_shape[1]:
            raise ValueError(f"image_window {settings.image_window} exceeds the {latent_shape[1]} latent frames")
        sigmas = test_sigmas.detach().to("cpu", torch.float64).flatten()
        self.test_sigmas = sigmas[:-1] if len(sigmas) > 1 and sigmas[-1] == 0 else sigmas
        self.settings, self.latent_shape = settings, tuple(latent_shape)
        self.rank = dist.get_rank() if _distributed() else 0
        self.generator = torch.Generator().manual_seed(derived_seed(seed, "error-recycling", self.rank))
        self.banks: dict[str, ErrorBank] = {}
        wanted = []
        if settings.enabled and settings.use_noise_errors:
            wanted.append("noise")
        if settings.enabled and (settings.use_video_errors or settings.use_image_errors):
            wanted.append("video")
        budget = None if settings.memory_budget_gb is None else settings.memory_budget_gb * 1e9 / max(len(wanted), 1)
        folder = None if settings.storage_dir is None else os.path.join(settings.storage_dir, f"rank{self.rank}")
        for name in wanted:
            self.banks[name] = ErrorBank(
                name,
                len(self.test_sigmas),
                settings.errors_per_grid,
                self.latent_shape,
                settings.dtype,
                budget_bytes=None if budget is None else int(budget),
                storage_dir=folder,
            )
        self._warn_if_banks_outgrow_memory()

    # ---- injection -------------------------------------------------------------------------------------------------

    def prepare(
        self, latents: torch.Tensor, noise: torch.Tensor, condition_latents: torch.Tensor, sigma: torch.Tensor
    ) -> PreparedStep:
        """Draw this step's injections and build the DiT's inputs.

        latents, noise, condition_latents: `[B, 16, T, h, w]` (clean video latent, Gaussian noise, y without its
        mask channels). sigma: `[B]` in (0, 1]. Empty banks inject nothing.
        """
        self._check_batch(sigma, latents=latents, noise=noise, condition_latents=condition_latents)
        grid = torch.tensor([grid_of(s, self.test_sigmas) for s in sigma.tolist()], dtype=torch.int64)
        injected = dict.fromkeys(ERROR_KINDS, False)
        clean = True
        s = self.settings
        if s.enabled:
            noise_draw, image_draw, video_draw, clean_draw = (self._uniform() for _ in range(4))
            clean = clean_draw < s.clean_probability
            if not clean and s.use_noise_errors and noise_draw < s.noise_probability:
                noise, injected["noise"] = self._plus_grid_errors(noise, self.banks["noise"], grid)
            if not clean and s.use_image_errors and image_draw < s.image_probability:
                condition_latents, injected["image"] = self._plus_image_errors(condition_latents)
            if not clean and s.use_video_errors and video_draw < s.video_probability:
                latents, injected["video"] = self._plus_grid_errors(latents, self.banks["video"], grid)
        factor = sigma.to(latents.device, torch.float32).view(-1, 1, 1, 1, 1)
        noisy = ((1.0 - factor) * latents.float() + factor * noise.float()).to(latents.dtype)
        return PreparedStep(noisy, noise, condition_latents, clean, grid, injected)

    def _plus_grid_errors(self, x: torch.Tensor, bank: ErrorBank, grid: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """`x` `[B, ...]` plus, per sample, an error drawn from `bank` at its grid; and whether any was added."""
        errors = [bank.draw(g, self.generator) for g in grid.tolist()]
        if all(error is None for error in errors):
            return x, False
        x = x.clone()
        for row, error in enumerate(errors):
            if error is not None:
                x[row] += error.to(x.device, x.dtype)
        return x, True

    def _plus_image_errors(self, condition: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """`condition` `[B, 16, T, h, w]` with, per sample, a random `image_window`-frame window of a video-bank
        error (any grid) added to its first frames; and whether any was added."""
        window = self.settings.image_window
        added = False
        for row in range(condition.shape[0]):
            error = self.banks["video"].draw(None, self.generator)
            if error is None:
                break
            start = int(torch.randint(error.shape[1] - window + 1, (1,), generator=self.generator))
            if not added:
                condition, added = condition.clone(), True
            condition[row, :, :window] += error[:, start : start + window].to(condition.device, condition.dtype)
        return condition, added

    def _uniform(self) -> float:
        """One draw from U[0, 1) of the recycler's generator."""
        return float(torch.rand(1, generator=self.generator, dtype=torch.float64))

    # ---- curation and banking --------------------------------------------------------------------------------------

    @torch.no_grad()
    def recycle(
        self,
        velocity_pred: torch.Tensor,
        velocity_target: torch.Tensor,
        sigma: torch.Tensor,
        prepared: PreparedStep,
        step: int,
    ) -> None:
        """Curate this step's errors and bank them at `prepared.grid`.

        velocity_pred, velocity_target: `[B, 16, T, h, w]`, v̂ and v of the step `prepare` made. sigma: `[B]`.
        step: the 0-based optimiser step. While `step < warmup_steps` and torch.distributed runs, errors and grids
        are all-gathered (a collective: every rank must call `recycle` at every warm-up step) and every rank banks
        all of them. As in the authors' code, the clean draw that gates banking is the local step's, also for the
        gathered errors.
        """
        if not self.banks:
            return
        self._check_batch(sigma, velocity_pred=velocity_pred, velocity_target=velocity_target)
        difference = velocity_pred.detach().float() - velocity_target.detach().float()
        factor = sigma.detach().to(difference.device, torch.float32).view(-1, 1, 1, 1, 1)
        errors = {}
        if "noise" in self.banks:  # one Euler step from σ to 1: how far from the noise v̂ leads
            errors["noise"] = ((1.0 - factor) * difference).to(self.settings.dtype)
        if "video" in self.banks:  # one Euler step from σ to 0: how far from the clean video v̂ leads
            errors["video"] = (-factor * difference).to(self.settings.dtype)
        grid = prepared.grid.to(difference.device)
        if step < self.settings.warmup_steps and _distributed() and dist.get_world_size() > 1:
            errors = {name: _all_gathered(value) for name, value in errors.items()}
            grid = _all_gathered(grid)
        banked = not prepared.clean or self._uniform() < self.settings.clean_bank_probability
        if banked:
            for name, value in errors.items():
                for error, g in zip(value.cpu(), grid.tolist(), strict=True):
                    self.banks[name].store(error, g)
        if step == self.settings.warmup_steps - 1:
            log.info("rank %d, error banks after %d warm-up steps: %s", self.rank, step + 1, self.stats())

    # ---- checkpoints and monitoring --------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Flat, tensors only: `generator` and `<bank>.counts`, `<bank>.errors.<grid>`. Full grids are the banks'
        storage, not copies: save it before the next `recycle`. Each rank has its own state."""
        state = {"generator": self.generator.get_state()}
        for name, bank in self.banks.items():
            state.update({f"{name}.{key}": value for key, value in bank.state_dict().items()})
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore `state_dict()` of a recycler with the same settings; the next draws are the ones it would make."""
        known = {"generator"} | {key for key in state if key.split(".", 1)[0] in self.banks}
        if set(state) != known or "generator" not in state:
            raise ValueError(
                f"recycler state keys {sorted(set(state) - known)} match no bank of {sorted(self.banks)}, or it "
                "lacks 'generator': resume with the settings it was saved with"
            )
        for name, bank in self.banks.items():
            prefix = f"{name}."
            bank.load_state_dict({key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)})
        self.generator.set_state(state["generator"])

    def stats(self) -> dict[str, float]:
        """`<bank>_fill` (stored fraction of the full bank, per bank) and `bank_gb` (both banks), for logs."""
        stats = {f"{name}_fill": bank.fill() for name, bank in self.banks.items()}
        stats["bank_gb"] = sum(bank.nbytes for bank in self.banks.values()) / 1e9
        return stats

    # ---- checks ----------------------------------------------------------------------------------------------------

    def _check_batch(self, sigma: torch.Tensor, **tensors: torch.Tensor) -> None:
        batch = sigma.shape[0] if sigma.dim() == 1 else None
        for name, tensor in tensors.items():
            if batch is None or tuple(tensor.shape) != (batch, *self.latent_shape):
                raise ValueError(
                    f"{name} must be [B, {', '.join(map(str, self.latent_shape))}] with sigma [B], got "
                    f"{list(tensor.shape)} and sigma {list(sigma.shape)}"
                )

    def _warn_if_banks_outgrow_memory(self) -> None:
        full = sum(bank.max_nbytes for bank in self.banks.values())
        memory = _physical_memory_bytes()
        if self.settings.storage_dir is None and memory is not None and full > memory:
            log.warning(
                "full error banks would take %.0f GB of host memory per process, this machine has %.0f GB: set "
                "memory_budget_gb or storage_dir",
                full / 1e9,
                memory / 1e9,
            )


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _all_gathered(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` `[B, ...]` of every rank, concatenated in rank order: `[world·B, ...]`."""
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def _physical_memory_bytes() -> int | None:
    """The machine's RAM, or None where the OS does not say (no `sysconf`)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None

"""Error-Recycling Fine-Tuning: a whole run, on one GPU or many (accelerate: DDP, or DeepSpeed ZeRO-2).

`train(config)` loads the model, adds the LoRA, reads (or builds) the training clips, and runs `step.ErftStep`
over every process's share of each epoch; checkpoints every `checkpoint_every` steps (`checkpoints.py`), resumes
exactly from the newest one, and writes the final LoRA in SVI's released layout and in diffusers' layout. With
`expert: high` or `low` it trains that expert of Wan2.2-I2V-A14B alone (`experts.py`), and the files say which.

Launch: `svi train --config train.yaml` on one GPU, or `accelerate launch --num_processes 8 ...` (add
`--config_file docs/accelerate-deepspeed.yaml` for DeepSpeed ZeRO-2). Gradients are averaged over processes;
each process keeps its own error banks after the warm-up. Exact resume means bit-identical on the CPU; on GPUs
it is as exact as the kernels are deterministic (attention backward on GPUs usually is not).
"""

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedType, is_tensorboard_available
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..atomic_files import write_text_atomic
from ..conditioning import latent_frame_count
from ..loading import load_wan_transformer
from ..seeds import derived_seed
from .checkpoints import ADAPTER_FILE, CheckpointFolder, TrainerState, recycler_file
from .dataset import ClipDataset, read_video_index
from .experts import EXPERT_DITS, EXPERT_FILE_TAGS, holds_two_experts
from .latent_cache import LatentCacheDataset
from .lora_training import (
    adapter_state_dict,
    add_training_lora,
    load_adapter_state_dict,
    save_diffusers_lora,
    save_released_lora,
)
from .recycling import ErrorRecycler
from .step import ErftStep
from .train_config import TrainConfig, TrainConfigError
from .training_data import (
    TrainingClips,
    build_training_cache,
    cpu_pipeline,
    encoders_on,
    process_order,
    take_trained_dit,
)

log = logging.getLogger(__name__)

DIFFUSERS_FOLDER = "diffusers"
LOSS_TABLE = "losses.csv"


@dataclass
class StepReport:
    """What a progress callback hears after every step (on the main process). step counts finished steps."""

    step: int
    total_steps: int
    loss: float
    sigma: float
    grad_norm: float | None
    clean: bool
    injected: dict[str, bool]
    banks: dict[str, float]
    seconds: float


ProgressCallback = Callable[[StepReport], None]


@dataclass
class TrainResult:
    """A finished run: the LoRA in SVI's released layout (`lora_file`, what the engine loads) and in diffusers'
    layout (`diffusers_lora`, a folder), the steps done, every step's loss from step 1 (across resumes), the
    per-step history, the error banks' final fill, and the checkpoint this call resumed from. A Wan2.2 expert's
    are named for it: `svi-<mode>-high_noise.safetensors` and `diffusers-high_noise/` (or `low_noise`).
    """

    lora_file: Path
    diffusers_lora: Path
    steps: int
    losses: list[float]
    history: list[dict]
    banks: dict[str, float]
    resumed_from: Path | None


# ---- the run --------------------------------------------------------------------------------------------------------


def train(config: TrainConfig, progress: ProgressCallback | None = None) -> TrainResult:
    """Run (or resume, or just finish) the ERFT run `config` describes; returns where its LoRA files are.

    Bad input is reported before the model loads: TrainConfigError (resume conflicts), DatasetError (data).
    """
    return _Run(config).train(progress)


class _Run:
    """The state of one training process: model, optimizer, data, recycler, checkpoints."""

    def __init__(self, config: TrainConfig):
        self.config = config
        if config.expert != "none" and not holds_two_experts(config.model):
            raise TrainConfigError(
                f"expert: {config.expert} trains one expert of Wan2.2-I2V-A14B, but {config.model} holds no second "
                "expert (no transformer_2/, high_noise_model/ or low_noise_model/): use expert: none for a one-DiT "
                "model (Wan2.1), or give a Wan2.2-I2V-A14B folder"
            )
        self.checkpoints = CheckpointFolder(config.output_dir / "checkpoints", config.keep_checkpoints)
        self.resume_from = self._checkpoint_to_resume()
        # Read once, here: bad data fails before the model loads.
        self.videos = (
            None if config.data.videos is None else read_video_index(config.data.videos, config.data.missing_caption)
        )
        # accelerate keeps one mixed-precision setting per process; a long-lived process (a served flow) may train
        # runs with different ones. The distributed state (PartialState) is kept.
        AcceleratorState._reset_state()
        self.accelerator = Accelerator(
            # Without CUDA, processes started by torchrun/accelerate launch train together on the CPU (gloo).
            cpu=not torch.cuda.is_available(),
            mixed_precision=config.mixed_precision,
            log_with="tensorboard" if is_tensorboard_available() else None,
            project_dir=str(config.logs()),
        )
        self.deepspeed = self.accelerator.distributed_type == DistributedType.DEEPSPEED
        self.dtype = config.dtype()

    def _checkpoint_to_resume(self) -> Path | None:
        resume, latest = self.config.resume, self.checkpoints.latest()
        if resume == "none":
            if latest is not None:
                raise TrainConfigError(
                    f"{self.config.output_dir} holds checkpoints of an earlier run ({latest.name}): set resume: auto "
                    "to continue it, or choose another output_dir"
                )
            return None
        folder = latest if resume == "auto" else Path(resume)
        if folder is None:
            return None
        saved = TrainerState.read(folder)
        identity = self.config.identity()
        changed = sorted(key for key in identity | saved.identity if identity.get(key) != saved.identity.get(key))
        if changed:
            raise TrainConfigError(
                f"checkpoint {folder} was written with other settings ({', '.join(changed)}); an exact resume needs "
                "the same ones: restore them, or choose another output_dir"
            )
        if saved.step > self.config.steps:
            # Finishing "from" it would write a LoRA trained longer than the configuration says.
            raise TrainConfigError(
                f"checkpoint {folder} is at step {saved.step}, past this run's {self.config.steps} steps: set steps "
                f"to at least {saved.step}, or choose another output_dir"
            )
        return folder

    # ---- set-up ------------------------------------------------------------------------------------------------------

    def _load(self) -> None:
        """Model, data, LoRA, optimizer and recycler, in the order the accelerator needs them."""
        config, accelerator = self.config, self.accelerator
        # From a latent cache alone only the DiT is needed; with videos the encoders come too.
        pipe = cpu_pipeline(config) if config.data.videos is not None else None
        sampler = encoders_on(pipe, accelerator.device) if pipe is not None else None
        if config.data.latent_cache is None:
            dataset = ClipDataset(self.videos, config.clip_settings(), seed=config.seed)
            self.clips = TrainingClips(dataset, sampler, config.recycling_settings().handcrafted_augmentation)
        else:
            if sampler is not None:
                build_training_cache(config, self.videos, sampler)
            dataset = LatentCacheDataset(config.data.latent_cache)
            if dataset.settings != config.clip_settings():
                raise TrainConfigError(
                    f"the latent cache {config.data.latent_cache} holds clips made with {dataset.settings}, the config "
                    f"asks for {config.clip_settings()}: change mode/clip to match, or use another cache folder"
                )
            self.clips = TrainingClips(dataset)
        if pipe is None:
            transformer = load_wan_transformer(config.model, self.dtype, EXPERT_DITS[config.expert])
            latent_shape = tuple(dataset[0].latents.shape)
        else:
            settings = config.clip_settings()
            spatial = pipe.vae_scale_factor_spatial
            latent_shape = (pipe.vae.config.z_dim, latent_frame_count(settings.num_frames))
            latent_shape += (settings.height // spatial, settings.width // spatial)
            transformer = take_trained_dit(pipe, config.expert)
        del pipe, sampler  # in cached mode this frees the encoders; in raw mode self.clips keeps them
        if isinstance(dataset, LatentCacheDataset):
            self._check_image_tokens(dataset, transformer)
        parameters = add_training_lora(
            transformer,
            config.lora_rank,
            config.lora_alpha,
            gradient_checkpointing=config.gradient_checkpointing,
            seed=derived_seed(config.seed, "lora"),
        )
        optimizer = torch.optim.AdamW(parameters, lr=config.optimizer_learning_rate())
        self.model, optimizer = accelerator.prepare(transformer, optimizer)
        accelerator.register_save_state_pre_hook(self._save_adapter)
        accelerator.register_load_state_pre_hook(self._load_adapter)
        self.recycler = ErrorRecycler(config.recycling_settings(), latent_shape, config.test_grid_sigmas(), config.seed)
        self.step = ErftStep(
            accelerator,
            self.model,
            optimizer,
            parameters,
            self.recycler,
            self.dtype,
            config.max_grad_norm,
            config.seed,
            positions=config.training_positions(),
        )

    def _check_image_tokens(self, dataset: LatentCacheDataset, transformer: torch.nn.Module) -> None:
        """A cache holds CLIP tokens exactly when its model's DiT takes them (Wan2.1, not Wan2.2-A14B). Without the
        check a Wan2.1 DiT would read 257 text tokens as image tokens, and Wan2.2's fail deep in its forward."""
        cached = dataset[0].clip_tokens is not None
        if cached != (transformer.config.image_dim is not None):
            raise TrainConfigError(
                f"the latent cache {self.config.data.latent_cache} was encoded {'with' if cached else 'without'} CLIP "
                f"image tokens, but the DiT of {self.config.model} takes {'none' if cached else 'them'}: a cache "
                "belongs to one model, use another latent_cache folder"
            )

    def _save_adapter(self, models: list, weights: list, folder: str) -> None:
        """accelerate's checkpoint writes every model's full state; SVI's needs only the LoRA (the base is frozen)."""
        if self.accelerator.is_main_process:
            state = adapter_state_dict(self.accelerator.unwrap_model(models[0]))
            tensors = {key: value.detach().cpu().contiguous() for key, value in state.items()}
            save_file(tensors, Path(folder) / ADAPTER_FILE)
        weights.clear()

    def _load_adapter(self, models: list, folder: str) -> None:
        """The LoRA back into the model (under DeepSpeed `models` is empty: its own checkpoint holds the LoRA)."""
        if models:
            path = Path(folder) / ADAPTER_FILE
            load_adapter_state_dict(self.accelerator.unwrap_model(models[0]), load_file(path), str(path))
            models.clear()

    # ---- the loop ----------------------------------------------------------------------------------------------------

    def train(self, progress: ProgressCallback | None) -> TrainResult:
        config, accelerator = self.config, self.accelerator
        self._load()
        processes, rank = accelerator.num_processes, accelerator.process_index
        state = TrainerState(identity=config.identity(), processes=processes, samples=len(self.clips.dataset))
        if self.resume_from is not None:
            state = self._resumed_state(state)
        steps_per_epoch = math.ceil(math.ceil(len(self.clips.dataset) / processes) / config.batch_size)
        total = config.total_steps(steps_per_epoch)
        accelerator.init_trackers("erft")
        main = accelerator.is_main_process
        bar = tqdm(total=total, initial=min(state.step, total), desc="ERFT", unit="step", disable=not main)
        while state.step < total:
            epoch, position = divmod(state.step, steps_per_epoch)
            order = process_order(len(self.clips.dataset), epoch, config.seed, processes, rank)
            order = order[position * config.batch_size :]
            for items in self.clips.batches(order, config.batch_size, config.data.num_workers, epoch):
                started = time.perf_counter()
                generator = torch.Generator().manual_seed(derived_seed(config.seed, "augmentation", rank, state.step))
                inputs = self.clips.inputs(items, generator, accelerator.device, self.dtype)
                record, prepared = self.step(inputs, state.step)
                state.history.append(record)
                state.step += 1
                report = StepReport(
                    step=state.step,
                    total_steps=total,
                    loss=record["loss"],
                    sigma=record["sigma"],
                    grad_norm=record["grad_norm"],
                    clean=prepared.clean,
                    injected=prepared.injected,
                    banks=self.recycler.stats(),
                    seconds=time.perf_counter() - started,
                )
                self._report(report, bar, progress)
                if state.step % config.checkpoint_every == 0 or state.step == total:
                    self._save_checkpoint(state)
                if state.step == total:
                    break
        bar.close()
        result = self._finish(state)
        # Not `end_training()`: it also destroys the process group, which a launcher's later runs still need.
        for tracker in accelerator.trackers:
            tracker.finish()
        return result

    def _report(self, report: StepReport, bar: tqdm, progress: ProgressCallback | None) -> None:
        fills = {name.removesuffix("_fill"): value for name, value in report.banks.items() if name.endswith("_fill")}
        bank = " ".join(f"{name} {fill:.1%}" for name, fill in fills.items()) or "off"
        bar.set_postfix(loss=f"{report.loss:.4f}", sigma=f"{report.sigma:.3f}", banks=bank, refresh=False)
        bar.update()
        values = {"loss": report.loss, "sigma": report.sigma, "seconds_per_step": report.seconds} | report.banks
        if report.grad_norm is not None:
            values["grad_norm"] = report.grad_norm
        self.accelerator.log(values | {f"injected/{k}": float(v) for k, v in report.injected.items()}, step=report.step)
        if progress is not None and self.accelerator.is_main_process:
            progress(report)

    # ---- checkpoints and results -------------------------------------------------------------------------------------

    def _save_checkpoint(self, state: TrainerState) -> None:
        accelerator = self.accelerator
        if accelerator.is_main_process:
            self.checkpoints.start(state.step)
        accelerator.wait_for_everyone()
        partial = self.checkpoints.partial(state.step)
        accelerator.save_state(str(partial), **({"exclude_frozen_parameters": True} if self.deepspeed else {}))
        if self.config.checkpoint_banks:
            torch.save(self.recycler.state_dict(), partial / recycler_file(accelerator.process_index))
        if accelerator.is_main_process:
            state.write(partial)
            self._write_loss_table(state)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            self.checkpoints.commit(state.step)
        accelerator.wait_for_everyone()

    def _resumed_state(self, fresh: TrainerState) -> TrainerState:
        """The state of the checkpoint to resume, loaded into model, optimizer, RNGs and recycler."""
        folder, accelerator = self.resume_from, self.accelerator
        state = TrainerState.read(folder)
        if (state.processes, state.samples) != (fresh.processes, fresh.samples):
            raise TrainConfigError(
                f"checkpoint {folder} was written by {state.processes} processes over {state.samples} samples; an "
                f"exact resume needs the same data order, but this run has {fresh.processes} over {fresh.samples}"
            )
        accelerator.load_state(str(folder), **({"load_module_strict": False} if self.deepspeed else {}))
        banks = folder / recycler_file(accelerator.process_index)
        if banks.is_file():
            self.recycler.load_state_dict(torch.load(banks, weights_only=True))
        else:
            log.warning("%s holds no error banks (checkpoint_banks: false): resuming with empty banks", folder)
        log.info("resumed from %s at step %d", folder, state.step)
        return state

    def _write_loss_table(self, state: TrainerState) -> None:
        rows = ["step,loss,sigma,grad_norm,clean"]
        for r in state.history:
            rows.append(f"{r['step']},{r['loss']!r},{r['sigma']!r},{r['grad_norm']!r},{int(r['clean'])}")
        write_text_atomic(self.config.output_dir / LOSS_TABLE, "\n".join(rows) + "\n")

    def _finish(self, state: TrainerState) -> TrainResult:
        """The final LoRA in both layouts, written by the main process."""
        config = self.config
        tag = EXPERT_FILE_TAGS[config.expert]
        lora_file = config.output_dir / f"svi-{config.mode}{tag}.safetensors"
        diffusers_lora = config.output_dir / f"{DIFFUSERS_FOLDER}{tag}"
        if self.accelerator.is_main_process:
            transformer = self.accelerator.unwrap_model(self.model)
            metadata = {
                "format": "svi-lora",
                "steps": str(state.step),
                "config": json.dumps(config.model_dump(mode="json")),
            }
            save_released_lora(transformer, lora_file, metadata)
            save_diffusers_lora(transformer, diffusers_lora)
            self._write_loss_table(state)
        self.accelerator.wait_for_everyone()
        return TrainResult(
            lora_file=lora_file,
            diffusers_lora=diffusers_lora,
            steps=state.step,
            losses=state.losses,
            history=state.history,
            banks=self.recycler.stats(),
            resumed_from=self.resume_from,
        )

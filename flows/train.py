"""The `train` flow: Error-Recycling Fine-Tuning from a `train.yaml` (see docs/train.yaml).

    latent cache ──▶ training (resumes from the newest checkpoint) ──▶ svi-<mode>.safetensors + diffusers/

The latent-cache task is cached by content: the dataset's files (names, sizes, modification times, and the CSVs
themselves), the model folder's fingerprint, the clip settings, the seed, the dtype and the stage version. The
training task is not: running it again (a retried flow run, or the same command) resumes from the newest
checkpoint, and a finished run only writes its LoRA files again.

`run_training` is what `svi train --config train.yaml` calls. Under a multi-process launcher (`accelerate launch`,
`torchrun`) every process runs the trainer directly instead, since a flow per process would make N flow runs.

No `from __future__ import annotations` here: served runs must resolve the pydantic parameter types.
"""

import os
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from flows.gpu_slot import gpu_slot
from flows.task_results import RESULTS
from pipeline.hashing import content_digest, dataset_fingerprint, folder_fingerprint
from svi_model.erft.train_config import TrainConfig
from svi_model.erft.trainer import StepReport, TrainResult, train
from svi_model.erft.training_data import prepare_latent_cache

LATENT_CACHE_VERSION = "latent-cache-1"
LOSS_ROWS = 200  # the loss table artifact shows at most this many steps, evenly spread


def _latent_cache_key(context, parameters) -> str:
    config: TrainConfig = parameters["config"]
    fields = {
        "stage": LATENT_CACHE_VERSION,
        "videos": dataset_fingerprint(config.data.videos),
        "model": folder_fingerprint(config.model),
        "folder": str(Path(config.data.latent_cache).resolve()),
        "data": config.data.model_dump(mode="json", exclude={"num_workers"}),
        "clip": str(config.clip_settings()),
        "seed": config.seed,
        "precision": config.mixed_precision,
    }
    return "latent-cache-" + content_digest(fields)


@task(name="latent-cache", cache_key_fn=_latent_cache_key, persist_result=True, result_storage=RESULTS)
def latent_cache(config: TrainConfig) -> dict:
    """Encode the dataset's clips once with the frozen encoders; returns what was written, reused and skipped."""
    build = prepare_latent_cache(config)
    get_run_logger().info("latent cache %s: %d written, %d reused", build.folder, build.written, build.reused)
    return {"written": build.written, "reused": build.reused, "skipped": build.skipped}


@task(name="train-lora")
def train_lora(config: TrainConfig) -> TrainResult:
    """The training run, resumed from its newest checkpoint if it has one; progress shows in the UI."""
    bar = create_progress_artifact(progress=0.0, key="erft-progress", description="ERFT steps done")
    shown = {"percent": -1}

    def on_step(report: StepReport) -> None:
        percent = int(100 * report.step / report.total_steps)
        if percent > shown["percent"]:
            shown["percent"] = percent
            update_progress_artifact(bar, progress=float(percent))

    result = train(config, on_step)
    update_progress_artifact(bar, progress=100.0)
    return result


@flow(name="train", log_prints=True)
def train_flow(config: Path = Path("train.yaml")) -> Path:
    """Train an SVI LoRA as `config` (a train.yaml) says; returns the LoRA file in SVI's released layout."""
    settings = TrainConfig.from_yaml(config)
    if settings.data.videos is not None and settings.data.latent_cache is not None:
        # A cached result is only as good as the folder it describes: without its index, encode again.
        index_missing = not (Path(settings.data.latent_cache) / "index.json").is_file()
        with gpu_slot():
            latent_cache.with_options(refresh_cache=index_missing)(settings)
    with gpu_slot():
        result = train_lora(settings)
    create_table_artifact(key="erft-losses", table=_loss_rows(result), description="loss per step (sampled)")
    create_markdown_artifact(key="erft-summary", markdown=_summary(settings, result), description="ERFT run")
    return result.lora_file


def _loss_rows(result: TrainResult) -> list[dict]:
    stride = max(1, len(result.history) // LOSS_ROWS)
    return [
        {"step": r["step"], "loss": round(r["loss"], 6), "sigma": round(r["sigma"], 4), "clean": r["clean"]}
        for r in result.history[stride - 1 :: stride]
    ]


def _summary(config: TrainConfig, result: TrainResult) -> str:
    tail = result.losses[-min(len(result.losses), 50) :]
    banks = ", ".join(f"{name} {value:.3g}" for name, value in result.banks.items()) or "none"
    resumed = f"resumed from `{result.resumed_from}`" if result.resumed_from else "started fresh"
    return (
        f"# ERFT {config.mode} ({config.recipe} recipe)\n\n"
        f"- LoRA (SVI layout, what `svi film --lora` loads): `{result.lora_file.resolve()}`\n"
        f"- LoRA (diffusers layout): `{result.diffusers_lora.resolve()}`\n"
        f"- steps: {result.steps} ({resumed})\n"
        f"- mean loss of the last {len(tail)} steps: {sum(tail) / max(len(tail), 1):.4f}\n"
        f"- error banks: {banks}\n"
    )


def run_training(config: Path) -> Path:
    """`svi train --config train.yaml`: the `train` flow, or the bare trainer on every process of a launcher."""
    checked = TrainConfig.from_yaml(config)  # bad config: one clear error before any server or flow starts
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return train(checked).lora_file
    return train_flow(config)

"""The whole recipe, phase by phase, each resumable and checked before the next starts.

work/videos/         the toy-world training videos (MixKit layout)
work/vae.pt          phase 1's checkpoint;  work/encoder-model/  the folder the cache is encoded with
work/latents/        the latent cache (the ERFT trainer's format)
work/base.pt         phase 2's checkpoint;  work/base-model/     the base model folder
work/lora/           phase 3, the ERFT trainer's output folder (checkpoints, losses.csv, the LoRA)
work/report.json     what each phase measured, and how long it took (summed over every invocation that ran it)
out/                 the result: the base model folder, with the SVI LoRA in it as `svi-film.safetensors`
"""

import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from ..atomic_files import place_file, replace_folder, write_text_atomic
from ..erft.dataset import ClipSettings, VideoItem, read_video_index
from ..erft.latent_cache import build_latent_cache
from ..erft.training_data import encoders_on
from ..loading import load_wan_pipeline
from ..sampler import ClipSampler
from ..toyworld import write_dataset
from ..toyworld.files import SCENES_FILE
from .base_check import condition_use
from .base_phase import train_base
from .lora_phase import train_lora
from .model_folder import set_latent_statistics, write_model_folder
from .recipe import FPS, HEIGHT, TRAINING_CLIPS, VIDEO_FRAMES, WIDTH, DemoRecipe, demo_transformer
from .shipped import LORA_FILE
from .vae_phase import reconstruction_quality, train_vae

log = logging.getLogger(__name__)


class PhaseCheckFailed(RuntimeError):
    """A phase finished without reaching what the next one needs; the message says what was measured."""


def build_demo_model(out: Path, work: Path, recipe: DemoRecipe = DemoRecipe(), progress: bool = True) -> dict:
    """Run (or resume) every phase into `work`, then place the finished model folder at `out`.

    Returns the report (also written to `work/report.json` and `out/training-report.json`).
    """
    work.mkdir(parents=True, exist_ok=True)
    report_path = work / "report.json"
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    report["recipe"] = {key: list(value) if isinstance(value, tuple) else value for key, value in vars(recipe).items()}

    def timed(name: str, run):
        started = time.perf_counter()
        result = run()
        report.setdefault("seconds", {})[name] = report.get("seconds", {}).get(name, 0) + time.perf_counter() - started
        write_text_atomic(report_path, json.dumps(report, indent=2) + "\n")
        return result

    videos = work / "videos"
    timed("videos", lambda: _write_videos(videos, recipe, progress))

    vae = timed("vae", lambda: train_vae(recipe, work, progress))
    # The check takes minutes on 2 cores: a resumed build reuses its figures when they were measured on this very
    # checkpoint (its hash is stored beside them).
    checkpoint = hashlib.sha256((work / "vae.pt").read_bytes()).hexdigest()
    if report.get("vae_reconstruction", {}).get("checkpoint_sha256") != checkpoint:
        quality = timed("vae_check", lambda: reconstruction_quality(vae, recipe.seed, recipe.check_clips))
        report["vae_reconstruction"] = {**quality, "checkpoint_sha256": checkpoint}
    quality = report["vae_reconstruction"]
    log.info("phase 1 VAE reconstruction: %s", quality)
    if quality["first_frame"] < recipe.min_vae_psnr:
        raise PhaseCheckFailed(
            f"phase 1's VAE reconstructs held-out first frames at {quality['first_frame']:.1f} dB, below the "
            f"{recipe.min_vae_psnr} dB phase 2 needs (all figures: {quality}); train it longer (vae_steps)"
        )
    set_latent_statistics(vae, recipe.seed, recipe.statistics_clips)

    encoder_model = write_model_folder(work / "encoder-model", vae, demo_transformer(recipe.seed), recipe.seed)
    cache = work / "latents"
    timed("latent_cache", lambda: _encode_cache(encoder_model, videos, cache, recipe, progress))

    transformer, losses = timed("base", lambda: train_base(recipe, cache, work, progress))
    if losses:
        losses = [loss for _, loss in losses]
        report["base_loss"] = {"first_100": _mean(losses[:100]), "last_100": _mean(losses[-100:])}
    base_model = write_model_folder(work / "base-model", vae, transformer, recipe.seed)
    report["base_condition_use"] = timed("base_check", lambda: _condition_use(base_model, recipe))
    log.info("phase 2 base DiT, x0 error at σ = 1 on made-up frames: %s", report["base_condition_use"])

    result = timed("lora", lambda: train_lora(recipe, base_model, cache, work / "lora"))
    report["lora_loss"] = {"first_100": _mean(result.losses[:100]), "last_100": _mean(result.losses[-100:])}
    write_text_atomic(report_path, json.dumps(report, indent=2) + "\n")

    staged = out.with_name(f".{out.name}.building")
    shutil.rmtree(staged, ignore_errors=True)
    shutil.copytree(base_model, staged)
    place_file(result.lora_file, staged / LORA_FILE)
    write_text_atomic(staged / "training-report.json", json.dumps(report, indent=2) + "\n")
    replace_folder(staged, out)
    return report


def _float32_pipeline(model: Path):
    """The model folder's pipeline on the CPU in float32, as the recipe trains it."""
    return load_wan_pipeline(model, device="cpu", transformer_dtype=torch.float32, text_encoder_dtype=torch.float32)


def _condition_use(model: Path, recipe: DemoRecipe) -> dict[str, float]:
    return condition_use(ClipSampler(_float32_pipeline(model)), recipe.seed, recipe.check_clips)


def _mean(values: list[float]) -> float:
    return float(sum(values) / len(values))


def _write_videos(folder: Path, recipe: DemoRecipe, progress: bool) -> None:
    """The training videos, unless a complete set is there (scenes.jsonl is written last)."""
    if (folder / SCENES_FILE).is_file():
        return
    shutil.rmtree(folder, ignore_errors=True)
    write_dataset(folder, recipe.videos, recipe.seed, VIDEO_FRAMES, HEIGHT, WIDTH, FPS, progress=progress)


def _encode_cache(model: Path, videos: Path, cache: Path, recipe: DemoRecipe, progress: bool) -> None:
    """Encode the cache with one single-thread process per core, each a shard of the videos, then index it all in
    this process (which finds every sample made and only reuses them). The VAE's small convolutions use a second
    thread poorly: on 2 cores a clip took 1.03 s with two threads and 1.2 s with one, so two one-thread processes
    encode about 1.7 times as fast as one process."""
    items = read_video_index(videos)
    # The cores this process may run on (Linux), else all of them (macOS has no affinity call).
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = min(cores, len(items))
    if workers > 1:
        spawn = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=spawn, initializer=torch.set_num_threads, initargs=(1,)) as pool:
            shards = [
                pool.submit(_encode_shard, model, items[index::workers], cache, recipe, progress and index == 0)
                for index in range(workers)
            ]
            for shard in shards:
                shard.result()
    _encode_shard(model, items, cache, recipe, progress=False)


def _encode_shard(model: Path, items: list[VideoItem], cache: Path, recipe: DemoRecipe, progress: bool) -> None:
    settings = ClipSettings.for_mode("film", **TRAINING_CLIPS)
    sampler = encoders_on(_float32_pipeline(model), torch.device("cpu"))
    build_latent_cache(
        items,
        sampler,
        cache,
        settings,
        samples_per_video=recipe.cache_samples,
        seed=recipe.seed,
        embedding_dtype=torch.float32,
        progress=progress,
    )

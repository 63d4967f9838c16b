"""ERFT training end to end on the CPU: tiny Wan model, short generated videos in the MixKit layout, a few steps.

What is checked: the run writes a LoRA the engine loads and that changes its output (and the same LoRA in diffusers'
layout); a run interrupted after a checkpoint and resumed gives the uninterrupted run's losses, LoRA and error
banks bit for bit; the banks fill and errors get injected; plain fine-tuning banks nothing; bad input fails early
with an error that names it. Clips are 9 frames at 32×32 (3 latent frames of 4×4), the same code path as 81 at
480×832; LoRA rank = alpha = 4 (scale 1, as SVI's 128/128).
"""

import json
import math
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactCollectionFilter
from safetensors.torch import load_file
from test_erft_data import synthetic_frames, write_mixkit_csv, write_video

from flows.cli import main
from svi_model.conditioning import condition_video
from svi_model.erft.checkpoints import ADAPTER_FILE, CheckpointFolder, recycler_file
from svi_model.erft.dataset import ClipSettings, DatasetError
from svi_model.erft.latent_cache import LatentCacheDataset
from svi_model.erft.lora_training import add_training_lora, svi_lora_config
from svi_model.erft.loss import timestep_weights, training_sigmas, weighted_mse
from svi_model.erft.train_config import TrainConfig, TrainConfigError
from svi_model.erft.trainer import StepReport, train
from svi_model.erft.training_data import process_order
from svi_model.loading import ModelFolderError, load_wan_pipeline, load_wan_transformer
from svi_model.lora_files import read_lora_file
from svi_model.sampler import ClipCondition, ClipSampler
from svi_model.schedule import shifted_sigmas
from svi_model.tiny import save_tiny_model, tiny_components

PROJECT_ROOT = Path(__file__).resolve().parents[1]
TINY_CLIP = {"num_frames": 9, "height": 32, "width": 32}
STEPS = 8


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory) -> Path:
    return Path(save_tiny_model(tmp_path_factory.mktemp("tiny-model")))


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """Two categories; `short.mp4` (6 frames) is shorter than a 9-frame clip and `broken.mp4` is not a video."""
    root = tmp_path_factory.mktemp("mixkit")
    write_video(root / "Cats" / "cat-on-sofa.mp4", synthetic_frames(20))
    write_video(root / "Cats" / "short.mp4", synthetic_frames(6))
    (root / "Cats" / "broken.mp4").write_bytes(b"not a video" * 64)
    write_mixkit_csv(
        root / "Cats" / "Cats.csv",
        [("cat-on-sofa.mp4", "A cat sits on a sofa."), ("short.mp4", "A cat jumps."), ("broken.mp4", "A cat.")],
    )
    write_video(root / "Waves" / "waves.mkv", synthetic_frames(16, height=48, width=48))
    write_mixkit_csv(root / "Waves" / "Waves.csv", [("waves.mkv", "Waves roll onto the beach.")])
    return root


def tiny_config(model: Path, output_dir: Path, data: dict, **changes) -> TrainConfig:
    fields = dict(
        model=model,
        data={"num_workers": 0, **data},
        output_dir=output_dir,
        clip=TINY_CLIP,
        steps=STEPS,
        checkpoint_every=3,
        keep_checkpoints=5,
        mixed_precision="no",
        lora_rank=4,
        lora_alpha=4,
        learning_rate=1e-3,
        seed=1,
        recycling={"warmup_steps": 2, "errors_per_grid": 3},
    )
    return TrainConfig(**(fields | changes))


class Recorder:
    """A progress callback that keeps every report and can stop the run after a given step, like a crash."""

    def __init__(self, stop_after: int | None = None):
        self.reports: list[StepReport] = []
        self.stop_after = stop_after

    def __call__(self, report: StepReport) -> None:
        self.reports.append(report)
        if report.step == self.stop_after:
            raise KeyboardInterrupt


@pytest.fixture(scope="module")
def trained(model_folder, videos, tmp_path_factory):
    """An uninterrupted cached-mode run of 8 steps (checkpoints at 3, 6, 8) and its progress reports."""
    work = tmp_path_factory.mktemp("trained")
    config = tiny_config(model_folder, work / "run", {"videos": videos, "latent_cache": work / "cache"})
    recorder = Recorder()
    return config, train(config, recorder), recorder.reports


def render_latents(model_folder: Path, lora: Path | None = None, diffusers_lora: Path | None = None) -> torch.Tensor:
    """A 4-step clip of the engine (fp32), with the LoRA fused in (released layout) or loaded by diffusers."""
    pipe = load_wan_pipeline(model_folder, transformer_dtype=torch.float32, text_encoder_dtype=torch.float32)
    if lora is not None:
        from svi_model.lora_files import apply_lora

        apply_lora(pipe.transformer, read_lora_file(lora))
    if diffusers_lora is not None:
        pipe.load_lora_weights(diffusers_lora, weight_name="pytorch_lora_weights.safetensors", adapter_name="svi")
    sampler = ClipSampler(pipe)
    frame = torch.from_numpy(synthetic_frames(1, 32, 32)[0])
    condition = ClipCondition(sampler.encode(condition_video(frame[None], 9)), frame)
    with torch.no_grad():
        return sampler.render("A cat sits on a sofa.", 42, condition, steps=4).latents


# ---- the objective and the LoRA -------------------------------------------------------------------------------------


def test_training_grid_and_timestep_weight():
    sigmas = training_sigmas()
    assert torch.equal(sigmas, shifted_sigmas(1000)[:-1]) and sigmas[0] == 1.0 and sigmas[-1] > 0
    weights = timestep_weights(sigmas)
    assert weights.mean().item() == pytest.approx(1.0) and weights.min() == 0.0 == weights[0]
    peak = int(weights.argmax())
    assert abs(1000 * sigmas[peak].item() - 500) < 2
    expected = math.exp(-2 * ((1000 * sigmas[100].item() - 500) / 1000) ** 2)
    bump = torch.exp(-2 * ((1000 * sigmas - 500) / 1000) ** 2)
    assert weights[100].item() == pytest.approx((expected - bump.min().item()) * 1000 / (bump - bump.min()).sum())
    prediction, target = torch.ones(2, 3), torch.zeros(2, 3)
    assert weighted_mse(prediction, target, torch.tensor([0.5, 2.0])).item() == pytest.approx(1.25)


def test_lora_is_svi_layout_fp32_on_a_bf16_base():
    config = svi_lora_config()
    assert (config.r, config.lora_alpha, config.init_lora_weights, config.lora_dropout) == (128, 128, True, 0.0)
    transformer = tiny_components()["transformer"].to(torch.bfloat16)
    parameters = add_training_lora(transformer, rank=8, alpha=8)
    names = {name.rsplit(".lora_", 1)[0] for name, p in transformer.named_parameters() if p.requires_grad}
    layers = ["attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k", "attn2.to_v"]
    layers += ["attn2.to_out.0", "ffn.net.0.proj", "ffn.net.2"]
    assert names == {f"blocks.{n}.{layer}" for n in range(2) for layer in layers}
    assert len(parameters) == 40 and all(p.dtype == torch.float32 for p in parameters)
    frozen = [p for p in transformer.parameters() if not p.requires_grad]
    assert frozen and all(p.dtype in (torch.bfloat16, torch.float32) for p in frozen)
    assert transformer.blocks[0].attn1.to_q.base_layer.weight.dtype == torch.bfloat16
    assert all(not p.any() for name, p in transformer.named_parameters() if "lora_B" in name)
    assert all(p.abs().sum() > 0 for name, p in transformer.named_parameters() if "lora_A" in name)
    assert transformer.gradient_checkpointing


def test_process_order_covers_every_sample_once_per_epoch():
    assert sorted(process_order(7, epoch=0, seed=0, processes=1, rank=0)) == list(range(7))
    assert process_order(7, 0, 0, 1, 0) != process_order(7, 1, 0, 1, 0)
    shares = [process_order(7, 2, 0, 3, rank) for rank in range(3)]
    assert [len(share) for share in shares] == [3, 3, 3]
    assert set(sum(shares, [])) == set(range(7))


def test_checkpoint_folder_ignores_partial_ones_and_keeps_the_newest(tmp_path):
    folder = CheckpointFolder(tmp_path / "checkpoints", keep=2)
    for step in (3, 6, 9):
        (folder.start(step) / "trainer_state.json").write_text("{}")
        folder.commit(step)
    folder.start(12)  # a crash while writing step 12
    assert folder.steps() == [6, 9] and folder.latest() == folder.path(9)
    assert sorted(p.name for p in folder.root.iterdir()) == [".step-00000012.partial", "step-00000006", "step-00000009"]


def test_benchmark_runs_on_the_tiny_model(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["erft_step.py", "--tiny", "--warmup", "0", "--steps", "1"])
    runpy.run_path(str(PROJECT_ROOT / "bench" / "erft_step.py"), run_name="__main__")
    printed = capsys.readouterr().out
    assert "seconds per step, median of 1" in printed and "model TFLOP/s" in printed


# ---- a whole run ----------------------------------------------------------------------------------------------------


def test_run_writes_a_lora_the_engine_loads_and_that_changes_its_output(trained, model_folder):
    config, result, _ = trained
    assert result.steps == STEPS and len(result.losses) == STEPS and all(math.isfinite(x) for x in result.losses)
    lora = read_lora_file(result.lora_file)
    assert len(lora.pairs) == 20 and all(pair.scale == 1.0 for pair in lora.pairs.values())
    adapter = load_file(config.output_dir / "checkpoints" / "step-00000008" / ADAPTER_FILE)
    assert torch.equal(lora.pairs["blocks.1.ffn.net.2"].b, adapter["blocks.1.ffn.net.2.lora_B.weight"])
    assert any(pair.b.abs().sum() > 0 for pair in lora.pairs.values())

    plain = render_latents(model_folder)
    with_lora = render_latents(model_folder, lora=result.lora_file)
    assert (plain - with_lora).abs().max() > 1e-3
    with_diffusers_lora = render_latents(model_folder, diffusers_lora=result.diffusers_lora)
    torch.testing.assert_close(with_diffusers_lora, with_lora, rtol=0, atol=1e-4)


def test_cache_keeps_the_short_video_and_skips_the_broken_one(trained):
    config, _, _ = trained
    cache = LatentCacheDataset(config.data.latent_cache)
    sources = {Path(entry["source"]).name: entry for entry in cache.entries}
    assert set(sources) == {"cat-on-sofa.mp4", "short.mp4", "waves.mkv"}
    assert sources["short.mp4"]["repeated"] == 3


def test_banks_fill_and_errors_are_injected(trained):
    _, result, reports = trained
    assert result.banks["noise_fill"] > 0 and result.banks["video_fill"] > 0
    assert [report.step for report in reports] == list(range(1, STEPS + 1))
    fills = [report.banks["video_fill"] for report in reports]
    assert fills == sorted(fills) and fills[-1] > fills[0]
    assert any(report.injected["video"] or report.injected["image"] for report in reports)
    assert any(report.clean for report in reports) and not all(report.clean for report in reports)


def test_resume_after_a_crash_continues_identically(trained, model_folder, videos, tmp_path):
    config, uninterrupted, _ = trained
    resumed_config = config.model_copy(update={"output_dir": tmp_path / "run"})
    with pytest.raises(KeyboardInterrupt):
        train(resumed_config, Recorder(stop_after=5))  # steps 4 and 5 ran, but the last checkpoint is step 3
    checkpoints = resumed_config.output_dir / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-00000003"]

    resumed = train(resumed_config)
    assert resumed.resumed_from == checkpoints / "step-00000003"
    assert resumed.losses == uninterrupted.losses
    released = load_file(resumed.lora_file)
    assert all(torch.equal(value, load_file(uninterrupted.lora_file)[key]) for key, value in released.items())
    for step in ("step-00000006", "step-00000008"):
        banks = torch.load(checkpoints / step / recycler_file(0))
        expected = torch.load(config.output_dir / "checkpoints" / step / recycler_file(0))
        assert banks.keys() == expected.keys() and all(torch.equal(banks[k], expected[k]) for k in banks)

    again = train(resumed_config)  # a finished run only writes its LoRA files again
    assert again.steps == STEPS and again.losses == uninterrupted.losses


def test_checkpoints_without_banks_resume_with_empty_banks(trained, tmp_path, caplog):
    config, uninterrupted, _ = trained
    lean = config.model_copy(update={"output_dir": tmp_path / "run", "checkpoint_banks": False, "steps": 3})
    train(lean)
    assert not list((lean.output_dir / "checkpoints").glob("*/recycler-rank*.pt"))
    resumed = train(lean.model_copy(update={"steps": 4}))
    assert "resuming with empty banks" in caplog.text
    assert resumed.losses[:3] == uninterrupted.losses[:3] and len(resumed.losses) == 4


def test_resume_refuses_changed_settings_and_a_fresh_start_over_checkpoints(trained):
    config, _, _ = trained
    with pytest.raises(TrainConfigError, match="other settings .*learning_rate"):
        train(config.model_copy(update={"learning_rate": 5e-4}))
    with pytest.raises(TrainConfigError, match="holds checkpoints of an earlier run"):
        train(config.model_copy(update={"resume": "none"}))
    # Fewer steps than its last checkpoint: going on "from" it would write a LoRA trained longer than asked.
    with pytest.raises(TrainConfigError, match=f"at step {STEPS}, past this run's 5 steps"):
        train(config.model_copy(update={"steps": 5}))


def test_plain_fine_tuning_in_raw_mode_banks_and_injects_nothing(model_folder, videos, tmp_path):
    recycling = {"enabled": False, "handcrafted_augmentation": True}
    config = tiny_config(model_folder, tmp_path / "run", {"videos": videos}, steps=3, recycling=recycling)
    recorder = Recorder()
    result = train(config, recorder)
    assert result.steps == 3 and all(math.isfinite(x) for x in result.losses)
    assert result.banks == {"bank_gb": 0.0}
    assert all(report.clean and not any(report.injected.values()) for report in recorder.reports)
    assert read_lora_file(result.lora_file).pairs


def test_two_processes_train_together_and_resume_identically(trained, tmp_path):
    """DDP over gloo on the CPU: warm-up all-gathers errors, each process keeps its own banks and RNG states."""
    config, _, _ = trained
    two = config.model_copy(update={"output_dir": tmp_path, "steps": 4, "checkpoint_every": 2})
    (tmp_path / "config.json").write_text(two.model_dump_json())
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += [str(PROJECT_ROOT / "tests" / "erft_ddp_worker.py"), str(tmp_path / "config.json")]
    command += [str(tmp_path / "result.json")]
    environment = os.environ | {"PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": "1"}
    finished = subprocess.run(command, cwd=PROJECT_ROOT, env=environment, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert len(result["whole"]) == 4 and result["resumed"] == result["whole"]
    last = tmp_path / "whole" / "checkpoints" / "step-00000004"
    banks = [torch.load(last / recycler_file(rank)) for rank in (0, 1)]
    assert all(bank["video.counts"].sum() > 0 for bank in banks)
    assert not torch.equal(banks[0]["generator"], banks[1]["generator"])
    for rank in (0, 1):
        resumed = torch.load(tmp_path / "split" / "checkpoints" / "step-00000004" / recycler_file(rank))
        assert all(torch.equal(resumed[key], banks[rank][key]) for key in banks[rank])


@pytest.mark.usefixtures("prefect_server")
def test_train_flow_caches_the_latent_cache_and_resumes_training(model_folder, videos, tmp_path, monkeypatch):
    from flows import train as train_flow_module

    config = tiny_config(model_folder, tmp_path / "run", {"videos": videos, "latent_cache": tmp_path / "cache"})
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json", exclude_defaults=True)))
    builds = []
    real_build = train_flow_module.prepare_latent_cache
    monkeypatch.setattr(train_flow_module, "prepare_latent_cache", lambda c: builds.append(c) or real_build(c))

    lora = train_flow_module.run_training(path)
    assert lora == config.output_dir / "svi-film.safetensors" and read_lora_file(lora).pairs
    again = train_flow_module.train_flow(path, return_state=True)
    assert again.is_completed() and len(builds) == 1  # the second run reused the cache task's result
    with get_client(sync_client=True) as client:
        summary = client.read_latest_artifacts(artifact_filter=ArtifactCollectionFilter(key={"any_": ["erft-summary"]}))
    assert summary and "resumed from" in summary[0].data and f"steps: {STEPS}" in summary[0].data

    (tmp_path / "empty").mkdir()
    path.write_text(yaml.safe_dump(config.model_dump(mode="json") | {"data": {"videos": str(tmp_path / "empty")}}))
    with pytest.raises(DatasetError, match="no videos found under"):
        train_flow_module.run_training(path)  # what `svi train --config` reports in one line


# ---- bad input ------------------------------------------------------------------------------------------------------


def test_empty_dataset_fails_before_the_model_loads(tmp_path):
    (tmp_path / "videos").mkdir()
    config = tiny_config(tmp_path / "no-model-needed", tmp_path / "run", {"videos": tmp_path / "videos"})
    with pytest.raises(DatasetError, match="no videos found under"):
        train(config)


def test_dataset_of_unreadable_videos_is_an_error(model_folder, tmp_path):
    (tmp_path / "videos" / "Junk").mkdir(parents=True)
    (tmp_path / "videos" / "Junk" / "junk.mp4").write_bytes(b"junk" * 100)
    write_mixkit_csv(tmp_path / "videos" / "Junk" / "Junk.csv", [("junk.mp4", "Junk.")])
    data = {"videos": tmp_path / "videos", "latent_cache": tmp_path / "cache"}
    with pytest.raises(DatasetError, match="none of the 1 videos .* could be read: cannot read video"):
        train(tiny_config(model_folder, tmp_path / "run", data))


def test_csv_without_the_columns_and_missing_captions_are_errors(tmp_path):
    write_video(tmp_path / "videos" / "Dogs" / "dog.mkv", synthetic_frames(10))
    write_mixkit_csv(tmp_path / "videos" / "Dogs" / "Dogs.csv", [("dog.mkv", "A dog.")], header=["Name", "Text"])
    config = tiny_config(tmp_path / "model", tmp_path / "run", {"videos": tmp_path / "videos"})
    with pytest.raises(DatasetError, match=r"Dogs\.csv lacks the column\(s\) Filename, Video Description"):
        train(config)
    write_mixkit_csv(tmp_path / "videos" / "Dogs" / "Dogs.csv", [("dog.mkv", "")])
    with pytest.raises(DatasetError, match=r"Dogs\.csv line 2 \(dog\.mkv\) has an empty Video Description"):
        train(config)


def test_config_errors_name_the_key(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("data: {videos: v}\noutput_dir: out\nrecycling: {use_image_error: false}\nsteps: 0\n")
    with pytest.raises(TrainConfigError) as error:
        TrainConfig.from_yaml(path)
    message = str(error.value)
    assert str(path) in message and "model: Field required" in message and "steps: Input should be greater" in message
    assert "recycling: Value error, unknown setting(s) use_image_error" in message
    path.write_text("model: m\ndata: {}\noutput_dir: out\n")
    with pytest.raises(TrainConfigError, match="data: Value error, give videos"):
        TrainConfig.from_yaml(path)
    path.write_text("model: m\ndata: {videos: v}\noutput_dir: out\nsteps: 5\nepochs: 1\nclip: {num_frames: 80}\n")
    with pytest.raises(TrainConfigError, match="give steps or epochs, not both"):
        TrainConfig.from_yaml(path)
    path.write_text("model: m\ndata: {videos: v}\noutput_dir: out\nclip: {num_frames: 80}\n")
    with pytest.raises(TrainConfigError, match="clip: num_frames must be 4k\\+1"):
        TrainConfig.from_yaml(path)
    path.write_text("model: m\ndata: {videos: v}\noutput_dir: out\nmode: pro\n")
    with pytest.raises(TrainConfigError, match="mode: Input should be 'shot' or 'film'"):
        TrainConfig.from_yaml(path)
    with pytest.raises(TrainConfigError, match="cannot read the training config"):
        TrainConfig.from_yaml(tmp_path / "missing.yaml")


def test_documented_config_is_valid_and_means_the_released_recipe():
    config = TrainConfig.from_yaml(PROJECT_ROOT / "docs" / "train.yaml")
    film = ClipSettings.for_mode("film")
    assert config.optimizer_learning_rate() == 1e-4 and config.lora_rank == config.lora_alpha == 128
    assert config.clip_settings() == film and (film.num_frames, film.height, film.width) == (81, 480, 832)
    assert (film.motion_frames, film.motion_probability, film.padding) == (5, 0.9, "zeros")
    assert config.recycling_settings().warmup_steps == 50
    paper = config.model_copy(update={"recipe": "paper"})
    assert paper.optimizer_learning_rate() == 2e-5 and paper.clip_settings().motion_probability == 0.95
    assert paper.recycling_settings().warmup_steps == 20


@pytest.mark.parametrize(
    "config, expected",
    [
        (None, "cannot read the training config"),
        ("model: m\ndata: {videos: v}\noutput_dir: o\nbogus: 1\n", "bogus"),
    ],
)
def test_svi_train_bad_config_is_one_line_and_exit_2(tmp_path, capsys, config, expected):
    path = tmp_path / "train.yaml"
    if config is not None:
        path.write_text(config)
    assert main(["train", "--config", str(path)]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error:") and expected in error


def test_training_from_the_latent_cache_alone_reads_only_the_dit(trained, model_folder, tmp_path, monkeypatch):
    config, uninterrupted, _ = trained

    def no_encoders(_config):
        raise AssertionError("training from a latent cache alone must not load the encoders")

    monkeypatch.setattr("svi_model.erft.trainer.cpu_pipeline", no_encoders)
    cached_only = tiny_config(model_folder, tmp_path / "run", {"latent_cache": config.data.latent_cache})
    assert train(cached_only).losses == uninterrupted.losses


def test_load_wan_transformer_names_what_the_dit_lacks(model_folder, tmp_path):
    assert load_wan_transformer(model_folder, torch.float32).training is False
    partial = tmp_path / "partial"
    (partial / "transformer").mkdir(parents=True)
    (partial / "transformer" / "config.json").write_text("{}")
    with pytest.raises(ModelFolderError, match=r"transformer/\*\.safetensors"):
        load_wan_transformer(partial)

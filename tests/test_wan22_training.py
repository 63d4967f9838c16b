"""ERFT for Wan2.2-I2V-A14B, one expert at a time (`expert: high` or `low`), on tiny models on the CPU.

What is checked: each expert draws its training timesteps only on its side of the boundary, covering it, and banks
errors only on the test-time steps the sampler gives it; a run trains the chosen expert's weights (from raw videos
through the pipeline and from a latent cache through `load_wan_transformer`, in either release layout), names its
files for it, and its LoRA loads into that expert; a one-DiT folder is refused for an expert run; `expert: none`
keeps the identity (and so the checkpoints) of runs from before experts existed. The timestep schedule is written
out here from the authors' formula, not taken from the code under test.
"""

import math
import re

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from diffusers import WanImageToVideoPipeline, WanTransformer3DModel
from original_layout import tiny_wan21_vae, write_original_layout, write_original_wan22_layout
from test_erft_training import Recorder, tiny_config, videos  # noqa: F401  (videos: a fixture used here)

from svi_model.erft import trainer
from svi_model.erft.lora_training import DIFFUSERS_WEIGHTS
from svi_model.erft.recycling import ErrorRecycler
from svi_model.erft.step import ErftStep, StepInputs
from svi_model.erft.train_config import TrainConfig, TrainConfigError
from svi_model.erft.trainer import train
from svi_model.loading import ModelFolderError, load_wan_pipeline, load_wan_transformer
from svi_model.lora_files import apply_lora, read_lora_file
from svi_model.sampler import ClipSampler, mask_and_latents, predict_velocity
from svi_model.tiny import save_tiny_model, tiny_components

BOUNDARY_T = 875.0  # SVI's switch, 0.875·1000
LATENT = (16, 3, 2, 2)  # one sample's latent: 3 latent frames (the image window) of 2×2
DRAWS = 400


def schedule_timesteps(count: int) -> np.ndarray:
    """The authors' shift-5 timesteps of a `count`-step schedule, without the final 0: t = 1000·5s/(1+4s)."""
    s = np.linspace(1.0, 0.0, count + 1)[:-1]
    return 1000.0 * 5.0 * s / (1.0 + 4.0 * s)


def owned(timesteps: np.ndarray, expert: str) -> np.ndarray:
    return timesteps[timesteps >= BOUNDARY_T] if expert == "high" else timesteps[timesteps < BOUNDARY_T]


@pytest.fixture(scope="module")
def wan22_folder(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny-wan22"), wan22=True)


@pytest.fixture(scope="module")
def low_run(wan22_folder, videos, tmp_path_factory):  # noqa: F811  (the imported fixture)
    """A low-noise run from raw videos into a latent cache (the encoders of the pipeline), and its trained base."""
    work = tmp_path_factory.mktemp("low")
    data = {"videos": videos, "latent_cache": work / "cache"}
    config = tiny_config(wan22_folder, work / "run", data, expert="low", steps=4)
    return config, *trained_with_base(config)


def trained_with_base(config: TrainConfig):
    """`train(config)`, the weights of the DiT it put the LoRA on (before the LoRA), and its progress reports."""
    bases, real = [], trainer.add_training_lora

    def recording(transformer, *args, **kwargs):
        bases.append({key: value.clone() for key, value in transformer.state_dict().items()})
        return real(transformer, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(trainer, "add_training_lora", recording)
        recorder = Recorder()
        result = train(config, recorder)
    return result, bases[0], recorder.reports


def folder_dit(folder, name: str) -> dict[str, torch.Tensor]:
    return WanTransformer3DModel.from_pretrained(folder, subfolder=name).state_dict()


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key].to(a[key].dtype)) for key in a)


class RecordingDiT(torch.nn.Module):
    """Stands in for a DiT: records every timestep it is called at; its velocity is the noisy latents times one
    trainable weight, so the step's backward and update run."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(()))
        self.timesteps: list[float] = []

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor, **_) -> tuple[torch.Tensor]:
        self.timesteps += timestep.tolist()
        return (self.weight * hidden_states[:, :16],)


def drawn_timesteps(config: TrainConfig) -> tuple[np.ndarray, ErrorRecycler]:
    """The timesteps `DRAWS` ERFT steps of `config`'s expert call the DiT at, and the steps' error recycler."""
    accelerator = Accelerator(cpu=True)
    dit = RecordingDiT()
    parameters = list(dit.parameters())
    recycler = ErrorRecycler(config.recycling_settings(), LATENT, config.test_grid_sigmas(), config.seed)
    step = ErftStep(
        accelerator,
        dit,
        torch.optim.SGD(parameters, lr=1e-3),
        parameters,
        recycler,
        torch.float32,
        config.max_grad_norm,
        config.seed,
        positions=config.training_positions(),
    )
    inputs = StepInputs(torch.randn(1, *LATENT), torch.randn(1, *LATENT), torch.zeros(1, 512, 32), None)
    for n in range(DRAWS):
        step(inputs, n)
    return np.array(dit.timesteps), recycler


# ---- timesteps and grids --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("expert", ["high", "low"])
def test_an_expert_draws_only_its_own_timesteps_and_covers_them(expert, tmp_path):
    config = tiny_config(tmp_path / "model", tmp_path / "run", {"videos": tmp_path}, expert=expert)
    timesteps, recycler = drawn_timesteps(config)
    assert len(timesteps) == DRAWS
    if expert == "high":
        assert timesteps.min() >= BOUNDARY_T
    else:
        assert timesteps.max() < BOUNDARY_T
    # Every draw is a point of the expert's share of the 1000-step training schedule (417 high, 583 low).
    share = owned(schedule_timesteps(1000), expert)
    assert len(share) == (417 if expert == "high" else 583)
    assert np.abs(timesteps[:, None] - share[None, :]).min(axis=1).max() < 1e-3
    # Covered: every test-time step the expert runs at is the nearest one to some draw.
    test_share = owned(schedule_timesteps(50), expert)
    nearest = np.abs(timesteps[:, None] - test_share[None, :]).argmin(axis=1)
    assert sorted(set(nearest.tolist())) == list(range(len(test_share)))
    # The banks keep a grid for each of those test-time steps and for no other.
    assert len(test_share) == (21 if expert == "high" else 29)
    np.testing.assert_allclose(1000 * recycler.test_sigmas.numpy(), test_share, rtol=0, atol=1e-9)
    assert all(bank.num_grids == len(test_share) for bank in recycler.banks.values())
    assert sum(recycler.banks["video"].counts) > 0


def test_the_banks_grids_are_the_steps_the_sampler_gives_each_expert(tmp_path):
    experts = ClipSampler(WanImageToVideoPipeline(**tiny_components(wan22=True))).experts(50)
    grids = {}
    for expert in ("high", "low"):
        config = tiny_config(tmp_path, tmp_path / "run", {"videos": tmp_path}, expert=expert)
        grids[expert] = config.test_grid_sigmas()
    whole = tiny_config(tmp_path, tmp_path / "run", {"videos": tmp_path}).test_grid_sigmas()
    assert torch.equal(torch.cat([grids["high"], grids["low"]]), whole) and len(whole) == 50
    assert experts == [0] * len(grids["high"]) + [1] * len(grids["low"])


def test_expert_none_keeps_the_identity_and_draws_of_one_dit_runs(tmp_path):
    none = tiny_config(tmp_path, tmp_path / "run", {"videos": tmp_path})
    before_experts = {"mode", "clip", "recycling", "data", "learning_rate", "batch_size", "lora", "seed"}
    assert set(none.identity()) == before_experts | {"mixed_precision", "max_grad_norm"}
    assert torch.equal(none.training_positions(), torch.arange(1000))
    high = none.model_copy(update={"expert": "high"})
    assert high.identity() == none.identity() | {"expert": "high", "expert_boundary": 0.875}


def test_a_boundary_that_leaves_an_expert_no_test_step_is_a_config_error(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("model: m\ndata: {videos: v}\noutput_dir: out\nexpert: low\nexpert_boundary: 0.05\n")
    with pytest.raises(TrainConfigError, match="expert_boundary: .*low-noise expert owns none of the 50 grid"):
        TrainConfig.from_yaml(path)
    path.write_text("model: m\ndata: {videos: v}\noutput_dir: out\nexpert: middle\n")
    with pytest.raises(TrainConfigError, match="expert: Input should be 'none', 'high' or 'low'"):
        TrainConfig.from_yaml(path)


# ---- runs -----------------------------------------------------------------------------------------------------------


def test_a_low_noise_run_trains_transformer_2_and_its_lora_loads_into_it(low_run, wan22_folder):
    config, result, base, reports = low_run
    assert same_weights(base, folder_dit(wan22_folder, "transformer_2"))
    assert not same_weights(base, folder_dit(wan22_folder, "transformer"))
    assert all(1000 * report.sigma < BOUNDARY_T for report in reports) and len(reports) == 4
    assert all(math.isfinite(loss) for loss in result.losses)
    assert result.lora_file == config.output_dir / "svi-film-low_noise.safetensors"
    assert result.diffusers_lora == config.output_dir / "diffusers-low_noise"

    lora = read_lora_file(result.lora_file)
    assert len(lora.pairs) == 20 and any(pair.b.abs().sum() > 0 for pair in lora.pairs.values())
    fused = load_wan_pipeline(wan22_folder, transformer_dtype=torch.float32, text_encoder_dtype=torch.float32)
    before = {key: value.clone() for key, value in fused.transformer_2.state_dict().items()}
    apply_lora(fused.transformer_2, lora)  # checks every pair's module and shapes against the low-noise expert
    changed = [key for key, value in fused.transformer_2.state_dict().items() if not torch.equal(value, before[key])]
    assert changed and all(key.endswith(".weight") for key in changed)

    # The diffusers layout loads into the low-noise expert too, and predicts what the fused file does.
    loaded = load_wan_pipeline(wan22_folder, transformer_dtype=torch.float32, text_encoder_dtype=torch.float32)
    loaded.load_lora_weights(
        result.diffusers_lora, weight_name=DIFFUSERS_WEIGHTS, adapter_name="svi", load_into_transformer_2=True
    )
    generator = torch.Generator().manual_seed(0)
    noisy, condition = torch.randn(1, *LATENT, generator=generator), torch.randn(1, *LATENT, generator=generator)
    model_input = torch.cat([noisy, mask_and_latents(condition)], dim=1)
    text = torch.randn(1, 512, 32, generator=generator)
    with torch.no_grad():
        outputs = [
            predict_velocity(p.transformer_2, model_input, torch.tensor([300.0]), text, None) for p in (fused, loaded)
        ]
    torch.testing.assert_close(outputs[1], outputs[0], rtol=0, atol=1e-5)


def test_training_from_the_cache_alone_loads_the_same_expert(low_run, tmp_path):
    config, result, _, _ = low_run
    cached_only = config.model_copy(
        update={"output_dir": tmp_path / "run", "data": config.data.model_copy(update={"videos": None})}
    )
    assert train(cached_only).losses == result.losses


def test_a_high_noise_run_shares_the_cache_and_trains_transformer(low_run, wan22_folder, tmp_path):
    config, _, _, _ = low_run
    high = config.model_copy(
        update={
            "expert": "high",
            "output_dir": tmp_path / "run",
            "data": config.data.model_copy(update={"videos": None}),
        }
    )
    result, base, reports = trained_with_base(high)
    assert same_weights(base, folder_dit(wan22_folder, "transformer"))
    assert all(1000 * report.sigma >= BOUNDARY_T for report in reports)
    assert (
        result.lora_file.name == "svi-film-high_noise.safetensors"
        and result.diffusers_lora.name == "diffusers-high_noise"
    )


def test_raw_mode_encodes_with_the_pipeline_and_trains_the_chosen_expert(wan22_folder, videos, tmp_path):  # noqa: F811
    config = tiny_config(wan22_folder, tmp_path / "run", {"videos": videos}, expert="high", steps=2)
    result, base, reports = trained_with_base(config)
    assert same_weights(base, folder_dit(wan22_folder, "transformer"))
    assert all(1000 * report.sigma >= BOUNDARY_T for report in reports) and len(result.losses) == 2


def test_an_expert_of_a_one_dit_folder_is_refused_naming_the_folder(tmp_path):
    wan21 = save_tiny_model(tmp_path / "Wan2.1-tiny")
    config = tiny_config(wan21, tmp_path / "run", {"latent_cache": tmp_path / "cache"}, expert="high")
    folder = re.escape(str(tmp_path / "Wan2.1-tiny"))
    with pytest.raises(TrainConfigError, match=rf"expert: high .* but {folder} holds no second"):
        train(config)


def test_a_cache_without_clip_tokens_is_refused_for_wan21(low_run, tmp_path):
    config, _, _, _ = low_run
    wan21 = save_tiny_model(tmp_path / "Wan2.1-tiny")
    config = tiny_config(wan21, tmp_path / "run", {"latent_cache": config.data.latent_cache})
    with pytest.raises(TrainConfigError, match="encoded without CLIP image tokens, but the DiT of .* takes them"):
        train(config)


# ---- loading one expert ---------------------------------------------------------------------------------------------


def test_load_wan_transformer_loads_either_expert_of_either_layout(wan22_folder, tmp_path):
    components = tiny_components(wan22=True)
    original = write_original_wan22_layout(
        tmp_path / "original", components["transformer"], components["transformer_2"], tiny_wan21_vae()
    )
    for folder in (wan22_folder, original):
        for name in ("transformer", "transformer_2"):
            dit = load_wan_transformer(folder, torch.float32, name)
            assert same_weights(dit.state_dict(), components[name].state_dict()) and not dit.training


def test_load_wan_transformer_names_what_the_low_noise_expert_lacks(tmp_path):
    components = tiny_components()
    wan21 = save_tiny_model(tmp_path / "wan21")
    with pytest.raises(ModelFolderError, match=r"Missing: .*wan21/transformer_2/ \(the low-noise expert"):
        load_wan_transformer(wan21, torch.float32, "transformer_2")
    original21 = write_original_layout(tmp_path / "original21", components["transformer"], tiny_wan21_vae())
    with pytest.raises(ModelFolderError, match=r"holds one DiT \(Wan2.1\).*original21/low_noise_model/"):
        load_wan_transformer(original21, torch.float32, "transformer_2")
    wan22 = tiny_components(wan22=True)
    original22 = write_original_wan22_layout(
        tmp_path / "original22", wan22["transformer"], wan22["transformer_2"], tiny_wan21_vae()
    )
    (original22 / "low_noise_model" / "diffusion_pytorch_model-00002-of-00003.safetensors").unlink()
    with pytest.raises(
        ModelFolderError,
        match=r"the low-noise expert in .* Missing: .*low_noise_model/diffusion_pytorch_model-00002-of-00003",
    ):
        load_wan_transformer(original22, torch.float32, "transformer_2")
    assert load_wan_transformer(original22, torch.float32, "transformer") is not None

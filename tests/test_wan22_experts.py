"""Wan2.2-I2V-A14B's two experts: which expert denoises at each step, the one-expert parity anchor, guidance per
expert, no image tokens, and the diffusers-layout model folder (tiny models of the same classes, CPU)."""

import copy
import math
import shutil

import pytest
import torch
from diffusers import WanImageToVideoPipeline, WanTransformer3DModel
from pydantic import ValidationError

from pipeline.request import FilmRequest
from pipeline.synthesize import EngineSpec, loaded_sampler
from svi_model.chain import FilmRenderer
from svi_model.loading import ModelFolderError, load_wan_pipeline
from svi_model.lora_files import apply_lora, read_lora_file
from svi_model.modes import mode_settings
from svi_model.sampler import SVI_EXPERT_BOUNDARY, ClipCondition, ClipSampler
from svi_model.schedule import SVI_SHIFT, SVIFlowMatchScheduler, shifted_sigmas
from svi_model.tiny import save_tiny_model, tiny_components


def high_noise_steps(steps: int, boundary: float, shift: float = SVI_SHIFT) -> int:
    """Steps at or above the boundary, worked out on paper: σ' = s·σ/(1+(s−1)·σ) ≥ b ⇔ σ ≥ b/(s − (s−1)·b), and
    step i has σ = 1 − i/N, so the high-noise expert takes the steps i ≤ N·(1 − b/(s − (s−1)·b))."""
    return math.floor(steps * (1 - boundary / (shift - (shift - 1) * boundary))) + 1


REFERENCE = torch.randint(0, 256, (32, 48, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))


def wan22_pipe(transformer_2=None) -> WanImageToVideoPipeline:
    components = tiny_components(wan22=True)
    if transformer_2 is not None:
        components["transformer_2"] = transformer_2(components)
    components["scheduler"] = SVIFlowMatchScheduler()
    pipe = WanImageToVideoPipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize(
    "steps, boundary, high",
    [(50, 0.875, 21), (6, 0.875, 3), (8, 0.875, 4), (4, 0.875, 2), (50, 0.9, 18), (40, 0.9, 15), (10, 0.5, 9)],
)
def test_the_high_noise_expert_runs_down_to_the_boundary_then_the_low_noise_one(steps, boundary, high):
    assert high_noise_steps(steps, boundary) == high
    sampler = ClipSampler(wan22_pipe(), boundary=boundary)
    assert sampler.experts(steps) == [0] * high + [1] * (steps - high)


def test_the_svi_boundary_is_the_authors_not_the_folders():
    pipe = wan22_pipe()
    assert pipe.config.boundary_ratio == 0.9
    assert ClipSampler(pipe).boundary == SVI_EXPERT_BOUNDARY == 0.875


def condition(pipe: WanImageToVideoPipeline, sampler: ClipSampler) -> ClipCondition:
    reference = torch.randint(0, 256, (32, 48, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    renderer = FilmRenderer(sampler, mode_settings("film", num_frames=9, steps=4), reference, ["a red ball"])
    return renderer.condition(0, None)


def test_two_identical_experts_equal_the_one_expert_loop():
    one = wan22_pipe()
    one.transformer_2 = None
    two = wan22_pipe(transformer_2=lambda components: copy.deepcopy(components["transformer"]))
    single, double = ClipSampler(one), ClipSampler(two)
    assert double.experts(6) == [0, 0, 0, 1, 1, 1]
    a = single.render("a red ball rolls", 42, condition(one, single), steps=6, guidance_scale=5.0)
    b = double.render("a red ball rolls", 42, condition(two, double), steps=6, guidance_scale=5.0)
    assert torch.equal(a.latents, b.latents) and torch.equal(a.frames, b.frames)


def test_each_expert_runs_its_steps_with_its_own_guidance():
    pipe = wan22_pipe()
    sampler = ClipSampler(pipe)
    calls = {"high": 0, "low": 0}
    pipe.transformer.register_forward_hook(lambda *_: calls.__setitem__("high", calls["high"] + 1))
    pipe.transformer_2.register_forward_hook(lambda *_: calls.__setitem__("low", calls["low"] + 1))
    image_tokens = []
    original = pipe.transformer.forward

    def seen(*args, **kwargs):
        image_tokens.append(kwargs["encoder_hidden_states_image"])
        return original(*args, **kwargs)

    pipe.transformer.forward = seen
    sampler.render("a red ball rolls", 42, condition(pipe, sampler), steps=6, guidance_scale=5.0, guidance_scale_2=1.0)
    # 3 high-noise steps with CFG (2 forwards each), 3 low-noise steps without (1 forward each).
    assert calls == {"high": 6, "low": 3}
    assert image_tokens == [None] * 6  # Wan2.2-A14B has no image encoder: no image tokens reach the DiT


def test_a_wan22_folder_loads_with_both_experts_and_no_image_encoder(tmp_path):
    folder = save_tiny_model(tmp_path / "wan22", wan22=True)
    pipe = load_wan_pipeline(folder, transformer_dtype=torch.float32, text_encoder_dtype=torch.float32)
    assert pipe.transformer_2 is not None and pipe.image_encoder is None and pipe.config.boundary_ratio == 0.9
    reference = tiny_components(wan22=True)["transformer_2"].state_dict()
    assert all(torch.equal(value, reference[name]) for name, value in pipe.transformer_2.state_dict().items())

    sampler = loaded_sampler(EngineSpec(model=folder, device="cpu"))
    assert sampler.boundary == 0.875
    assert loaded_sampler(EngineSpec(model=folder, device="cpu", boundary=0.9)).boundary == 0.9


def test_a_wan22_folder_without_its_low_noise_expert_says_so(tmp_path):
    folder = tmp_path / "wan22"
    save_tiny_model(folder, wan22=True)
    shutil.rmtree(folder / "transformer_2")
    with pytest.raises(ModelFolderError, match=r"transformer_2/ \(the low-noise expert"):
        load_wan_pipeline(folder)


def test_a_boundary_changes_the_engines_identity_only_when_given(tmp_path):
    folder = save_tiny_model(tmp_path / "wan22", wan22=True)
    plain = EngineSpec(model=folder, device="cpu").identity()
    assert "boundary" not in plain
    assert EngineSpec(model=folder, device="cpu", boundary=0.9).identity() == {**plain, "boundary": 0.9}


@pytest.mark.parametrize("mode", ["film", "pro"])
def test_a_film_renders_on_the_two_experts(mode, tmp_path):
    pipe = wan22_pipe()
    sampler = ClipSampler(pipe)
    reference = torch.randint(0, 256, (32, 48, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    settings = mode_settings(mode, num_frames=9, steps=4)
    renderer = FilmRenderer(sampler, settings, reference, ["a red ball", "the ball rolls"])
    clips = list(renderer.clips(2))
    assert [k for k, _, _ in clips] == [0, 1]
    assert all(output.frames.shape == (9, 32, 48, 3) for _, output, _ in clips)


# ---------------------------------------------------------------- one SVI LoRA per expert


def expert_with_lora(folder, name: str, lora_file, scale: float) -> dict[str, torch.Tensor]:
    """The expert `name` of the folder as loaded, with `lora_file` fused at `scale` by hand (the expectation)."""
    expert = WanTransformer3DModel.from_pretrained(folder, subfolder=name)
    apply_lora(expert, read_lora_file(lora_file), scale=scale)
    return expert.state_dict()


def test_each_expert_gets_its_own_lora_at_its_own_strength(tmp_path):
    from test_lora_files import random_lora, write_lora

    folder = save_tiny_model(tmp_path / "wan22", wan22=True)
    components = tiny_components(wan22=True)
    high = write_lora(tmp_path / "high.safetensors", random_lora(components["transformer"], seed=1), "no_default")
    low = write_lora(tmp_path / "low.safetensors", random_lora(components["transformer_2"], seed=2), "down_up_alpha")
    spec = EngineSpec(model=folder, device="cpu", lora=high, lora_scale=0.5, lora_2=low, lora_scale_2=1.0)
    pipe = loaded_sampler(spec).pipe
    for name, module, lora, scale in (
        ("transformer", pipe.transformer, high, 0.5),
        ("transformer_2", pipe.transformer_2, low, 1.0),
    ):
        expected = expert_with_lora(folder, name, lora, scale)
        assert all(torch.equal(value, expected[key]) for key, value in module.state_dict().items()), name
    assert spec.identity()["lora_scale_2"] == 1.0 and "lora_2" in spec.identity()


def test_a_two_expert_model_needs_a_lora_for_each_expert(tmp_path):
    from test_lora_files import random_lora, write_lora

    folder = save_tiny_model(tmp_path / "wan22", wan22=True)
    high = write_lora(
        tmp_path / "high.safetensors", random_lora(tiny_components(wan22=True)["transformer"]), "no_default"
    )
    with pytest.raises(ValueError, match="two experts, each with its own SVI LoRA: give both lora .* and lora_2"):
        loaded_sampler(EngineSpec(model=folder, device="cpu", lora=high))
    one_expert = save_tiny_model(tmp_path / "wan21")
    with pytest.raises(ValueError, match="lora_2 .* is for a model with two experts"):
        loaded_sampler(EngineSpec(model=one_expert, device="cpu", lora_2=high))


# ---------------------------------------------------------------- the original Wan2.2 release layout


@pytest.fixture
def original_wan22(tmp_path):
    """A tiny Wan2.2-I2V-A14B in the release's own layout, with the diffusers encoders copied in."""
    from original_layout import tiny_wan21_vae, write_original_wan22_layout

    components = tiny_components(wan22=True)
    encoders = save_tiny_model(tmp_path / "encoders", wan22=True)
    folder = write_original_wan22_layout(
        tmp_path / "Wan2.2-I2V-A14B",
        components["transformer"],
        components["transformer_2"],
        tiny_wan21_vae(),
        encoders_from=tmp_path / "encoders",
    )
    assert encoders
    return folder, components


def test_the_original_wan22_layout_loads_both_experts_exactly(original_wan22):
    folder, components = original_wan22
    assert sorted(p.name for p in (folder / "low_noise_model").glob("*.safetensors"))[0].endswith(
        "-of-00003.safetensors"
    )
    pipe = load_wan_pipeline(folder, transformer_dtype=torch.float32, text_encoder_dtype=torch.float32)
    assert pipe.image_encoder is None and pipe.transformer.config.image_dim is None
    for name in ("transformer", "transformer_2"):
        expected = components[name].state_dict()
        loaded = getattr(pipe, name).state_dict()
        assert loaded.keys() == expected.keys(), name
        assert all(torch.equal(value, expected[key]) for key, value in loaded.items()), name


def test_the_original_wan22_layout_names_what_it_lacks(original_wan22):
    folder, _ = original_wan22
    next((folder / "low_noise_model").glob("diffusion_pytorch_model-00002-*.safetensors")).unlink()
    shutil.rmtree(folder / "text_encoder")
    with pytest.raises(ModelFolderError) as caught:
        load_wan_pipeline(folder)
    message = str(caught.value)
    assert "original Wan release layout" in message
    assert "low_noise_model/diffusion_pytorch_model-00002-of-00003.safetensors (weights shard" in message
    assert f"{folder / 'text_encoder'}/" in message and "image_encoder" not in message


def test_the_low_noise_guidance_reaches_the_sampler_and_keys_only_when_set():
    pipe = wan22_pipe()
    sampler = ClipSampler(pipe)
    seen = []
    real = sampler.render
    sampler.render = lambda *a, **k: seen.append(k["guidance_scale_2"]) or real(*a, **k)
    reference = torch.randint(0, 256, (32, 48, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    settings = mode_settings("pro", num_frames=9, steps=2, guidance_scale_2=1.5)
    FilmRenderer(sampler, settings, reference, ["a red ball"]).render_clip(0, None)
    assert seen == [1.5]
    assert "guidance_scale_2" not in mode_settings("pro").clip_fields()
    assert settings.clip_fields()["guidance_scale_2"] == 1.5


def test_stacked_loras_land_on_each_expert_at_their_strengths_after_the_svi_pair(tmp_path):
    from test_lora_files import random_lora, write_lora

    folder = save_tiny_model(tmp_path / "wan22", wan22=True)
    components = tiny_components(wan22=True)
    high = write_lora(tmp_path / "high.safetensors", random_lora(components["transformer"], seed=1), "no_default")
    low = write_lora(tmp_path / "low.safetensors", random_lora(components["transformer_2"], seed=2), "no_default")
    distill = write_lora(tmp_path / "distill.safetensors", random_lora(components["transformer"], seed=3), "down_up")
    spec = EngineSpec(
        model=folder, device="cpu", lora=high, lora_2=low, stacked_loras=[f"{distill}:0.5:1", f"{distill}:0:0.25"]
    )
    pipe = loaded_sampler(spec).pipe
    for name, svi, strengths in (("transformer", high, [0.5]), ("transformer_2", low, [1.0, 0.25])):
        expected = WanTransformer3DModel.from_pretrained(folder, subfolder=name)
        apply_lora(expected, read_lora_file(svi))
        for strength in strengths:
            apply_lora(expected, read_lora_file(distill), scale=strength)
        loaded = getattr(pipe, name).state_dict()
        assert all(torch.equal(value, loaded[key]) for key, value in expected.state_dict().items()), name
    identity = spec.identity()
    assert identity["stacked_loras"][0][1:] == [0.5, 1.0] and identity["stacked_loras"][1][1:] == [0.0, 0.25]
    assert "stacked_loras" not in EngineSpec(model=folder, device="cpu", lora=high, lora_2=low).identity()


def test_a_stacked_lora_that_does_not_parse_is_named():
    with pytest.raises(ValidationError, match="stacked LoRA ':0.5': write FILE, FILE:STRENGTH or FILE:HIGH:LOW"):
        EngineSpec(model="m", stacked_loras=[":0.5"])


# ---------------------------------------------------------------- speed tiers


def counted_forwards(pipe) -> dict[str, int]:
    calls = {"high": 0, "low": 0}
    pipe.transformer.register_forward_hook(lambda *_: calls.__setitem__("high", calls["high"] + 1))
    pipe.transformer_2.register_forward_hook(lambda *_: calls.__setitem__("low", calls["low"] + 1))
    return calls


@pytest.mark.parametrize("guidance, forwards_per_step", [(None, 2), (1.0, 1)])
def test_the_lightning_tier_takes_its_recipes_steps_split_and_shift(guidance, forwards_per_step):
    request = FilmRequest(speed="lightning", **({} if guidance is None else {"guidance_scale": guidance}))
    settings = request.settings()
    assert (settings.steps, settings.high_noise_steps, settings.shift) == (6, 3, 8.0)
    assert settings.guidance_scale == (1.5 if guidance is None else guidance)
    pipe = wan22_pipe()
    sampler = ClipSampler(pipe)
    calls = counted_forwards(pipe)
    renderer = FilmRenderer(sampler, settings.model_copy(update={"num_frames": 9}), REFERENCE, ["a red ball"])
    renderer.render_clip(0, None)
    assert calls == {"high": 3 * forwards_per_step, "low": 3 * forwards_per_step}
    scheduler = sampler.scheduler(8.0)
    scheduler.set_timesteps(6)
    expected = (shifted_sigmas(6, shift=8.0)[:6] * 1000).float()
    torch.testing.assert_close(scheduler.timesteps, expected)


def test_the_quality_tier_and_unset_recipe_fields_keep_clip_keys():
    quality = FilmRequest().settings()
    assert quality.shift is None and quality.high_noise_steps is None
    assert not {"shift", "high_noise_steps"} & set(quality.clip_fields())
    assert FilmRequest(speed="lightning").settings().clip_fields()["shift"] == 8.0


def test_with_swapped_experts_only_the_denoising_one_is_moved_to_the_device():
    pipe = wan22_pipe()
    moves = []
    for name in ("transformer", "transformer_2"):
        module = getattr(pipe, name)
        real_to = module.to
        module.to = lambda device, name=name, real_to=real_to: moves.append((name, str(device))) or real_to(device)
    sampler = ClipSampler(pipe, swap_experts=True)
    settings = mode_settings("pro", num_frames=9, steps=6)
    renderer = FilmRenderer(sampler, settings, REFERENCE, ["a red ball"])
    list(renderer.clips(2))
    # Per clip: the low-noise expert off the device and the high-noise one on it, then the other way at step 3.
    one_clip = [("transformer_2", "cpu"), ("transformer", "cpu"), ("transformer", "cpu"), ("transformer_2", "cpu")]
    assert moves == one_clip * 2


def test_experts_offload_needs_a_gpu_like_the_other_offloads(tmp_path):
    with pytest.raises(ValueError, match="needs a GPU"):
        load_wan_pipeline(save_tiny_model(tmp_path / "wan22", wan22=True), offload="experts")

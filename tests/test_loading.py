"""Loading model folders of both Wan2.1 layouts, offline, with errors that name what is missing."""

import shutil
import socket
from pathlib import Path

import pytest
import torch
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers, convert_wan_vae_to_diffusers
from original_layout import original_transformer_name, original_vae_name, tiny_wan21_vae, write_original_layout

from svi_model.loading import ModelFolderError, load_wan_pipeline, load_wan_transformer
from svi_model.schedule import SVIFlowMatchScheduler
from svi_model.tiny import save_tiny_model, tiny_components

FP32 = {"transformer_dtype": torch.float32, "text_encoder_dtype": torch.float32}
WEIGHTED = ("transformer", "vae", "text_encoder", "image_encoder")


@pytest.fixture(scope="module")
def tiny() -> dict:
    return tiny_components()


@pytest.fixture(scope="module")
def diffusers_folder(tmp_path_factory) -> Path:
    return Path(save_tiny_model(tmp_path_factory.mktemp("diffusers") / "model"))


@pytest.fixture(scope="module")
def wan21_vae():
    return tiny_wan21_vae()


@pytest.fixture(scope="module")
def bare_original_folder(tmp_path_factory, tiny, wan21_vae) -> Path:
    """Original layout with only the release files: no diffusers encoder folders."""
    return write_original_layout(tmp_path_factory.mktemp("original") / "bare", tiny["transformer"], wan21_vae)


@pytest.fixture(scope="module")
def original_folder(tmp_path_factory, tiny, wan21_vae, diffusers_folder) -> Path:
    folder = tmp_path_factory.mktemp("original") / "full"
    return write_original_layout(folder, tiny["transformer"], wan21_vae, encoders_from=diffusers_folder)


def copy_of(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / folder.name))


def assert_same_weights(module: torch.nn.Module, expected: torch.nn.Module) -> None:
    """Every tensor equal to the reference's, cast to the loaded tensor's dtype."""
    state, reference = module.state_dict(), expected.state_dict()
    assert state.keys() == reference.keys()
    for name, tensor in state.items():
        assert torch.equal(tensor, reference[name].to(tensor.dtype)), name


def test_reverse_name_maps_invert_diffusers_converters(tiny, wan21_vae):
    transformer = tiny["transformer"].state_dict()
    original = {original_transformer_name(k): v for k, v in transformer.items()}
    assert convert_wan_transformer_to_diffusers(original).keys() == transformer.keys()
    vae = wan21_vae.state_dict()
    assert convert_wan_vae_to_diffusers({original_vae_name(k): v for k, v in vae.items()}).keys() == vae.keys()


def test_diffusers_layout_loads_exact_weights(diffusers_folder, tiny):
    pipe = load_wan_pipeline(diffusers_folder, **FP32)
    for name in WEIGHTED:
        assert_same_weights(getattr(pipe, name), tiny[name])
        assert not getattr(pipe, name).training
    assert type(pipe.scheduler) is SVIFlowMatchScheduler
    assert pipe.tokenizer("a cat").input_ids == tiny["tokenizer"]("a cat").input_ids
    assert pipe.image_processor.crop_size == tiny["image_processor"].crop_size


def test_dtypes_follow_arguments(diffusers_folder, tiny):
    pipe = load_wan_pipeline(diffusers_folder)
    assert pipe.transformer.blocks[0].attn1.to_q.weight.dtype == torch.bfloat16
    # diffusers keeps the time embedding and modulation tables in float32 under bfloat16.
    assert pipe.transformer.scale_shift_table.dtype == torch.float32
    assert pipe.text_encoder.dtype == torch.bfloat16
    assert pipe.vae.dtype == pipe.image_encoder.dtype == torch.float32
    assert_same_weights(pipe.transformer, tiny["transformer"])
    half_vae = load_wan_pipeline(diffusers_folder, vae_dtype=torch.bfloat16, image_encoder_dtype=torch.float16)
    assert half_vae.vae.dtype == torch.bfloat16 and half_vae.image_encoder.dtype == torch.float16


def test_partial_folder_names_every_missing_part(diffusers_folder, tmp_path):
    folder = copy_of(diffusers_folder, tmp_path)
    shutil.rmtree(folder / "vae")
    shutil.rmtree(folder / "tokenizer")
    with pytest.raises(ModelFolderError) as error:
        load_wan_pipeline(folder)
    message = str(error.value)
    assert f"{folder / 'vae'}/ (diffusers AutoencoderKLWan folder" in message
    assert f"{folder / 'tokenizer'}/ (UMT5 tokenizer folder" in message
    assert "transformer/" not in message and "Nothing is downloaded" in message
    assert "\n" not in message  # the CLI prints errors as one line


def test_missing_weights_file_is_named(diffusers_folder, tmp_path):
    folder = copy_of(diffusers_folder, tmp_path)
    (folder / "text_encoder" / "model.safetensors").unlink()
    with pytest.raises(ModelFolderError, match=r"text_encoder/\*\.safetensors \(transformers UMT5EncoderModel folder"):
        load_wan_pipeline(folder)


def test_missing_folder_names_the_path(tmp_path):
    with pytest.raises(ModelFolderError, match=str(tmp_path / "nowhere")):
        load_wan_pipeline(tmp_path / "nowhere")


def test_folder_of_neither_layout_lists_both(tmp_path):
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(ModelFolderError) as error:
        load_wan_pipeline(tmp_path)
    message = str(error.value)
    assert "neither layout" in message and "Wan2.1_VAE.pth (original VAE checkpoint)" in message
    assert f"{tmp_path / 'transformer'}/" in message


def test_original_layout_loads_exact_weights(original_folder, tiny, wan21_vae):
    assert len(list(original_folder.glob("diffusion_pytorch_model-*-of-00003.safetensors"))) == 3
    pipe = load_wan_pipeline(original_folder, **FP32)
    assert_same_weights(pipe.transformer, tiny["transformer"])
    assert_same_weights(pipe.vae, wan21_vae)
    for name in ("text_encoder", "image_encoder"):
        assert_same_weights(getattr(pipe, name), tiny[name])
    assert pipe.transformer.config.image_dim == tiny["transformer"].config.image_dim
    assert type(pipe.scheduler) is SVIFlowMatchScheduler
    assert not pipe.transformer.training and not pipe.vae.training


def test_original_layout_dtypes_match_from_pretrained(original_folder, diffusers_folder):
    original, diffusers = load_wan_pipeline(original_folder), load_wan_pipeline(diffusers_folder)
    dtypes = {k: v.dtype for k, v in diffusers.transformer.state_dict().items()}
    assert {k: v.dtype for k, v in original.transformer.state_dict().items()} == dtypes
    assert original.transformer.device.type == "cpu"


def test_original_layout_without_encoders_explains_t5_and_clip(bare_original_folder):
    with pytest.raises(ModelFolderError) as error:
        load_wan_pipeline(bare_original_folder)
    message = str(error.value)
    for name in ("text_encoder", "tokenizer", "image_encoder"):
        assert f"{bare_original_folder / name}/" in message
    assert "models_t5_umt5-xxl-enc-bf16.pth" in message and "cannot be loaded by diffusers" in message
    assert "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers" in message and "components_folder" in message


def test_original_layout_takes_encoders_from_components_folder(bare_original_folder, diffusers_folder, tiny):
    pipe = load_wan_pipeline(bare_original_folder, components_folder=diffusers_folder, **FP32)
    assert_same_weights(pipe.transformer, tiny["transformer"])
    assert_same_weights(pipe.text_encoder, tiny["text_encoder"])
    assert pipe.image_processor.crop_size == tiny["image_processor"].crop_size


def test_missing_shard_and_vae_are_all_listed(original_folder, tmp_path):
    folder = copy_of(original_folder, tmp_path)
    (folder / "diffusion_pytorch_model-00002-of-00003.safetensors").unlink()
    (folder / "Wan2.1_VAE.pth").unlink()
    with pytest.raises(ModelFolderError) as error:
        load_wan_pipeline(folder)
    message = str(error.value)
    assert "diffusion_pytorch_model-00002-of-00003.safetensors (weights shard" in message
    assert "Wan2.1_VAE.pth (original VAE checkpoint)" in message


@pytest.mark.parametrize("damaged", ["diffusion_pytorch_model-00003-of-00003.safetensors", "Wan2.1_VAE.pth"])
def test_truncated_file_is_named(original_folder, tmp_path, damaged):
    folder = copy_of(original_folder, tmp_path)
    path = folder / damaged
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ModelFolderError, match=f"could not read {path}"):
        load_wan_pipeline(folder)


def test_offload_on_cpu_is_refused_before_loading(tmp_path):
    for offload in ("model", "group"):
        with pytest.raises(ValueError, match="needs a GPU; use --offload none on CPU"):
            load_wan_pipeline(tmp_path / "never-read", offload=offload)


@pytest.mark.parametrize("layout", ["diffusers", "original"])
def test_loading_opens_no_connection(monkeypatch, layout, diffusers_folder, original_folder):
    def refuse(*args, **kwargs):
        raise AssertionError("loading tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    load_wan_pipeline(diffusers_folder if layout == "diffusers" else original_folder)


@pytest.mark.parametrize("layout", ["diffusers", "bare original"])
def test_the_dit_alone_loads_without_the_encoders(layout, diffusers_folder, bare_original_folder, tiny):
    folder = diffusers_folder if layout == "diffusers" else bare_original_folder
    transformer = load_wan_transformer(folder, torch.float32)
    assert_same_weights(transformer, tiny["transformer"])
    assert not transformer.training

"""The original Wan release layout's DiT and VAE (safetensors shards under Wan's own module names, `Wan2.1_VAE.pth`),
converted by diffusers' own converters into its classes without holding the weights twice."""

from pathlib import Path

import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers, convert_wan_vae_to_diffusers
from safetensors.torch import load_file

from .model_files import ModelFolderError, indexed_shards, read_json, reading

ORIGINAL_DIT_INDEX = "diffusion_pytorch_model.safetensors.index.json"
ORIGINAL_VAE = "Wan2.1_VAE.pth"
# Wan2.2-I2V-A14B's original release keeps each expert's shards, index and config.json in its own folder.
ORIGINAL_EXPERTS = ("high_noise_model", "low_noise_model")
# Wan2.1-I2V-14B's original config.json, for folders that lack one; text_dim is a WanModel default it omits.
WAN21_I2V_14B_CONFIG = {
    "model_type": "i2v",
    "dim": 5120,
    "ffn_dim": 13824,
    "freq_dim": 256,
    "in_dim": 36,
    "out_dim": 16,
    "num_heads": 40,
    "num_layers": 40,
    "eps": 1e-6,
    "text_dim": 4096,
}


def _cast(state: dict[str, torch.Tensor], dtype: torch.dtype, keep_in_fp32: list[str] | None) -> dict:
    """Cast floating tensors to `dtype`, keeping modules named in `keep_in_fp32` at float32 as from_pretrained does."""

    def target(name: str) -> torch.dtype:
        return torch.float32 if keep_in_fp32 and set(keep_in_fp32) & set(name.split(".")) else dtype

    return {k: v.to(target(k)) if v.is_floating_point() else v for k, v in state.items()}


def _model_from_state(model_class, config: dict, state: dict, source: Path) -> torch.nn.Module:
    """A `model_class(**config)` holding exactly `state`; built on the meta device so no weights exist twice."""
    # Buffers stay real: the rope tables are not in any checkpoint.
    with init_empty_weights(include_buffers=False):
        model = model_class.from_config(config)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as error:
        raise ModelFolderError(f"the weights in {source} do not fit {model_class.__name__}: {error}") from error
    return model


def transformer_config_of_original(original: dict) -> dict:
    """diffusers `WanTransformer3DModel` config for an original Wan `config.json` (`{}`: Wan2.1-I2V-14B's), less
    `image_dim`, which Wan does not configure. Keys left out take diffusers' defaults, which are Wan's."""
    if original.get("model_type", "i2v") != "i2v":
        raise ModelFolderError(
            f"the DiT is a {original['model_type']!r} model; SVI needs the image-to-video one (model_type 'i2v')"
        )
    config = WAN21_I2V_14B_CONFIG | original
    return {
        "num_attention_heads": config["num_heads"],
        "attention_head_dim": config["dim"] // config["num_heads"],
        "in_channels": config["in_dim"],
        "out_channels": config["out_dim"],
        "text_dim": config["text_dim"],
        "freq_dim": config["freq_dim"],
        "ffn_dim": config["ffn_dim"],
        "num_layers": config["num_layers"],
        "eps": config["eps"],
        "added_kv_proj_dim": config["dim"],
    }


def original_transformer(folder: Path, dtype: torch.dtype) -> WanTransformer3DModel:
    """The DiT of an original-layout folder: every shard of its index, renamed by diffusers' own converter."""
    original = read_json(folder / "config.json") if (folder / "config.json").is_file() else {}
    config = transformer_config_of_original(original)
    index = folder / ORIGINAL_DIT_INDEX
    state = {}
    for shard in indexed_shards(index):
        with reading(folder / shard):
            tensors = load_file(folder / shard)
        # Cast shard by shard, so a float32 release never sits in memory whole next to its bfloat16 copy.
        converted = convert_wan_transformer_to_diffusers(tensors)
        state |= _cast(converted, dtype, WanTransformer3DModel._keep_in_fp32_modules)
    # Wan hard-codes CLIP's width (1280) instead of configuring it; the checkpoint says what it really is. Wan2.2-A14B's
    # experts have no image embedding at all (no img_emb, k_img, v_img): they take no image tokens.
    image_norm = state.get("condition_embedder.image_embedder.norm1.weight")
    if image_norm is None:
        config["added_kv_proj_dim"] = None
    else:
        config["image_dim"] = image_norm.shape[0]
    return _model_from_state(WanTransformer3DModel, config, state, index)


def original_vae(folder: Path, dtype: torch.dtype) -> AutoencoderKLWan:
    """`Wan2.1_VAE.pth` converted by diffusers; config from `vae/config.json` if present, else Wan2.1's default."""
    path = folder / ORIGINAL_VAE
    with reading(path):
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    config_folder = folder / "vae"
    config = AutoencoderKLWan.load_config(config_folder) if (config_folder / "config.json").is_file() else {}
    state = _cast(convert_wan_vae_to_diffusers(checkpoint), dtype, AutoencoderKLWan._keep_in_fp32_modules)
    return _model_from_state(AutoencoderKLWan, config, state, path)

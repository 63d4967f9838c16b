"""Test helper: write tiny models in the original Wan2.1 release layout (Wan-AI/Wan2.1-I2V-14B-480P).

The renames here are the inverse of diffusers' `convert_wan_transformer_to_diffusers` and
`convert_wan_vae_to_diffusers` (tests check the round trip), so a folder written here exercises the real
single-file conversion path of `svi_model.loading` without the 80 GB download.
"""

import json
import re
import shutil
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from safetensors.torch import save_file

# diffusers name -> original name, for whole dot-separated segments inside `blocks.N.`.
_BLOCK_SEGMENTS = [
    ("attn1.", "self_attn."),
    ("attn2.", "cross_attn."),
    ("to_out.0.", "o."),
    ("to_q.", "q."),
    ("to_k.", "k."),
    ("to_v.", "v."),
    ("add_k_proj.", "k_img."),
    ("add_v_proj.", "v_img."),
    ("norm_added_k.", "norm_k_img."),
    ("ffn.net.0.proj.", "ffn.0."),
    ("ffn.net.2.", "ffn.2."),
    # The affine cross-attention LayerNorm is `norm3` in Wan and `norm2` in diffusers (the others hold no weights).
    ("norm2.", "norm3."),
]
# diffusers prefix -> original prefix, outside the blocks.
_TOP_LEVEL_PREFIXES = [
    ("condition_embedder.time_embedder.linear_1.", "time_embedding.0."),
    ("condition_embedder.time_embedder.linear_2.", "time_embedding.2."),
    ("condition_embedder.text_embedder.linear_1.", "text_embedding.0."),
    ("condition_embedder.text_embedder.linear_2.", "text_embedding.2."),
    ("condition_embedder.time_proj.", "time_projection.1."),
    ("condition_embedder.image_embedder.norm1.", "img_emb.proj.0."),
    ("condition_embedder.image_embedder.ff.net.0.proj.", "img_emb.proj.1."),
    ("condition_embedder.image_embedder.ff.net.2.", "img_emb.proj.3."),
    ("condition_embedder.image_embedder.norm2.", "img_emb.proj.4."),
    ("proj_out.", "head.head."),
    ("patch_embedding.", "patch_embedding."),
]


def original_transformer_name(name: str) -> str:
    """The original Wan module name of a diffusers `WanTransformer3DModel` state-dict key."""
    if name == "scale_shift_table":
        return "head.modulation"
    block = re.match(r"(blocks\.\d+\.)(.*)", name)
    if block:
        prefix, rest = block.groups()
        if rest == "scale_shift_table":
            return prefix + "modulation"
        for diffusers_segment, original_segment in _BLOCK_SEGMENTS:
            rest = re.sub(rf"(^|\.){re.escape(diffusers_segment)}", rf"\g<1>{original_segment}", rest)
        return prefix + rest
    for diffusers_prefix, original_prefix in _TOP_LEVEL_PREFIXES:
        if name.startswith(diffusers_prefix):
            return original_prefix + name[len(diffusers_prefix) :]
    raise KeyError(f"no original Wan name known for transformer key {name!r}")


def original_vae_name(name: str) -> str:
    """The original Wan2.1 VAE name of a diffusers `AutoencoderKLWan` key (Wan2.1 topology: 4 levels, 2 res blocks)."""
    resnet = {"norm1.": "residual.0.", "conv1.": "residual.2.", "norm2.": "residual.3.", "conv2.": "residual.6."}
    resnet["conv_shortcut."] = "shortcut."

    def residual(prefix: str, rest: str) -> str:
        for diffusers_part, original_part in resnet.items():
            if rest.startswith(diffusers_part):
                return prefix + original_part + rest[len(diffusers_part) :]
        return prefix + rest  # WanResample layers keep their names (resample.1, time_conv)

    fixed = {"quant_conv.": "conv1.", "post_quant_conv.": "conv2."}
    for side in ("encoder", "decoder"):
        fixed |= {f"{side}.conv_in.": f"{side}.conv1.", f"{side}.norm_out.": f"{side}.head.0."}
        fixed |= {f"{side}.conv_out.": f"{side}.head.2.", f"{side}.mid_block.attentions.0.": f"{side}.middle.1."}
    for diffusers_prefix, original_prefix in fixed.items():
        if name.startswith(diffusers_prefix):
            return original_prefix + name[len(diffusers_prefix) :]
    if match := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d)\.(.*)", name):
        side, index, rest = match.groups()
        return residual(f"{side}.middle.{2 * int(index)}.", rest)
    if match := re.match(r"encoder\.down_blocks\.(\d+)\.(.*)", name):
        index, rest = match.groups()
        return residual(f"encoder.downsamples.{index}.", rest)
    # Wan's decoder is one flat list: per level 3 residual blocks then (except the last level) the upsampler.
    if match := re.match(r"decoder\.up_blocks\.(\d)\.resnets\.(\d)\.(.*)", name):
        level, index, rest = match.groups()
        return residual(f"decoder.upsamples.{4 * int(level) + int(index)}.", rest)
    if match := re.match(r"decoder\.up_blocks\.(\d)\.upsamplers\.0\.(.*)", name):
        level, rest = match.groups()
        return f"decoder.upsamples.{4 * int(level) + 3}.{rest}"
    raise KeyError(f"no original Wan name known for VAE key {name!r}")


def tiny_wan21_vae(seed: int = 0) -> AutoencoderKLWan:
    """A random VAE with the Wan2.1 topology (dim_mult 1,2,4,4 and 2 res blocks) at base width 4.

    `svi_model.tiny`'s VAE has 1 res block per level, which diffusers' `convert_wan_vae_to_diffusers` cannot map:
    the converter hard-codes the real decoder's flat indices (0-2, 4-6, 8-10, 12-14 residual; 3, 7, 11 upsample).
    """
    torch.manual_seed(seed)
    return AutoencoderKLWan(base_dim=4, z_dim=16).eval()


def original_transformer_config(transformer: WanTransformer3DModel) -> dict:
    """The original Wan `config.json` describing a diffusers I2V transformer."""
    config = transformer.config
    return {
        "_class_name": "WanModel",
        "model_type": "i2v",
        "dim": config.num_attention_heads * config.attention_head_dim,
        "ffn_dim": config.ffn_dim,
        "freq_dim": config.freq_dim,
        "in_dim": config.in_channels,
        "out_dim": config.out_channels,
        "num_heads": config.num_attention_heads,
        "num_layers": config.num_layers,
        "text_dim": config.text_dim,
        "text_len": 512,
        "eps": config.eps,
    }


def write_original_dit(folder: Path, transformer: WanTransformer3DModel, shards: int = 3) -> None:
    """One DiT as the release writes it: safetensors shards under Wan's names, their index, and config.json."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {original_transformer_name(k): v.contiguous() for k, v in transformer.state_dict().items()}
    names = list(state)
    weight_map = {}
    for index in range(shards):
        shard = f"diffusion_pytorch_model-{index + 1:05d}-of-{shards:05d}.safetensors"
        part = names[index::shards]
        save_file({name: state[name] for name in part}, str(folder / shard))
        weight_map |= dict.fromkeys(part, shard)
    total = sum(t.numel() * t.element_size() for t in state.values())
    index_file = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index_file, indent=2))
    (folder / "config.json").write_text(json.dumps(original_transformer_config(transformer), indent=2))


def write_original_vae(folder: Path, vae: AutoencoderKLWan) -> None:
    """`Wan2.1_VAE.pth` under Wan's names, and the diffusers `vae/config.json` (a tiny VAE is not the default)."""
    torch.save({original_vae_name(k): v for k, v in vae.state_dict().items()}, folder / "Wan2.1_VAE.pth")
    vae.save_config(folder / "vae")


def write_original_wan22_layout(
    folder: Path, high: WanTransformer3DModel, low: WanTransformer3DModel, vae, encoders_from: Path | None = None
) -> Path:
    """Write `folder` like the Wan2.2-I2V-A14B release: `high_noise_model/` and `low_noise_model/` (each a sharded DiT
    with its index and config.json), `Wan2.1_VAE.pth`, the T5 `.pth` (an empty placeholder), and no CLIP file.
    With `encoders_from` its `text_encoder/` and `tokenizer/` are copied in."""
    write_original_dit(folder / "high_noise_model", high)
    write_original_dit(folder / "low_noise_model", low)
    write_original_vae(folder, vae)
    (folder / "models_t5_umt5-xxl-enc-bf16.pth").touch()
    if encoders_from is not None:
        for name in ("text_encoder", "tokenizer"):
            shutil.copytree(encoders_from / name, folder / name)
    return folder


def write_original_layout(
    folder: Path,
    transformer: WanTransformer3DModel,
    vae: AutoencoderKLWan,
    shards: int = 3,
    encoders_from: Path | None = None,
) -> Path:
    """Write `folder` like the Wan2.1 release: sharded DiT + index, config.json, Wan2.1_VAE.pth, T5/CLIP .pth.

    The T5/CLIP `.pth` files are empty placeholders (no loader reads them). The VAE's diffusers `vae/config.json`
    is written too, because a tiny VAE differs from the default (Wan2.1) config. With `encoders_from` (a
    diffusers-layout folder) its `text_encoder/`, `tokenizer/`, `image_encoder/`, `image_processor/` are copied in.
    """
    folder.mkdir(parents=True, exist_ok=True)
    write_original_dit(folder, transformer, shards)
    write_original_vae(folder, vae)
    for placeholder in ("models_t5_umt5-xxl-enc-bf16.pth", "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"):
        (folder / placeholder).touch()
    if encoders_from is not None:
        for name in ("text_encoder", "tokenizer", "image_encoder", "image_processor"):
            shutil.copytree(encoders_from / name, folder / name)
    return folder

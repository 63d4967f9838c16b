"""Load a local Wan2.1-I2V-14B model folder into a `WanImageToVideoPipeline`, offline, in either release layout.

* diffusers layout (Wan-AI/Wan2.1-I2V-14B-480P-Diffusers): `transformer/`, `vae/`, `text_encoder/`, `tokenizer/`,
  `image_encoder/`, `image_processor/`, `model_index.json`.
* original layout (Wan-AI/Wan2.1-I2V-14B-480P): the DiT as safetensors shards + index under Wan's own module names,
  `config.json`, `Wan2.1_VAE.pth`. diffusers converts only the DiT and the VAE from these; the UMT5 and CLIP `.pth`
  files have no converter, so the diffusers-layout encoder folders must sit beside them or in `components_folder`.

The pipeline is only a container of components: the engine calls its encoders, transformer and VAE itself, and
samples with `SVIFlowMatchScheduler` whatever scheduler the folder ships. Nothing is ever downloaded.
"""

import os
from collections.abc import Callable

# huggingface_hub reads this once, at import; set it before diffusers/transformers pull it in.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, WanImageToVideoPipeline, WanTransformer3DModel
from transformers import AutoTokenizer, CLIPImageProcessor, CLIPVisionModel, UMT5EncoderModel

from .model_files import NOTHING_DOWNLOADED, ModelFolderError, indexed_shards, read_json, reading
from .original_checkpoints import (
    ORIGINAL_DIT_INDEX,
    ORIGINAL_EXPERTS,
    ORIGINAL_VAE,
    original_transformer,
    original_vae,
)
from .schedule import SVIFlowMatchScheduler

OFFLOAD_MODES = ("none", "model", "group", "experts")
LAYOUT_NAMES = {
    "diffusers": "diffusers layout (Wan-AI/Wan2.1-I2V-14B-480P-Diffusers, Wan-AI/Wan2.2-I2V-A14B-Diffusers)",
    "original": "original Wan release layout (Wan-AI/Wan2.1-I2V-14B-480P, Wan-AI/Wan2.2-I2V-A14B)",
}

# Component subfolders both layouts may hold, with what each one is (for error messages).
ENCODER_PARTS = {
    "text_encoder": "transformers UMT5EncoderModel folder: config.json + weights",
    "tokenizer": "UMT5 tokenizer folder: tokenizer_config.json + tokenizer files",
    "image_encoder": "transformers CLIPVisionModel folder: config.json + weights",
}
DIFFUSERS_PARTS = {
    "transformer": "diffusers WanTransformer3DModel folder: config.json + weights",
    "vae": "diffusers AutoencoderKLWan folder: config.json + weights",
} | ENCODER_PARTS
# Wan2.2-I2V-A14B's second expert (low noise); its folder says so in model_index.json, with its boundary_ratio.
LOW_NOISE_EXPERT = {"transformer_2": "the low-noise expert: diffusers WanTransformer3DModel folder"}
ORIGINAL_T5 = "models_t5_umt5-xxl-enc-bf16.pth"
ORIGINAL_CLIP = "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"
ORIGINAL_FILES = {
    ORIGINAL_DIT_INDEX: "index of the original DiT safetensors shards",
    ORIGINAL_VAE: "original VAE checkpoint",
}
# Wan resizes the reference to CLIP's 224x224 without cropping.
DEFAULT_IMAGE_PROCESSOR = {"size": {"height": 224, "width": 224}, "do_center_crop": False}

ENCODERS_EXPLAINED = (
    f"The original release's {ORIGINAL_T5} and {ORIGINAL_CLIP} cannot be loaded by diffusers (it has no converter "
    "for them): put the diffusers-layout text_encoder/, tokenizer/ and image_encoder/ folders of "
    "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers into the model folder, or pass components_folder= a folder holding them."
)
# Wan2.2-A14B has no image encoder (and no CLIP file): only the text encoder needs the diffusers release.
WAN22_ENCODERS_EXPLAINED = (
    f"The original release's {ORIGINAL_T5} cannot be loaded by diffusers (it has no converter for it): put the "
    "diffusers-layout text_encoder/ and tokenizer/ folders of Wan-AI/Wan2.2-I2V-A14B-Diffusers into the model "
    "folder, or pass components_folder= a folder holding them."
)


# ---- what a folder holds (cheap checks, before anything heavy is read) ----------------------------------------------


def _missing_shards(index: Path) -> list[str]:
    """`path (what)` of every shard listed in a safetensors index that is not a file beside it."""
    absent = [index.parent / shard for shard in indexed_shards(index) if not (index.parent / shard).is_file()]
    return [f"{path} (weights shard listed in {index.name})" for path in absent]


def _missing_in_part(part: Path, what: str) -> list[str]:
    """`path (what)` of what a component folder lacks: its config, its weights, or shards its index lists."""
    if part.name == "tokenizer":
        return [] if (part / "tokenizer_config.json").is_file() else [f"{part / 'tokenizer_config.json'} ({what})"]
    missing = [] if (part / "config.json").is_file() else [f"{part / 'config.json'} ({what})"]
    indexes = sorted(part.glob("*.safetensors.index.json")) + sorted(part.glob("*.bin.index.json"))
    if indexes:
        missing += _missing_shards(indexes[0])
    elif not any(part.glob("*.safetensors")) and not any(part.glob("*.bin")):
        missing.append(f"{part}/*.safetensors ({what})")
    return missing


def _part_root(name: str, folder: Path, components_folder: Path | None) -> Path:
    """The folder whose `name/` subfolder to load: the model folder's own, else the components folder's."""
    if (folder / name).is_dir() or components_folder is None:
        return folder
    return components_folder


def _missing_parts(parts: dict[str, str], folder: Path, components_folder: Path | None) -> list[str]:
    """`path (what)` of each component subfolder of `parts` that is absent or lacks files it needs."""
    missing = []
    for name, what in parts.items():
        part = _part_root(name, folder, components_folder) / name
        if not part.is_dir():
            where = f" or {components_folder / name}/" if components_folder and name in ENCODER_PARTS else ""
            missing.append(f"{folder / name}/{where} ({what})")
        else:
            missing += _missing_in_part(part, what)
    return missing


def _original_dit_folders(folder: Path) -> dict[str, Path]:
    """Where an original-layout folder keeps each DiT: Wan2.2-A14B's experts in `high_noise_model/` and
    `low_noise_model/` (as `transformer` and `transformer_2`), Wan2.1's one DiT in the folder itself."""
    experts = dict(zip(("transformer", "transformer_2"), (folder / name for name in ORIGINAL_EXPERTS), strict=True))
    return experts if any(path.is_dir() for path in experts.values()) else {"transformer": folder}


def _original_parts(folder: Path) -> dict[str, str]:
    """The components an original-layout folder gives: its DiT(s) and VAE, and the encoders it needs beside them
    (Wan2.2-A14B has no image encoder)."""
    if "transformer_2" in _original_dit_folders(folder):
        return {name: what for name, what in DIFFUSERS_PARTS.items() if name != "image_encoder"} | LOW_NOISE_EXPERT
    return DIFFUSERS_PARTS


def _missing_original_files(folder: Path) -> list[str]:
    missing = [] if (folder / ORIGINAL_VAE).is_file() else [f"{folder / ORIGINAL_VAE} ({ORIGINAL_FILES[ORIGINAL_VAE]})"]
    for dit in _original_dit_folders(folder).values():
        index = dit / ORIGINAL_DIT_INDEX
        missing += _missing_shards(index) if index.is_file() else [f"{index} ({ORIGINAL_FILES[ORIGINAL_DIT_INDEX]})"]
    return missing


def _is_original_layout(folder: Path) -> bool:
    markers = (ORIGINAL_DIT_INDEX, ORIGINAL_VAE, ORIGINAL_T5, ORIGINAL_CLIP)
    return (
        any((folder / m).is_file() for m in markers)
        or any(folder.glob("diffusion_pytorch_model-*-of-*"))
        or any((folder / name).is_dir() for name in ORIGINAL_EXPERTS)
    )


def _listed(items: list[str]) -> str:
    # One line, so a command line can print the whole error as a single "error: ..." line.
    return "; ".join(items)


def _not_a_model_folder(folder: Path) -> ModelFolderError:
    diffusers_needs = [f"{folder / name}/ ({what})" for name, what in DIFFUSERS_PARTS.items()]
    original_needs = [f"{folder / name} ({what})" for name, what in ORIGINAL_FILES.items()]
    original_needs += ["the DiT shards its index lists", "text_encoder/, tokenizer/, image_encoder/ as above"]
    return ModelFolderError(
        f"{folder} is a Wan2.1-I2V model folder of neither layout. The {LAYOUT_NAMES['diffusers']} needs: "
        f"{_listed(diffusers_needs)}. The {LAYOUT_NAMES['original']} needs: {_listed(original_needs)}. "
        f"{ENCODERS_EXPLAINED} {NOTHING_DOWNLOADED}"
    )


def _model_index(folder: Path) -> dict:
    """The folder's `model_index.json` ({} when it has none)."""
    return read_json(folder / "model_index.json") if (folder / "model_index.json").is_file() else {}


def _diffusers_parts(folder: Path) -> dict[str, str]:
    """The component folders a diffusers-layout folder must hold: Wan2.1's, plus the low-noise expert where the
    model index lists one, less a component it lists as absent (Wan2.2-A14B has no image encoder)."""
    index = _model_index(folder)
    parts = DIFFUSERS_PARTS | (LOW_NOISE_EXPERT if (index.get("transformer_2") or [None])[0] else {})
    return {name: what for name, what in parts.items() if index.get(name, [True])[0] is not None}


def _checked_layout(folder: Path, components_folder: Path | None) -> str:
    """The layout ("diffusers" or "original") once every file a load needs is present, else a ModelFolderError."""
    if not folder.is_dir():
        raise ModelFolderError(
            f"model folder {folder} does not exist (or is not a folder): give the path of a local Wan2.1-I2V-14B-480P "
            "download, in the diffusers or the original layout. Nothing is downloaded."
        )
    if components_folder is not None and not components_folder.is_dir():
        raise ModelFolderError(f"components folder {components_folder} does not exist. {NOTHING_DOWNLOADED}")
    if _is_original_layout(folder):
        layout = "original"
        encoders = {name: what for name, what in ENCODER_PARTS.items() if name in _original_parts(folder)}
        encoder_gaps = _missing_parts(encoders, folder, components_folder)
        missing = _missing_original_files(folder) + encoder_gaps
        explained = ENCODERS_EXPLAINED if "image_encoder" in encoders else WAN22_ENCODERS_EXPLAINED
        advice = f"{explained} " if encoder_gaps else ""
    elif (folder / "model_index.json").is_file() or (folder / "transformer").is_dir():
        layout = "diffusers"
        missing = _missing_parts(_diffusers_parts(folder), folder, components_folder)
        advice = ""
    else:
        raise _not_a_model_folder(folder)
    if (other := _other_task(folder, layout)) is not None:
        raise ModelFolderError(
            f"model folder {folder} holds {other}; SVI needs an image-to-video model (Wan2.1-I2V-14B-480P or "
            "Wan2.2-I2V-A14B, whose DiT takes 36 input channels: the noisy latents, a mask and the condition)"
        )
    if missing:
        raise ModelFolderError(
            f"model folder {folder} is in the {LAYOUT_NAMES[layout]} but incomplete. Missing: {_listed(missing)}. "
            f"{advice}{NOTHING_DOWNLOADED}"
        )
    return layout


def _other_task(folder: Path, layout: str) -> str | None:
    """What the folder's DiT is made for, when its config says it is not image-to-video (a text-to-video model
    is complete and loads, then fails in the first clip with a convolution shape error); None otherwise."""
    if layout == "diffusers":
        config = folder / "transformer" / "config.json"
        channels = read_json(config).get("in_channels", 36) if config.is_file() else 36
        return None if channels == 36 else f"a DiT with {channels} input channels (a text-to-video model)"
    for dit in _original_dit_folders(folder).values():
        config = read_json(dit / "config.json") if (dit / "config.json").is_file() else {}
        if config.get("model_type", "i2v") != "i2v" or config.get("in_dim", 36) != 36:
            return f"a {config.get('model_type', 'non-i2v')!r} DiT with {config.get('in_dim')} input channels"
    return None


def check_model_folder(folder: str | os.PathLike, components_folder: str | os.PathLike | None = None) -> str:
    """The model folder's layout ("diffusers" or "original") once it holds everything a load needs, checked from
    folder listings and small JSON files only; else a ModelFolderError listing what is missing."""
    components = Path(components_folder).expanduser() if components_folder is not None else None
    return _checked_layout(Path(folder).expanduser(), components)


def _pretrained(loader, root: Path, name: str, **kwargs):
    with reading(root / name):
        return loader.from_pretrained(root, subfolder=name, local_files_only=True, **kwargs)


def _transformer(folder: Path, layout: str, dtype: torch.dtype, name: str = "transformer") -> WanTransformer3DModel:
    """The DiT `name` ("transformer", or Wan2.2's low-noise "transformer_2") of a checked folder of `layout`
    ("diffusers" or "original"), in `dtype`."""
    if layout == "original":
        return original_transformer(_original_dit_folders(folder)[name], dtype)
    return _pretrained(WanTransformer3DModel, folder, name, torch_dtype=dtype)


# ---- the pipeline ---------------------------------------------------------------------------------------------------


def load_wan_transformer(
    folder: str | os.PathLike, dtype: torch.dtype = torch.bfloat16, expert: str = "transformer"
) -> WanTransformer3DModel:
    """Only one DiT of the Wan I2V model in `folder` (either layout), in eval mode, on the CPU.

    `expert`: "transformer", Wan2.1's one DiT or Wan2.2-A14B's high-noise expert, or "transformer_2", Wan2.2-A14B's
    low-noise expert (the original layout's `high_noise_model/` and `low_noise_model/`). What training from a latent
    cache needs: the encoders (UMT5-XXL alone is 11 GB) and the other expert are neither checked nor read. Raises
    ModelFolderError, listing what the DiT lacks, before anything heavy is read.
    """
    if expert not in ("transformer", "transformer_2"):
        raise ValueError(f"expert must be 'transformer' or 'transformer_2', not {expert!r}")
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ModelFolderError(f"model folder {folder} does not exist (or is not a folder). {NOTHING_DOWNLOADED}")
    what = "the DiT" if expert == "transformer" else "the low-noise expert"
    original = _is_original_layout(folder)
    if original:
        dits = _original_dit_folders(folder)
        if expert not in dits:
            raise ModelFolderError(
                f"{folder} holds one DiT (Wan2.1), not Wan2.2-A14B's two experts: {what} would be in "
                f"{folder / ORIGINAL_EXPERTS[1]}/. {NOTHING_DOWNLOADED}"
            )
        index = dits[expert] / ORIGINAL_DIT_INDEX
        missing = _missing_shards(index) if index.is_file() else [f"{index} ({what}'s shard index)"]
    elif (folder / expert).is_dir():
        missing = _missing_in_part(folder / expert, what)
    elif (folder / "transformer").is_dir():
        missing = [f"{folder / expert}/ ({LOW_NOISE_EXPERT[expert]})"]
    else:
        raise _not_a_model_folder(folder)
    if missing:
        raise ModelFolderError(f"{what} in {folder} is incomplete. Missing: {_listed(missing)}. {NOTHING_DOWNLOADED}")
    return _transformer(folder, "original" if original else "diffusers", dtype, expert).eval()


def load_wan_pipeline(
    folder: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    transformer_dtype: torch.dtype = torch.bfloat16,
    text_encoder_dtype: torch.dtype = torch.bfloat16,
    vae_dtype: torch.dtype = torch.float32,
    image_encoder_dtype: torch.dtype = torch.float32,
    offload: str = "none",
    vae_tiling: bool = False,
    components_folder: str | os.PathLike | None = None,
    prepare: Callable[[WanImageToVideoPipeline], None] | None = None,
) -> WanImageToVideoPipeline:
    """A `WanImageToVideoPipeline` of the Wan I2V model in `folder` (either layout), modules in eval mode: Wan2.1's
    one DiT with its CLIP image encoder, or Wan2.2-A14B's two experts (`transformer` high noise, `transformer_2` low
    noise; the original layout's `high_noise_model/` and `low_noise_model/`) without one.

    `offload`: "none" puts every module on `device`; "model" moves whole modules to `device` while they run;
    "group" streams the transformer blocks (and the encoders' layers) one at a time, the next one's copy overlapping
    this one's compute on CUDA (streams); "experts" (two-expert models)
    keeps everything on `device` but the low-noise expert, which waits on the CPU: the sampler swaps the two at the
    boundary (`ClipSampler(swap_experts=True)`), so one 14B expert is on the GPU at a time. Offloads need a GPU.
    `components_folder`: a diffusers-layout folder supplying `text_encoder/`, `tokenizer/`, `image_encoder/`,
    `image_processor/` where `folder` lacks them (needed for the original layout, whose T5/CLIP files diffusers
    cannot read). The scheduler is always `SVIFlowMatchScheduler()`. Raises ModelFolderError, listing every missing
    or unreadable item, before anything heavy is read.
    `prepare(pipe)`: what changes the weights (LoRAs, fp8), run once they are placed; with "group" before, since
    group offload with CUDA streams copies every weight into pinned CPU memory once, and restores that copy after
    each use, so a weight changed after it is enabled comes back unchanged.
    """
    if offload not in OFFLOAD_MODES:
        raise ValueError(f"offload must be one of {OFFLOAD_MODES}, not {offload!r}")
    if offload != "none" and torch.device(device).type == "cpu":
        raise ValueError(f"model CPU offload (offload={offload!r}) needs a GPU; use --offload none on CPU")
    folder = Path(folder).expanduser()
    components = Path(components_folder).expanduser() if components_folder is not None else None
    layout = _checked_layout(folder, components)

    transformer = _transformer(folder, layout, transformer_dtype)
    if layout == "diffusers":
        vae = _pretrained(AutoencoderKLWan, folder, "vae", torch_dtype=vae_dtype)
    else:
        vae = original_vae(folder, vae_dtype)

    def root(name: str) -> Path:
        return _part_root(name, folder, components)

    parts = _diffusers_parts(folder) if layout == "diffusers" else _original_parts(folder)
    image = {}
    if "image_encoder" in parts:
        processor_root = root("image_processor")
        if (processor_root / "image_processor").is_dir():
            image_processor = _pretrained(CLIPImageProcessor, processor_root, "image_processor")
        else:
            image_processor = CLIPImageProcessor(**DEFAULT_IMAGE_PROCESSOR)
        encoder = _pretrained(CLIPVisionModel, root("image_encoder"), "image_encoder", dtype=image_encoder_dtype)
        image = dict(image_encoder=encoder.eval(), image_processor=image_processor)
    experts = {}
    if "transformer_2" in parts:
        low_noise = _transformer(folder, layout, transformer_dtype, "transformer_2")
        experts = dict(transformer_2=low_noise.eval(), boundary_ratio=_model_index(folder).get("boundary_ratio"))
    pipe = WanImageToVideoPipeline(
        tokenizer=_pretrained(AutoTokenizer, root("tokenizer"), "tokenizer"),
        text_encoder=_pretrained(UMT5EncoderModel, root("text_encoder"), "text_encoder", dtype=text_encoder_dtype),
        transformer=transformer.eval(),
        vae=vae.eval(),
        scheduler=SVIFlowMatchScheduler(),
        **image,
        **experts,
    )
    # Modules converted from the original layout come out of from_config in train mode.
    pipe.text_encoder.eval()
    if vae_tiling:
        pipe.vae.enable_tiling()
    if offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif offload == "experts":
        if pipe.transformer_2 is None:
            raise ValueError(f"offload 'experts' is for models with two experts; {folder} has one: use none or model")
        pipe.to(device)
        pipe.transformer_2.to("cpu")
    elif offload == "group":
        if prepare is not None:
            prepare(pipe)
        # On CUDA a side stream copies the next block in while this one computes (from pinned CPU memory).
        pipe.enable_group_offload(
            onload_device=torch.device(device),
            offload_device=torch.device("cpu"),
            offload_type="block_level",
            num_blocks_per_group=1,
            use_stream=torch.device(device).type == "cuda",
        )
        return pipe
    else:
        pipe.to(device)
    if prepare is not None:
        prepare(pipe)
    return pipe

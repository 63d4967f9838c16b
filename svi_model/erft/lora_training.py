"""SVI's trainable LoRA on diffusers' Wan transformer: PEFT adapter in, adapter weights out.

As the authors train it: rank = alpha = 128 (PEFT scale 1) on every block's self- and cross-attention q, k, v, o
and ffn.0, ffn.2 (`SVI_LORA_TARGETS`; not the image K/V projections), PEFT's default init (kaiming-uniform A, zero
B: the LoRA starts as the identity), the base frozen in its own dtype (bf16 at real size), the LoRA weights in
fp32 so that AdamW's small updates are not rounded away.

Two files come out of a finished run: SVI's released layout (`blocks.N.self_attn.q.lora_A.default.weight`, what
`lora_files.read_lora_file` and the engine load) and diffusers' layout (`pytorch_lora_weights.safetensors` with
`transformer.`-prefixed keys and the adapter's config, what `WanImageToVideoPipeline.load_lora_weights` loads).
"""

import shutil
import tempfile
from pathlib import Path

import torch
from diffusers import WanImageToVideoPipeline, WanTransformer3DModel
from diffusers.training_utils import cast_training_params
from peft import LoraConfig
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from torch import nn

from ..atomic_files import replace_folder
from ..lora_files import SVI_LORA_TARGETS, LoraFileError, lora_from_peft, save_lora_file

ADAPTER = "default"
# Per block: self- and cross-attention q, k, v, o, and the two feed-forward layers.
LAYERS_PER_BLOCK = 10
DIFFUSERS_WEIGHTS = "pytorch_lora_weights.safetensors"


def svi_lora_config(rank: int = 128, alpha: float = 128) -> LoraConfig:
    """PEFT's LoraConfig of SVI's adapter. init_lora_weights=True is PEFT's kaiming-uniform A and zero B, which is
    what the authors' `init_lora_weights="kaiming"` turns into."""
    return LoraConfig(
        r=rank, lora_alpha=alpha, init_lora_weights=True, lora_dropout=0.0, target_modules=list(SVI_LORA_TARGETS)
    )


def add_training_lora(
    transformer: WanTransformer3DModel,
    rank: int = 128,
    alpha: float = 128,
    gradient_checkpointing: bool = True,
    seed: int = 0,
) -> list[nn.Parameter]:
    """Freeze `transformer`, add SVI's LoRA as PEFT adapter "default" in fp32, and return its parameters.

    A's random init is drawn from CPU generator state `seed` (the global one, forked and restored around it), so
    the same seed gives the same run. Raises LoraFileError if PEFT did not wrap exactly 10 layers per block (a
    model whose module names differ from diffusers' Wan would otherwise train a partial adapter without a word).
    """
    transformer.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer.add_adapter(svi_lora_config(rank, alpha), adapter_name=ADAPTER)
    cast_training_params(transformer, torch.float32)
    wrapped = sum(isinstance(module, BaseTunerLayer) for module in transformer.modules())
    expected = LAYERS_PER_BLOCK * len(transformer.blocks)
    if wrapped != expected:
        raise LoraFileError(f"PEFT wrapped {wrapped} layers of the transformer, SVI's LoRA needs {expected}")
    if gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    transformer.train()
    return [parameter for parameter in transformer.parameters() if parameter.requires_grad]


def adapter_state_dict(transformer: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's weights under PEFT's saved names (`blocks.0.attn1.to_q.lora_A.weight`), fp32, on their device."""
    return get_peft_model_state_dict(transformer, adapter_name=ADAPTER)


def load_adapter_state_dict(transformer: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Put `adapter_state_dict` output back into the adapter; LoraFileError naming `source` if the keys differ."""
    expected = set(adapter_state_dict(transformer))
    if set(state) != expected:
        difference = sorted(set(state) ^ expected)
        raise LoraFileError(f"{source}: LoRA keys differ from the model's adapter (e.g. {difference[:3]})")
    set_peft_model_state_dict(transformer, state, adapter_name=ADAPTER)


def save_released_lora(transformer: nn.Module, path: Path, metadata: dict[str, str]) -> None:
    """The adapter as one `.safetensors` file in SVI's released layout (fp32, written atomically)."""
    save_lora_file(lora_from_peft(transformer, ADAPTER), path, metadata)


def save_diffusers_lora(transformer: nn.Module, folder: Path) -> None:
    """The adapter in diffusers' layout: `folder/pytorch_lora_weights.safetensors`, the LoRA config in its header.

    Written into a temporary folder beside `folder` that then replaces it (`replace_folder`).
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        WanImageToVideoPipeline.save_lora_weights(
            temporary,
            transformer_lora_layers={key: value.cpu() for key, value in adapter_state_dict(transformer).items()},
            weight_name=DIFFUSERS_WEIGHTS,
            transformer_lora_adapter_metadata=transformer.peft_config[ADAPTER].to_dict(),
        )
        replace_folder(temporary, folder)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)

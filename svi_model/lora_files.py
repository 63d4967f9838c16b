"""SVI's LoRA files: read them in any layout they circulate in, apply them to diffusers' Wan transformer, write them.

The released files (e.g. `svi-film-opt-10212025.safetensors`) hold 400 fp32 LoRA pairs on all 40 blocks (self- and
cross-attention q, k, v, o and ffn.0, ffn.2) under PEFT names in original-Wan module names, e.g.
`blocks.17.cross_attn.o.lora_B.default.weight`; files from the training script add a `pipe.dit.` prefix.
diffusers' `load_lora_weights` converts only `diffusion_model.`-prefixed keys and loads *nothing* (with a warning)
for every other layout, so this module normalises keys itself, maps them to diffusers module names, checks every
pair against the transformer before touching it, and checks afterwards that every pair landed.

Accepted key layouts (any combination):
    prefixes      `pipe.dit.`, `diffusion_model.`, `model.`, `module.`, `_orig_mod.`, `transformer.` (stacked too)
    pair names    `lora_A`/`lora_B` with or without the PEFT `.default` infix, or `lora_down`/`lora_up` (down = A)
    scale         optional `<module>.alpha` scalars: the pair's scale is alpha / rank (1 without one)
    module names  original Wan (`self_attn.q`, `ffn.0`, ...) or diffusers (`attn1.to_q`, `ffn.net.0.proj`, ...)
    full deltas   `<module>.diff` (added to the weight) and `<module>.diff_b` (to the bias), as distill LoRAs
                  (lightx2v, Lightning) carry for norms, biases and other small parameters; fused only
"""

import math
import os
import re
from dataclasses import dataclass, field
from typing import NamedTuple

import safetensors
import safetensors.torch
import torch
from torch import nn

from .atomic_files import atomic_path

# Module-name suffixes SVI adapts, as PEFT `target_modules` for diffusers' WanTransformer3DModel: they wrap exactly
# blocks.N.attn1/attn2.{to_q,to_k,to_v,to_out.0} and blocks.N.ffn.net.{0.proj,2} (not the image K/V projections).
SVI_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2")

# Per-block original Wan name -> diffusers name (reference: diffusers' convert_wan_transformer_to_diffusers).
_WAN_TO_DIFFUSERS = {
    "self_attn.q": "attn1.to_q",
    "self_attn.k": "attn1.to_k",
    "self_attn.v": "attn1.to_v",
    "self_attn.o": "attn1.to_out.0",
    "cross_attn.q": "attn2.to_q",
    "cross_attn.k": "attn2.to_k",
    "cross_attn.v": "attn2.to_v",
    "cross_attn.o": "attn2.to_out.0",
    "cross_attn.k_img": "attn2.add_k_proj",
    "cross_attn.v_img": "attn2.add_v_proj",
    "ffn.0": "ffn.net.0.proj",
    "ffn.2": "ffn.net.2",
}
_DIFFUSERS_TO_WAN = {diffusers: wan for wan, diffusers in _WAN_TO_DIFFUSERS.items()}

# Stripped repeatedly, so stacks such as `model.diffusion_model.` or `module._orig_mod.` normalise too.
_PREFIXES = ("pipe.dit.", "diffusion_model.", "model.", "module.", "_orig_mod.", "transformer.")
# Extra (non-LoRA) modules that SVI's own loader (`ModelManager.load_lora_v2`) sets aside for SVI-Dance and others.
_SVI_EXTRA_MODULES = (
    "dwpose_embedding",
    "randomref_embedding_pose",
    "inpaint_embedding",
    "learn_in_embedding",
    "randomref",
)
_LORA_KEY = re.compile(r"^(?P<module>.+)\.(?P<kind>lora_A|lora_B|lora_down|lora_up)(?:\.default)?\.weight$")
_ALPHA_KEY = re.compile(r"^(?P<module>.+)\.alpha$")
_DIFF_KEY = re.compile(r"^(?P<module>.+)\.(?P<kind>diff|diff_b)$")
_BLOCK_MODULE = re.compile(r"^blocks\.(?P<index>\d+)\.(?P<name>.+)$")


class LoraFileError(ValueError):
    """A LoRA file or LoRA state that cannot be read, applied or written; the message names the file and key."""


class LoraPair(NamedTuple):
    """One low-rank update `delta W = scale * b @ a` of one nn.Linear.

    a: lora_A / lora_down [r, in_features]; b: lora_B / lora_up [out_features, r]; scale: alpha / r (1 without an
    alpha). a_key / b_key: where each tensor came from (the file's key), for error messages.
    """

    a: torch.Tensor
    b: torch.Tensor
    scale: float
    a_key: str
    b_key: str


@dataclass
class LoraWeights:
    """A LoRA keyed by diffusers module name (`blocks.0.attn1.to_q`), plus the keys that were set aside.

    pairs: module name -> LoraPair. ignored: keys of SVI's extra non-LoRA modules (e.g. `dwpose_embedding.0.weight`),
    which are reported but never applied. source: the file it came from (or a description), for error messages.
    diffs: diffusers parameter name (`blocks.0.attn1.norm_q.weight`) -> (file key, full-tensor delta).
    """

    pairs: dict[str, LoraPair]
    ignored: list[str] = field(default_factory=list)
    source: str = "<in memory>"
    diffs: dict[str, tuple[str, torch.Tensor]] = field(default_factory=dict)


def read_lora_file(path: str | os.PathLike) -> LoraWeights:
    """Load a LoRA `.safetensors` file in any accepted layout (see the module docstring) into diffusers names.

    Raises LoraFileError naming the file if it is missing, is not safetensors, holds no LoRA pair, holds a key that
    is neither LoRA nor one of SVI's extra modules, or holds an A without its B (or the other way round).
    """
    path = os.fspath(path)
    try:
        state = safetensors.torch.load_file(path)
    except FileNotFoundError:
        raise LoraFileError(f"LoRA file {path!r} does not exist.") from None
    except (safetensors.SafetensorError, OSError) as error:
        raise LoraFileError(f"LoRA file {path!r} is not a readable .safetensors file: {error}") from error
    return _lora_from_state_dict(state, source=path)


def _lora_from_state_dict(state: dict[str, torch.Tensor], source: str) -> LoraWeights:
    halves: dict[str, dict[str, tuple[str, torch.Tensor]]] = {}  # module -> {"a"/"b": (file key, tensor)}
    alphas: dict[str, tuple[str, torch.Tensor]] = {}  # module -> (file key, scalar)
    diffs: dict[str, tuple[str, torch.Tensor]] = {}  # parameter -> (file key, delta)
    ignored = []
    for key, tensor in state.items():
        stem = _strip_prefixes(key)
        if stem.startswith(_SVI_EXTRA_MODULES):
            ignored.append(key)
            continue
        if diff := _DIFF_KEY.match(stem):
            parameter = _diffusers_parameter_name(diff["module"], "weight" if diff["kind"] == "diff" else "bias")
            _put_once(diffs, parameter, key, tensor, source)
            continue
        lora_match, alpha_match = _LORA_KEY.match(stem), _ALPHA_KEY.match(stem)
        match = lora_match or alpha_match
        module = _diffusers_module_name(match["module"]) if match else None
        if module is None:
            raise LoraFileError(
                f"LoRA file {source!r}: key {key!r} is neither a LoRA tensor of a Wan block's q/k/v/o/k_img/v_img/"
                f"ffn layer nor one of SVI's extra modules {_SVI_EXTRA_MODULES}; is this a Wan LoRA?"
            )
        if alpha_match:
            _put_once(alphas, module, key, tensor, source)
        else:
            half = "a" if lora_match["kind"] in ("lora_A", "lora_down") else "b"
            _put_once(halves.setdefault(module, {}), half, key, tensor, source)

    pairs = {}
    for module, found in halves.items():
        if len(found) != 2:
            present_key = next(iter(found.values()))[0]
            missing = "B (lora_B / lora_up)" if "a" in found else "A (lora_A / lora_down)"
            raise LoraFileError(f"LoRA file {source!r}: {present_key!r} has no matching {missing} tensor.")
        (a_key, a), (b_key, b) = found["a"], found["b"]
        # The .alpha convention (kohya, original Wan LoRAs): delta W = alpha / rank * B @ A.
        scale = float(alphas.pop(module)[1]) / a.shape[0] if module in alphas else 1.0
        pairs[module] = LoraPair(a, b, scale, a_key, b_key)
    if alphas:
        orphan_key = next(iter(alphas.values()))[0]
        raise LoraFileError(f"LoRA file {source!r}: {orphan_key!r} is an alpha without a lora_A/lora_B pair.")
    if not pairs and not diffs:
        raise LoraFileError(f"LoRA file {source!r} holds no LoRA tensors (first keys: {sorted(state)[:5]}).")
    return LoraWeights(pairs, ignored, source, diffs)


def _diffusers_parameter_name(module: str, leaf: str) -> str:
    """The diffusers name of the original-Wan (or already diffusers) parameter `module.leaf`, by diffusers' own
    converter, which knows every parameter of the DiT (norms, modulation, embeddings), not only the adapted layers."""
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    return next(iter(convert_wan_transformer_to_diffusers({f"{module}.{leaf}": torch.empty(0)})))


def _put_once(slots: dict, slot: str, key: str, tensor: torch.Tensor, source: str) -> None:
    # Two layouts mixed in one file (`pipe.dit.X` next to `X`) would otherwise let one silently win.
    if slot in slots:
        raise LoraFileError(f"LoRA file {source!r}: keys {slots[slot][0]!r} and {key!r} name the same tensor.")
    slots[slot] = (key, tensor)


def _strip_prefixes(key: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key, stripped = key[len(prefix) :], True
    return key


def _diffusers_module_name(module: str) -> str | None:
    """`blocks.3.self_attn.q` or `blocks.3.attn1.to_q` -> `blocks.3.attn1.to_q`; None for anything else."""
    match = _BLOCK_MODULE.match(module)
    if match is None:
        return None
    name = match["name"]
    if name in _DIFFUSERS_TO_WAN:
        return module
    if name in _WAN_TO_DIFFUSERS:
        return f"blocks.{match['index']}.{_WAN_TO_DIFFUSERS[name]}"
    return None


def apply_lora(
    transformer: nn.Module, lora: LoraWeights, scale: float = 1.0, fuse: bool = True, adapter_name: str = "svi"
) -> None:
    """Apply `lora` to a diffusers WanTransformer3DModel, after checking every pair against it.

    fuse=True (default, what SVI's authors do): W += scale * pair.scale * B @ A in place, computed in fp32 and cast
    back to W's dtype; no PEFT layer is added, so inference costs nothing extra. fuse=False: load it as the PEFT
    adapter `adapter_name` through diffusers and activate it with weight `scale` (switchable, slower per step).
    Full deltas (`.diff`/`.diff_b`) are added at `scale` too, fused only. Raises LoraFileError, before modifying
    anything, naming the first pair whose module is missing, is not an nn.Linear, or whose shapes do not fit (or
    delta whose parameter is missing or of another shape); and, unfused, if diffusers did not wrap exactly one
    module per pair.
    """
    linears = {module: _check_pair(transformer, module, pair, lora.source) for module, pair in lora.pairs.items()}
    parameters = {
        name: _checked_diff(transformer, name, key, delta, lora.source) for name, (key, delta) in lora.diffs.items()
    }
    if parameters and not fuse:
        raise LoraFileError(f"LoRA {lora.source!r} holds full deltas (.diff/.diff_b), which can only be fused: fuse it")
    if fuse:
        _fuse(linears, lora, scale)
        _add_diffs(parameters, lora, scale)
    else:
        _load_adapter(transformer, lora, scale, adapter_name)


def _check_pair(transformer: nn.Module, module: str, pair: LoraPair, source: str) -> nn.Linear:
    where = f"LoRA {source!r}: {pair.a_key!r} (diffusers module {module!r})"
    try:
        linear = transformer.get_submodule(module)
    except AttributeError:
        raise LoraFileError(f"{where}: the transformer has no such module; is this LoRA for another model?") from None
    # A module already wrapped by a PEFT adapter (e.g. during training) keeps its nn.Linear as `base_layer`.
    linear = getattr(linear, "base_layer", linear)
    if not isinstance(linear, nn.Linear):
        raise LoraFileError(f"{where}: expected an nn.Linear, found {type(linear).__name__}.")
    rank = pair.a.shape[0]
    expected_a, expected_b = (rank, linear.in_features), (linear.out_features, rank)
    if pair.a.ndim != 2 or tuple(pair.a.shape) != expected_a:
        raise LoraFileError(f"{where}: A should be [r, in_features] = {list(expected_a)}, found {list(pair.a.shape)}.")
    if tuple(pair.b.shape) != expected_b:
        raise LoraFileError(
            f"LoRA {source!r}: {pair.b_key!r} (diffusers module {module!r}): B should be [out_features, r] = "
            f"{list(expected_b)}, found {list(pair.b.shape)}."
        )
    return linear


def _checked_diff(transformer: nn.Module, name: str, key: str, delta: torch.Tensor, source: str) -> nn.Parameter:
    where = f"LoRA {source!r}: {key!r} (diffusers parameter {name!r})"
    # A bare parameter (Wan's `modulation`, diffusers' `scale_shift_table`) has no `.weight` leaf.
    names = dict(transformer.named_parameters())
    found = [candidate for candidate in (name, name.removesuffix(".weight")) if candidate in names]
    if not found:
        raise LoraFileError(f"{where}: the transformer has no such parameter; is this LoRA for another model?")
    parameter = names[found[0]]
    if tuple(delta.shape) != tuple(parameter.shape):
        raise LoraFileError(f"{where}: should be {list(parameter.shape)}, found {list(delta.shape)}.")
    return parameter


@torch.no_grad()
def _add_diffs(parameters: dict[str, nn.Parameter], lora: LoraWeights, scale: float) -> None:
    for name, parameter in parameters.items():
        delta = lora.diffs[name][1].to(parameter.device, torch.float32)
        parameter.copy_((parameter.float() + scale * delta).to(parameter.dtype))


@torch.no_grad()
def _fuse(linears: dict[str, nn.Linear], lora: LoraWeights, scale: float) -> None:
    # One rounding to W's dtype (bf16 in production): peft's merge rounds B @ A to bf16 first and then adds.
    for module, linear in linears.items():
        pair = lora.pairs[module]
        weight = linear.weight
        a, b = (tensor.to(weight.device, torch.float32) for tensor in (pair.a, pair.b))
        weight.copy_((weight.float() + (scale * pair.scale) * (b @ a)).to(weight.dtype))


def _load_adapter(transformer: nn.Module, lora: LoraWeights, scale: float, adapter_name: str) -> None:
    from peft.tuners.tuners_utils import BaseTunerLayer

    # The per-pair scale is folded into B: without alpha metadata diffusers sets lora_alpha = rank for every module
    # (scale 1), even when ranks differ, so the adapter's delta is exactly pair.scale * B @ A.
    state_dict = {}
    for module, pair in lora.pairs.items():
        state_dict[f"{module}.lora_A.weight"] = pair.a
        state_dict[f"{module}.lora_B.weight"] = pair.b * pair.scale
    # prefix=None: the keys are already the transformer's own module names (the default expects `transformer.`).
    transformer.load_lora_adapter(state_dict, adapter_name=adapter_name, prefix=None)
    wrapped = [
        name
        for name, layer in transformer.named_modules()
        if isinstance(layer, BaseTunerLayer) and adapter_name in getattr(layer, "lora_A", {})
    ]
    # The failure mode this module exists for is silent: a LoRA that loads into nothing, or into part of the model.
    if len(wrapped) != len(lora.pairs):
        transformer.delete_adapters(adapter_name)
        missing = sorted(set(lora.pairs) - set(wrapped))
        raise LoraFileError(
            f"LoRA {lora.source!r}: diffusers wrapped {len(wrapped)} modules for {len(lora.pairs)} pairs "
            f"(not wrapped: {missing[:5]}); the adapter was removed again."
        )
    transformer.set_adapters([adapter_name], [scale])


def lora_from_peft(transformer: nn.Module, adapter_name: str = "default") -> LoraWeights:
    """Collect the PEFT adapter `adapter_name` of a diffusers transformer (e.g. during training) as LoraWeights.

    Keys are diffusers module names (`blocks.0.attn1.to_q`); a: [r, in], b: [out, r] (detached copies); scale: the
    adapter's lora_alpha / r (or / sqrt(r) with rsLoRA), independent of any weight given to `set_adapters`.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    pairs = {}
    for module, layer in transformer.named_modules():
        if not isinstance(layer, BaseTunerLayer) or adapter_name not in getattr(layer, "lora_A", {}):
            continue
        if adapter_name in getattr(layer, "lora_magnitude_vector", {}):
            raise LoraFileError(f"{module!r}: adapter {adapter_name!r} is DoRA, which SVI's LoRA layout cannot hold.")
        rank = layer.r[adapter_name]
        scale = layer.lora_alpha[adapter_name] / (math.sqrt(rank) if layer.use_rslora[adapter_name] else rank)
        a = layer.lora_A[adapter_name].weight.detach().clone()
        b = layer.lora_B[adapter_name].weight.detach().clone()
        peft_key = f"{module}.lora_{{}}.{adapter_name}.weight"
        pairs[module] = LoraPair(a, b, scale, peft_key.format("A"), peft_key.format("B"))
    if not pairs:
        raise LoraFileError(f"The transformer has no LoRA layers of PEFT adapter {adapter_name!r}.")
    return LoraWeights(pairs, source=f"PEFT adapter {adapter_name!r}")


def save_lora_file(lora: LoraWeights, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """Write `lora` atomically in SVI's released layout: `blocks.N.self_attn.q.lora_A.default.weight`, fp32.

    The pair's scale is folded into B (the layout has no alpha), so any SVI-compatible loader applies the same
    delta; pairs with scale 1 (SVI trains with lora_alpha = rank) are written bit for bit. `metadata` goes into
    the safetensors header (str -> str). A crash never leaves a partial file at `path`.
    """
    tensors = {}
    for module, pair in lora.pairs.items():
        match = _BLOCK_MODULE.match(module)
        if match is None or match["name"] not in _DIFFUSERS_TO_WAN:
            raise LoraFileError(f"{pair.a_key!r} (module {module!r}) has no name in SVI's LoRA layout (Wan blocks).")
        stem = f"blocks.{match['index']}.{_DIFFUSERS_TO_WAN[match['name']]}"
        b = pair.b if pair.scale == 1.0 else pair.b.float() * pair.scale
        tensors[f"{stem}.lora_A.default.weight"] = pair.a.detach().to("cpu", torch.float32).contiguous()
        tensors[f"{stem}.lora_B.default.weight"] = b.detach().to("cpu", torch.float32).contiguous()

    with atomic_path(path) as temporary:
        safetensors.torch.save_file(tensors, str(temporary), metadata=metadata)

"""Speed and memory levers on a loaded Wan DiT: diffusers' own switches, wrapped (nothing here is a fork of them).

Same output, up to floating-point rounding:
- `attention_backend` (`set_attention_backend`): `native` is torch SDPA on any device; `_native_cudnn`,
  `_native_flash`, `_native_efficient` force that SDPA kernel (CUDA); `flash`, `_flash_3`, `xformers` need their
  packages. `sage` (8-bit Q and K) is the one approximate backend.
- `compile` (`compile_repeated_blocks`): torch.compile of `WanTransformerBlock` (inductor: a C++ compiler on the
  CPU, triton on CUDA), one compile reused by every block, step and clip.

Output-changing (approximations):
- `step_cache` (`enable_cache`): `first_block` (FirstBlockCache: the other blocks are skipped while the first
  block's residual changes by less than the threshold, default 0.05), `taylorseer` (TaylorSeer lite: the blocks are
  skipped and the output extrapolated, computed every 5th step after the first 3).
- `fp8` `storage` (`enable_layerwise_casting`): weights stored in float8 e4m3, computed in the DiT's dtype; halves
  the DiT's bf16 weights on any device, no speed-up. `fp8` `gemm` (torchao `Float8DynamicActivationFloat8WeightConfig`,
  per-row scales): float8 matmuls in the blocks' linear layers; needs torchao and CUDA compute capability >= 8.9.

Not here: MagCache. diffusers 0.42's `MagCacheConfig` needs per-checkpoint `mag_ratios` (it ships only Flux's);
the published Wan ratios are for the base model under Wan's own schedule, and SVI's LoRA and schedule change them.
"""

from typing import Literal

import torch

# Exact attention (up to floating-point rounding) first; `sage` quantises Q and K to 8 bits. The `*_hub` backends
# are left out: they download kernels.
EXACT_ATTENTION = (
    "native",
    "_native_cudnn",
    "_native_flash",
    "_native_efficient",
    "_native_math",
    "flex",
    "flash",
    "_flash_3",
    "xformers",
)
ATTENTION_BACKENDS = (*EXACT_ATTENTION, "sage")
STEP_CACHES = ("none", "first_block", "taylorseer")
FP8_MODES = ("none", "storage", "gemm")
AttentionBackend = Literal[ATTENTION_BACKENDS]
StepCache = Literal[STEP_CACHES]
Fp8 = Literal[FP8_MODES]

# TaylorSeer's default module patterns (`^blocks.*attn`, matched whole) hook nothing in WanTransformer3DModel, whose
# attention modules are `blocks.N.attn1`/`attn2`; the lite variant (skip the blocks, extrapolate `proj_out`) is the
# one that applies, and the only one whose Taylor factors fit in memory at real size (one output, not 3 per block).
_TAYLORSEER = dict(use_lite_mode=True)


def step_cache_config(kind: str, threshold: float | None = None):
    """diffusers' cache config for `kind` ("first_block", "taylorseer"); None for "none"."""
    from diffusers import FirstBlockCacheConfig, TaylorSeerCacheConfig

    if kind == "none":
        return None
    if kind == "first_block":
        return FirstBlockCacheConfig() if threshold is None else FirstBlockCacheConfig(threshold=threshold)
    if kind == "taylorseer":
        if threshold is not None:
            raise ValueError("step_cache_threshold is first_block's; taylorseer computes every 5th step after 3")
        return TaylorSeerCacheConfig(**_TAYLORSEER)
    raise ValueError(f"step_cache must be one of {STEP_CACHES}, not {kind!r}")


def fp8_gemms_unavailable(device: torch.device) -> str | None:
    """Why FP8 matmuls cannot run on `device` (what to do instead), or None when they can."""
    if device.type != "cuda" or torch.cuda.get_device_capability(device) < (8, 9):
        return (
            f"fp8 gemm needs a CUDA GPU of compute capability 8.9 or more (H100, H200, Ada); the DiT is on {device}: "
            "use fp8 storage (weights only) or none"
        )
    try:
        import torchao  # noqa: F401
    except ImportError:
        return "fp8 gemm needs torchao: pip install 'svi-film[fp8]' (or torchao)"
    return None


def fp8_gemms(transformer: torch.nn.Module) -> None:
    """FP8 (e4m3, per-row scales) weights and dynamically quantised activations in the blocks' linear layers."""
    reason = fp8_gemms_unavailable(next(transformer.parameters()).device)
    if reason is not None:
        raise ValueError(reason)
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    quantize_(
        transformer,
        Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()),
        filter_fn=lambda module, name: isinstance(module, torch.nn.Linear) and name.startswith("blocks."),
    )


def apply_levers(
    transformer: torch.nn.Module,
    *,
    attention_backend: str = "native",
    compile: bool = False,
    step_cache: str = "none",
    step_cache_threshold: float | None = None,
    fp8: str = "none",
    compile_backend: str = "inductor",
) -> None:
    """Apply the levers to one DiT (a WanTransformer3DModel), in the order they compose: weights first (fp8), then
    the hooks that wrap block forwards (step cache), then the compile that traces through them.

    The attention backend is always set, "native" included: diffusers keeps the last one set as a process-wide
    default, which a model loaded earlier in the process would otherwise pass on. `compile_backend`: torch.compile's
    (tests trace with a counting backend instead of generating code). The compile is lazy: it happens at the first
    forward of each input shape, once for all blocks (they share one code object).
    """
    if fp8 == "storage":
        transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=transformer.dtype)
    elif fp8 == "gemm":
        fp8_gemms(transformer)
    elif fp8 != "none":
        raise ValueError(f"fp8 must be one of {FP8_MODES}, not {fp8!r}")
    cache = step_cache_config(step_cache, step_cache_threshold)
    if cache is not None:
        transformer.enable_cache(cache)
    if attention_backend not in ATTENTION_BACKENDS:
        raise ValueError(f"attention_backend must be one of {ATTENTION_BACKENDS}, not {attention_backend!r}")
    transformer.set_attention_backend(attention_backend)
    if compile:
        # diffusers' hooks (caches, layerwise casting) decide on the host (`.item()`, torch.compiler.disable):
        # with one of them the blocks compile in pieces, without any in one graph (fullgraph: a break is an error).
        hooked = cache is not None or fp8 == "storage"
        transformer.compile_repeated_blocks(fullgraph=not hooked, backend=compile_backend)

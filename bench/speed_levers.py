"""Each lever on and off, as `bench/speed.py` reports them under `levers` (see its docstring for what is compared).

The step caches and the memory modes run on the stock (eager) transformer: a cache's hooks cannot be traced into
our fullgraph-compiled blocks, and the memory modes change the stock copy in place, so they come last.
"""

from collections.abc import Callable

import torch
from diffusers import WanImageToVideoPipeline
from speed_measure import GIB, peak_gib, reset_peak, resident_bytes, seconds_of

from svi_model.conditioning import condition_video
from svi_model.levers import step_cache_config
from svi_model.sampler import ClipSampler, mask_and_latents


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def denoising(sampler: ClipSampler, frame: torch.Tensor, clip: dict) -> Callable[[int], torch.Tensor]:
    """`steps` → the latents of a guided clip's denoising alone (conditions and embeddings made once, here)."""
    latents = mask_and_latents(sampler.encode(condition_video(frame[None], clip["frames"])))
    images, text = sampler.image_embeddings(frame), sampler.text_embeddings("a red ball rolls across the grass")
    negative = sampler.text_embeddings(sampler.negative_prompt)
    return lambda steps: sampler.denoise(latents, images, text, negative, 0, steps, 5.0)


def batch_cfg(sampler: ClipSampler, frame: torch.Tensor, clip: dict, steps: int, device: torch.device) -> dict:
    """Seconds per guided step with cond and uncond as two forwards, then as one of batch 2, and the difference."""
    run = denoising(sampler, frame, clip)
    timed = {}
    for on in (False, True):
        sampler.batch_cfg = on
        run(1)  # warm-up: a compiled DiT compiles again for batch 2
        seconds, timed[on] = seconds_of(lambda: run(steps), device)
        timed[f"s_{on}"] = seconds / steps
    sampler.batch_cfg = False
    return {
        "off_s_per_step": round(timed["s_False"], 4),
        "on_s_per_step": round(timed["s_True"], 4),
        "max_abs_diff": (timed[True] - timed[False]).abs().max().item(),
    }


def step_caches(stock_pipe: WanImageToVideoPipeline, frame: torch.Tensor, clip: dict, steps: int, device) -> dict:
    """Each step cache against none over a `steps`-step clip's denoising, on the eager stock transformer."""
    sampler = ClipSampler(stock_pipe, negative_prompt="blurred, static, low quality")
    run = denoising(sampler, frame, clip)
    baseline_s, baseline = seconds_of(lambda: run(steps), device)
    caches = {"steps": steps, "none_s": round(baseline_s, 4)}
    for kind in ("first_block", "taylorseer"):
        stock_pipe.transformer.enable_cache(step_cache_config(kind))
        try:
            seconds, latents = seconds_of(lambda: run(steps), device)
        finally:
            stock_pipe.transformer.disable_cache()
        caches[kind] = {"s": round(seconds, 4), "relative_l2_of_latents": round(_relative(latents, baseline), 5)}
    return caches


def memory_modes(stock: torch.nn.Module, forward, idle: list[torch.nn.Module], device: torch.device) -> dict:
    """fp8 weight storage, then that with group offload (block by block, CUDA streams on CUDA): forward seconds,
    output against stock, the DiT's weights on the device and the forward's peak. `forward(transformer)` →
    (seconds, output, compared-to-stock dict); `idle`: modules resident on the device that the forward does not use."""
    modes = {}
    stock.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=stock.dtype)
    for mode in ("fp8_storage", "fp8_storage_group_offload"):
        if mode == "fp8_storage_group_offload":
            stock.enable_group_offload(
                onload_device=device,
                offload_device=torch.device("cpu"),
                offload_type="block_level",
                num_blocks_per_group=1,
                use_stream=device.type == "cuda",
            )
        reset_peak(device)
        seconds, comparison = forward(stock)
        modes[mode] = {
            "s": round(seconds, 4),
            **comparison,
            "dit_weights_on_device_gib": None if device.type == "cpu" else round(resident_bytes(stock) / GIB, 3),
            "forward_peak_gib": peak_gib(device, resident_bytes(*idle)),
        }
    return modes

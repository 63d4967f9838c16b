"""One ERFT training step at real size: seconds per step, peak GPU memory, model-FLOP utilisation.

    python bench/erft_step.py                 # Wan2.1-I2V-14B transformer, random bf16 weights, 81×480×832, GPU
    python bench/erft_step.py --tiny          # the tiny test transformer on the CPU: exercises this script
    python bench/erft_step.py --no-checkpointing --frames 41    # what gradient checkpointing buys

Without a GPU, `bench/erft_memory_estimate.py` gives the same step's peak memory and FLOPs from fake tensors.

The step is the trainer's own (`step.ErftStep`: error injection, DiT forward and backward, grad clip, AdamW, error
banking), fed as from the latent cache: latents, condition latents, text and CLIP tokens of the right shapes, so
no encoder is loaded. The LoRA is SVI's (rank = alpha = 128 on q, k, v, o, ffn.0, ffn.2, fp32 weights on the bf16
base). FLOPs are counted by torch's FlopCounterMode on one extra step: the counted total includes the forward
that gradient checkpointing recomputes (hardware FLOPs); model FLOPs leave it out (MFU, as nanoGPT reports it).
A memory breakdown is printed next to the measured peak, with what it would take to fit where it does not.
"""

import argparse
import math
import time

import torch
from accelerate import Accelerator
from diffusers import WanTransformer3DModel
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from svi_model.conditioning import latent_frame_count
from svi_model.erft.error_bank import ErrorBank, grid_sigmas
from svi_model.erft.lora_training import add_training_lora
from svi_model.erft.recycling import ErrorRecycler, RecyclingSettings
from svi_model.erft.step import ErftStep, StepInputs
from svi_model.original_checkpoints import transformer_config_of_original
from svi_model.sampler import TEXT_TOKENS, mask_and_latents, predict_velocity
from svi_model.tiny import tiny_components

# Wan2.1-I2V-14B-480P's transformer (16.4 B parameters) as the model loader builds it; Wan hard-codes CLIP
# ViT-H's width (1280) instead of configuring it.
WAN21_I2V_14B = transformer_config_of_original({}) | {"image_dim": 1280}
H100_BF16_PEAK_TFLOPS = 989.4  # dense, SXM (NVIDIA spec)
CLIP_TOKENS = 257  # ViT-H/14 at 224 px; the transformer takes any count, so the tiny model gets as many
GIB = 2**30


def real_transformer(device: torch.device, config: dict = WAN21_I2V_14B) -> WanTransformer3DModel:
    """Wan2.1-I2V-14B (or another `config`) with random weights, built on the device in bf16 (the modules
    diffusers keeps in fp32 in fp32)."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = WanTransformer3DModel(**config)
    finally:
        torch.set_default_dtype(default)
    keep = set(WanTransformer3DModel._keep_in_fp32_modules or [])
    for name, parameter in model.named_parameters():
        if keep & set(name.split(".")):
            parameter.data = parameter.data.float()
    return model.eval()


def step_inputs(model: WanTransformer3DModel, frames: int, height: int, width: int, device, dtype) -> StepInputs:
    """Random cached-sample tensors of the shapes a clip of frames×height×width has."""
    generator = torch.Generator().manual_seed(0)
    latent = (1, 16, latent_frame_count(frames), height // 8, width // 8)
    config = model.config

    def random(*shape):
        return torch.randn(shape, generator=generator)

    return StepInputs(
        latents=random(*latent).to(device),
        condition_latents=random(*latent).to(device),
        text=random(1, TEXT_TOKENS, config.text_dim).to(device, dtype),
        clip_tokens=random(1, CLIP_TOKENS, config.image_dim).to(device, dtype),
    )


def attention_flop_formulas() -> dict:
    """FlopCounterMode formulas for the CPU's fused attention kernels, which torch counts only on CUDA. They take
    (query, key, value, …) and (grad_out, query, key, value, …), `[B, H, L, D]` each, as CUDA's flash kernels do."""

    def forward(query, key, value, *_, **__) -> int:
        return sdpa_flop_count(query, key, value)

    def backward(grad_out, query, key, value, *_, **__) -> int:
        return sdpa_backward_flop_count(grad_out, query, key, value)

    aten = torch.ops.aten
    return {
        aten._scaled_dot_product_flash_attention_for_cpu: forward,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: backward,
    }


def forward_flops(model: torch.nn.Module, inputs: StepInputs, dtype: torch.dtype) -> int:
    """FLOPs of one DiT forward on `inputs` without autograd: what gradient checkpointing recomputes."""
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=attention_flop_formulas()) as counter:
        predict_velocity(
            model,
            torch.cat([inputs.latents, mask_and_latents(inputs.condition_latents)], dim=1).to(dtype),
            torch.tensor([500.0], device=inputs.latents.device),
            inputs.text,
            inputs.clip_tokens,
        )
    return counter.get_total_flops()


def seconds_to_bank_into_a_full_grid(error_shape: tuple[int, ...], capacity: int = 500) -> float:
    """Host time of one `ErrorBank.store` into a full grid (the nearest-error search over Z stored errors), which
    every step pays once both banks' grids have filled; a few benchmark steps never get there."""
    bank = ErrorBank("bench", num_grids=1, per_grid=capacity, error_shape=error_shape)
    error = torch.randn(error_shape)
    for _ in range(capacity):
        bank.store(error, 0)
    started = time.perf_counter()
    bank.store(error, 0)
    return time.perf_counter() - started


def memory_breakdown(model: torch.nn.Module, parameters: list[torch.nn.Parameter]) -> dict[str, float]:
    """GiB of what stays resident through a step: frozen weights, LoRA weights, their gradients, AdamW moments."""
    frozen = sum(p.numel() * p.element_size() for p in model.parameters() if not p.requires_grad)
    lora = sum(p.numel() * p.element_size() for p in parameters)
    return {
        "frozen weights": frozen / GIB,
        "LoRA (fp32)": lora / GIB,
        "LoRA grads": lora / GIB,
        "AdamW": 2 * lora / GIB,
    }


def step_arguments(parser: argparse.ArgumentParser, tiny_help: str) -> None:
    """The arguments of both ERFT step benches: the model (real or tiny), clip size, LoRA rank, checkpointing."""
    parser.add_argument("--tiny", action="store_true", help=tiny_help)
    parser.add_argument("--frames", type=int, help="clip frames, 4k+1 (default 81; tiny 9)")
    parser.add_argument("--height", type=int, help="default 480 (tiny 32)")
    parser.add_argument("--width", type=int, help="default 832 (tiny 32)")
    parser.add_argument("--rank", type=int, help="LoRA rank = alpha (default 128; tiny 4)")
    parser.add_argument("--no-checkpointing", dest="checkpointing", action="store_false")


def fill_step_defaults(args: argparse.Namespace) -> None:
    """Fill frames, height, width and rank left open with the real (81×480×832, 128) or tiny (9×32×32, 4) ones."""
    real, tiny = (81, 480, 832, 128), (9, 32, 32, 4)
    for name, default in zip(("frames", "height", "width", "rank"), tiny if args.tiny else real, strict=True):
        setattr(args, name, getattr(args, name) or default)


def ways_to_free_memory(breakdown: dict[str, float], activations: float, tokens: int, checkpointing: bool) -> str:
    """What would bring a step that does not fit under the GPU's memory, with the GiB each part takes."""
    options = [] if checkpointing else ["gradient checkpointing (off here)"]
    optimizer_share = breakdown["AdamW"] + breakdown["LoRA grads"]
    options += [
        f"fewer frames or a smaller size (the {activations:.1f} GiB of activations grow with the {tokens} tokens: "
        "rerun with --frames to see)",
        f"DeepSpeed ZeRO-2 over N GPUs (docs/deepspeed-zero2.json: the {optimizer_share:.1f} GiB of AdamW moments "
        "and gradients / N)",
        f"sharding the {breakdown['frozen weights']:.1f} GiB of frozen weights too (ZeRO-3 or FSDP; no config for "
        "it in docs/, not tried with this trainer), or fp8 base weights (half of it)",
    ]
    return "What frees memory: " + "; ".join(options)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    step_arguments(parser, "the tiny test transformer, fp32 on the CPU")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--steps", type=int, default=5, help="timed steps")
    parser.add_argument("--peak-tflops", type=float, help=f"device peak (default: H100 bf16 {H100_BF16_PEAK_TFLOPS})")
    args = parser.parse_args()
    cpu = args.tiny or not torch.cuda.is_available()
    accelerator = Accelerator(cpu=cpu, mixed_precision="no" if args.tiny else "bf16")
    device = accelerator.device
    dtype = torch.float32 if args.tiny else torch.bfloat16
    fill_step_defaults(args)
    frames, height, width = args.frames, args.height, args.width
    cuda = device.type == "cuda"

    started = time.perf_counter()
    model = tiny_components()["transformer"] if args.tiny else real_transformer(device)
    parameters = add_training_lora(model, args.rank, args.rank, gradient_checkpointing=args.checkpointing)
    optimizer = torch.optim.AdamW(parameters, lr=1e-4)
    model, optimizer = accelerator.prepare(model, optimizer)
    inputs = step_inputs(accelerator.unwrap_model(model), frames, height, width, device, dtype)
    error_shape = tuple(inputs.latents.shape[1:])
    recycler = ErrorRecycler(RecyclingSettings.for_recipe("released", "film"), error_shape, grid_sigmas(50), 0)
    step = ErftStep(accelerator, model, optimizer, parameters, recycler, dtype, max_grad_norm=1.0, seed=0)
    tokens = math.prod(error_shape[1:]) // 4  # the DiT patchifies 1×2×2
    trainable, everything = sum(p.numel() for p in parameters), sum(p.numel() for p in model.parameters())
    print(f"ready in {time.perf_counter() - started:.1f} s on {device}: {frames}×{height}×{width}, {tokens} tokens")
    print(f"trainable {trainable / 1e6:.2f} M of {everything / 1e9:.4g} B parameters")

    for n in range(args.warmup):
        step(inputs, n)
    with FlopCounterMode(display=False, custom_mapping=attention_flop_formulas()) as counter:
        step(inputs, args.warmup)
    step_flops = counter.get_total_flops()
    forward = forward_flops(accelerator.unwrap_model(model), inputs, dtype)
    model_flops = step_flops - (forward if args.checkpointing else 0)

    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    seconds = []
    for n in range(args.steps):
        begun = time.perf_counter()
        step(inputs, args.warmup + 1 + n)
        if cuda:
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - begun)
    per_step = sorted(seconds)[len(seconds) // 2]

    spread = f"min {min(seconds):.3f}, max {max(seconds):.3f}"
    print(f"\nseconds per step, median of {args.steps}: {per_step:.3f} ({spread})")
    print(
        f"forward {forward / 1e12:.4g} TFLOP; step {step_flops / 1e12:.4g} TFLOP counted (hardware), "
        f"{model_flops / 1e12:.4g} TFLOP without the recomputed forward (model)"
    )
    achieved = model_flops / per_step / 1e12
    peak = args.peak_tflops or (H100_BF16_PEAK_TFLOPS if cuda else None)
    line = f"model TFLOP/s {achieved:.4g}; hardware TFLOP/s {step_flops / per_step / 1e12:.4g}"
    if peak:
        line += f"; MFU {100 * achieved / peak:.1f}% of {peak:.0f} TFLOP/s"
    print(line)

    breakdown = memory_breakdown(accelerator.unwrap_model(model), parameters)
    print("\nresident through a step: " + ", ".join(f"{k} {v:.3g} GiB" for k, v in breakdown.items()))
    banking = seconds_to_bank_into_a_full_grid(error_shape)
    print(f"banking one error into a full 500-error grid: {banking:.3f} s on the host (twice per step once full)")
    if not cuda:
        return
    allocated = torch.cuda.max_memory_allocated() / GIB
    reserved = torch.cuda.max_memory_reserved() / GIB
    total = torch.cuda.get_device_properties(device).total_memory / GIB
    activations = allocated - sum(breakdown.values())
    print(
        f"peak allocated {allocated:.1f} GiB, reserved {reserved:.1f} GiB of {total:.1f} GiB "
        f"(activations and workspace ≈ {activations:.1f} GiB)"
    )
    if reserved <= total:
        spare = total - reserved
        print(f"fits: {spare:.1f} GiB to spare (raw mode adds UMT5-XXL ≈ 10.6 GiB in bf16, VAE and CLIP ≈ 2 GiB)")
    else:
        print(
            f"does not fit by {reserved - total:.1f} GiB. "
            + ways_to_free_memory(breakdown, activations, tokens, args.checkpointing)
        )


if __name__ == "__main__":
    main()

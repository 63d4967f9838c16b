"""The DiT forward and one clip's stages, ours against stock diffusers in the same run, each speed lever on and off.

    python bench/speed.py --tiny                       # tiny Wan2.1 built offline, on the CPU (about a minute:
                                                       # inductor compiles; --compile-backend eager: seconds)
    # Part B, one H200: Wan2.1-I2V-14B at real size with random weights, bf16, 81×480×832, 2 timed steps. First
    # `../shared/tools/device-wheels.sh .whl torchao` here, then on the device (carry .whl), one command:
    python3 -m pip install -q --no-index --no-deps --no-compile --target .site .whl/*.whl \
        && export PYTHONPATH=$PWD/.site:$PWD && python3 bench/speed.py --device cuda --out-dir $OUT

What is timed, all on one machine in one process:
- `dit_forward`: one DiT forward at the clip's size. Stock = a copy of the transformer as diffusers runs it
  (eager, attention `native`); ours = the same weights with our same-output levers (`--attention`, regional
  compile); `max_abs_diff` between their outputs. Each attention backend, eager, is timed on the stock copy.
- `clip_stages`: one guided clip (CFG 5) of `--steps` steps. Stock = `WanImageToVideoPipeline.__call__`; ours =
  `ClipSampler` (SVI's condition, our loop). Stages are timed by hooks on the shared encoders and VAE and on each
  transformer: text (UMT5), CLIP image, VAE encode, DiT, VAE decode; `other` is the rest of the clip's wall time.
  Each is warmed up first with a 1-step clip (compiles ours), and our text and frame caches are emptied before the
  timed clip, so it pays every encoder as a new clip with a new prompt would.
- `clip_50_steps_s`: EXTRAPOLATED, not timed: the timed clip's total + (50 − steps)/steps × its DiT time.
- `levers`: batch_cfg on/off (per guided step), the step caches (skipped at real size unless `--cache-steps`:
  random weights say nothing of how often a cache skips), fp8 storage, fp8 storage + group offload with streams
  (the 24 GB mode; streams only on CUDA), fp8 GEMMs (torchao, CUDA ≥ 8.9). Output-changing levers report the
  cosine and max |Δ| of their forward (or latents) against the stock ones.
- `peak_gib`: torch.cuda.max_memory_allocated during each run, less the weights of the models that run does not
  use (both transformers sit on the GPU). On the CPU: null (torch keeps no allocator peak there, and the process'
  RSS would mix both pipelines).

MFU = analytic FLOPs of a forward / seconds / the device's peak (`--peak-tflops`; default 989.4 on an H100/H200,
bf16 dense; none on other devices, never guessed). FLOPs, 2 per multiply-add, per block of width d = heads ·
head_dim, FFN width f, L video tokens = T' · (H/8/2) · (W/8/2) with T' = (frames − 1)/4 + 1, and C = 512 text + the
image tokens: self-attention projections 8·L·d², its core QKᵀ and PV 4·L²·d, cross-attention Q and O 4·L·d², K and V
of the context 4·C·d², its core 4·L·C·d, FFN 4·L·d·f; × the blocks (patch embedding, head and the context MLPs
add < 0.01% and are left out). Wan2.1-I2V-14B at 81×480×832: 1.686 PFLOP (`../shared/reference/anchors.md` B.1).
"""

import argparse
import copy
import datetime
import json
import os
import platform
import sys
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, WanImageToVideoPipeline
from erft_step import H100_BF16_PEAK_TFLOPS, real_transformer
from speed_levers import batch_cfg, memory_modes, step_caches
from speed_measure import (
    StageTimer,
    compared,
    forward_seconds,
    ours_clip,
    peak_gib,
    reset_peak,
    resident_bytes,
    seconds_of,
    stock_clip,
)
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, UMT5Config, UMT5EncoderModel

from svi_model.levers import apply_levers, fp8_gemms, fp8_gemms_unavailable
from svi_model.sampler import TEXT_TOKENS, ClipSampler
from svi_model.schedule import SVIFlowMatchScheduler
from svi_model.tiny import tiny_components, tiny_tokenizer

# google/umt5-xxl's encoder and OpenCLIP ViT-H/14's vision tower, as Wan2.1-I2V-14B-480P-Diffusers configures them.
UMT5_XXL = dict(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64)
UMT5_XXL |= dict(relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="gated-gelu")
CLIP_VIT_H14 = dict(hidden_size=1280, intermediate_size=5120, projection_dim=1024, num_hidden_layers=32)
CLIP_VIT_H14 |= dict(num_attention_heads=16, image_size=224, patch_size=14, hidden_act="gelu")
REAL_CLIP = dict(frames=81, height=480, width=832)
TINY_CLIP = dict(frames=9, height=32, width=48)
# Exact attention kernels worth timing on each device; the fastest exact one on an H100 is cuDNN's (environment.md).
ATTENTION_TRIALS = {
    "cpu": ["native", "_native_math", "_native_flash"],
    "cuda": ["native", "_native_cudnn", "_native_flash", "_native_efficient", "flash", "_flash_3", "sage"],
}
OURS_ATTENTION = {"cpu": "native", "cuda": "_native_cudnn"}
PROMPT, NEGATIVE = "a red ball rolls across the grass, the camera follows it", "blurred, static, low quality"


def analytic_forward_flops(config, frames: int, height: int, width: int, image_tokens: int) -> float:
    """FLOPs of one DiT forward (batch 1) from a WanTransformer3DModel config (the module docstring's formula)."""
    p_t, p_h, p_w = config.get("patch_size", (1, 2, 2))  # (WanTransformer3DModel's default)
    tokens = ((frames - 1) // 4 + 1) // p_t * (height // 8 // p_h) * (width // 8 // p_w)
    d, f = config["num_attention_heads"] * config["attention_head_dim"], config["ffn_dim"]
    context = TEXT_TOKENS + (image_tokens if config.get("image_dim") else 0)
    block = 8 * tokens * d * d + 4 * tokens * tokens * d + 4 * tokens * d * d
    block += 4 * context * d * d + 4 * tokens * context * d + 4 * tokens * d * f
    return float(block * config["num_layers"])


def real_components(device: torch.device) -> dict:
    """Wan2.1-I2V-14B's components at real size with random weights, built on `device` in the dtypes the engine
    loads them in (DiT and UMT5 bf16, CLIP and VAE fp32). The tokenizer is the tiny one: its ids are valid UMT5 ids."""
    default = torch.get_default_dtype()
    with torch.device(device):
        torch.set_default_dtype(torch.bfloat16)
        try:
            text_encoder = UMT5EncoderModel(UMT5Config(**UMT5_XXL))
        finally:
            torch.set_default_dtype(default)
        image_encoder = CLIPVisionModel(CLIPVisionConfig(**CLIP_VIT_H14))
        vae = AutoencoderKLWan()
    return dict(
        tokenizer=tiny_tokenizer(),
        text_encoder=text_encoder.eval(),
        image_encoder=image_encoder.eval(),
        image_processor=CLIPImageProcessor(size={"height": 224, "width": 224}, do_center_crop=False),
        transformer=real_transformer(device),
        vae=vae.eval(),
    )


def device_label(device: torch.device, tiny: bool) -> str:
    """`cpu-tiny`, `h200`, … (the results file's name)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device).lower().split()
        label = next((word for word in name if word[:1] in "ahlbv" and word[1:2].isdigit()), device.type)
    else:
        label = device.type
    return f"{label}-tiny" if tiny else label


def cpu_name() -> str:
    """The CPU, its threads and how busy the machine was (other processes' load skews CPU timings)."""
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"cpu ({platform.machine()}), {torch.get_num_threads()} torch threads, load average {load} at the start"


def default_peak_tflops(device: torch.device) -> float | None:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    return H100_BF16_PEAK_TFLOPS if ("H100" in name or "H200" in name) else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="the tiny test model at 9×32×48 (default: real size)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=2, help="timed denoising steps of a clip (extrapolated to 50)")
    parser.add_argument("--reps", type=int, help="timed forwards per figure, their median reported (tiny 3, real 2)")
    parser.add_argument("--threads", type=int, help="CPU threads (1 on a loaded 2-core box: OpenMP spins otherwise)")
    parser.add_argument("--attention", help="our attention backend (default: native on the CPU, cuDNN on CUDA)")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend for ours ('none': off)")
    parser.add_argument("--cache-steps", type=int, help="steps of the step-cache runs (default: tiny 8, real 0: off)")
    parser.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak (default: 989.4 on H100/H200)")
    parser.add_argument("--out-dir", type=Path, default=Path("bench/results"))
    args = parser.parse_args()

    device = torch.device(args.device)
    args.reps = args.reps or (3 if args.tiny else 2)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    clip = TINY_CLIP if args.tiny else REAL_CLIP
    components = tiny_components() if args.tiny else real_components(device)
    components |= {"scheduler": SVIFlowMatchScheduler()}
    pipe = WanImageToVideoPipeline(**components).to(device)
    stock_pipe = WanImageToVideoPipeline(**components | {"transformer": copy.deepcopy(pipe.transformer)})
    for each in (pipe, stock_pipe):
        each.set_progress_bar_config(disable=True)
    ours, stock = pipe.transformer, stock_pipe.transformer
    peak_tflops = args.peak_tflops or default_peak_tflops(device)
    config = dict(ours.config)
    vision = pipe.image_encoder.config
    image_tokens = (vision.image_size // vision.patch_size) ** 2 + 1  # patches + the class token: 257 for ViT-H/14
    flops = analytic_forward_flops(config, clip["frames"], clip["height"], clip["width"], image_tokens)
    date = datetime.date.today().isoformat()
    path = args.out_dir / f"speed-{device_label(device, args.tiny)}-{date}.json"
    figures = {
        "device": device_label(device, args.tiny),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "model": "tiny random Wan2.1-I2V" if args.tiny else "Wan2.1-I2V-14B, random weights, bf16",
        "clip": clip,
        "torch": torch.__version__,
        "command": "python bench/speed.py " + " ".join(sys.argv[1:]),
        "flops_per_forward": flops,
        "peak_tflops": peak_tflops,
        "peak_memory": "torch.cuda.max_memory_allocated less idle models" if device.type == "cuda" else None,
    }

    def write() -> None:  # after each part: a run cut short still leaves what it measured
        args.out_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(figures, indent=2) + "\n")

    def mfu(seconds: float) -> float | None:
        return None if peak_tflops is None else round(flops / seconds / (peak_tflops * 1e12), 4)

    # ---- the DiT forward ----------------------------------------------------------------------------------------
    dtype, generator = ours.dtype, torch.Generator().manual_seed(0)
    latent = (1, 36, (clip["frames"] - 1) // 4 + 1, clip["height"] // 8, clip["width"] // 8)
    inputs = dict(
        hidden_states=torch.randn(latent, generator=generator).to(device, dtype),
        timestep=torch.tensor([500.0], device=device),
        encoder_hidden_states=torch.randn(1, TEXT_TOKENS, config["text_dim"], generator=generator).to(device, dtype),
        encoder_hidden_states_image=torch.randn(1, image_tokens, config["image_dim"], generator=generator).to(
            device, dtype
        ),
    )
    stock.set_attention_backend("native")
    stock_s, stock_out = forward_seconds(stock, inputs, device, args.reps)
    attention = {}
    for backend in ATTENTION_TRIALS[device.type]:
        try:
            stock.set_attention_backend(backend)
            seconds, output = forward_seconds(stock, inputs, device, args.reps)
            attention[backend] = {"s": round(seconds, 4), "mfu": mfu(seconds), **compared(output, stock_out)}
        except Exception as error:  # a kernel this device or install lacks: say which and why, go on
            attention[backend] = {"error": f"{type(error).__name__}: {str(error)[:300]}"}
    stock.set_attention_backend("native")
    our_levers = dict(attention_backend=args.attention or OURS_ATTENTION[device.type])
    our_levers["compile"] = args.compile_backend != "none"
    apply_levers(ours, **our_levers, compile_backend=args.compile_backend)
    with torch.no_grad():
        first_s, _ = seconds_of(lambda: ours(**inputs, return_dict=False), device)
    ours_s, ours_out = forward_seconds(ours, inputs, device, args.reps)
    figures["dit_forward"] = {
        "ours_s": round(ours_s, 4),
        "stock_s": round(stock_s, 4),
        "ours_mfu": mfu(ours_s),
        "stock_mfu": mfu(stock_s),
        "max_abs_diff": compared(ours_out, stock_out)["max_abs_diff"],
        "ours_levers": our_levers | {"compile_backend": args.compile_backend},
        "ours_first_forward_s": round(first_s, 2),  # it compiles
        "stock_attention_backends": attention,
    }
    write()
    print(
        f"DiT forward: ours {ours_s:.4f} s, stock {stock_s:.4f} s, max |Δ| {figures['dit_forward']['max_abs_diff']:.2e}"
    )

    # ---- a clip's stages ------------------------------------------------------------------------------------------
    sampler = ClipSampler(pipe, negative_prompt=NEGATIVE)
    timer = StageTimer(pipe, [ours, stock], device)
    frames = torch.randint(0, 256, (4, clip["height"], clip["width"], 3), dtype=torch.uint8, generator=generator)
    runs = {  # (clip, the transformer it leaves idle on the device)
        "stock": (
            lambda k, steps: stock_clip(stock_pipe, frames[k], f"{PROMPT}, take {k}", NEGATIVE, clip, steps),
            ours,
        ),
        "ours": (lambda k, steps: ours_clip(sampler, frames[2 + k], f"{PROMPT}, take {k}", clip, steps), stock),
    }
    stages, totals, peaks = {}, {}, {}
    for name, (run, idle) in runs.items():
        run(0, 1)  # warm-up (and our compile at this shape)
        timer.reset()
        reset_peak(device)
        # A new frame and prompt: ours pays every encoder but the negative prompt's, as any clip after a film's first.
        totals[name], _ = seconds_of(lambda run=run: run(1, args.steps), device)
        stages[name] = timer.stages(totals[name])
        peaks[name] = peak_gib(device, resident_bytes(idle))
    extrapolated = {name: totals[name] + (50 - args.steps) / args.steps * stages[name]["dit"] for name in runs}
    figures["clip_stages"] = {"steps": args.steps, "guidance_scale": 5.0, **stages}
    figures["clip_50_steps_s"] = {name: round(seconds, 2) for name, seconds in extrapolated.items()}
    figures["clip_50_steps_s"]["extrapolated"] = f"the timed {args.steps}-step clip + (50 - steps)/steps x its DiT time"
    figures["peak_gib"] = peaks
    write()
    print(f"clip, 50 steps (extrapolated): ours {extrapolated['ours']:.2f} s, stock {extrapolated['stock']:.2f} s")

    # ---- levers on and off ----------------------------------------------------------------------------------------
    levers = figures["levers"] = {"batch_cfg": attempt(lambda: batch_cfg(sampler, frames[0], clip, 1, device))}
    cache_steps = args.cache_steps if args.cache_steps is not None else (8 if args.tiny else 0)
    if cache_steps:
        levers["step_caches"] = attempt(lambda: step_caches(stock_pipe, frames[0], clip, cache_steps, device))
    else:
        levers["step_caches"] = "not run: random weights say nothing of how often a cache skips (--cache-steps N)"
    write()

    def stock_forward(transformer) -> tuple[float, dict]:
        seconds, output = forward_seconds(transformer, inputs, device, args.reps)
        return seconds, {"mfu": mfu(seconds), **compared(output, stock_out)}

    idle = [ours, pipe.text_encoder, pipe.image_encoder, pipe.vae]
    levers["memory_modes"] = attempt(lambda: memory_modes(stock, stock_forward, idle, device))
    weights = None if device.type == "cpu" else round(resident_bytes(ours) / 2**30, 3)
    levers["full_memory_forward"] = {"s": round(stock_s, 4), "dit_weights_on_device_gib": weights}
    if fp8_gemms_unavailable(device) is None:

        def fp8_gemm_forward() -> dict:
            fp8_gemms(ours)  # last: it changes our DiT in place (and it compiles again for the float8 weights)
            seconds, comparison = stock_forward(ours)
            return {"s": round(seconds, 4), **comparison}

        levers["fp8_gemm_forward"] = attempt(fp8_gemm_forward)
    else:
        levers["fp8_gemm_forward"] = "not run: needs torchao and CUDA compute capability >= 8.9"
    write()
    print(json.dumps(figures, indent=2))
    print(f"written: {path}")


def attempt(measure) -> dict:
    """What `measure()` returns, or the error it raised: one lever that fails on a device (a kernel, a package, a
    combination of hooks never run there) must not cost the figures of the others in a run that cannot be repeated
    at will."""
    try:
        return measure()
    except Exception as error:
        return {"error": f"{type(error).__name__}: {str(error)[:300]}"}


if __name__ == "__main__":
    main()

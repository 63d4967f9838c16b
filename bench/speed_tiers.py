"""DiT forwards and time per clip for each speed tier on the two-expert engine, against stock diffusers.

    python bench/speed_tiers.py                                   # tiny Wan2.2 built offline, CPU
    python bench/speed_tiers.py --out bench/results/speed-tiers-cpu-$(date +%F).json
    python bench/speed_tiers.py --model weights/Wan2.2-I2V-A14B-Diffusers --device cuda --frames 81 \
        --height 480 --width 832 --peak-tflops 989.4                 # the real model on a GPU

For each tier (`svi_model.speeds`) the engine renders `--clips` chained clips (Pro mode) and the bench counts the
forwards of each expert (hooks on the two transformers) and times them. The same components then run diffusers'
own `WanImageToVideoPipeline.__call__` for one clip at the quality tier's steps and CFG (its expert switch is the
folder's `boundary_ratio`, 0.9), so the two are compared in one run on one machine. The forward count is the figure
that carries to real size (a clip costs about forwards × one forward); the FLOPs of one forward come from torch's
FLOP counter, and MFU is reported when `--peak-tflops` says what the device can do (there is no honest peak for a
shared CPU, so none is assumed).
"""

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from diffusers import WanImageToVideoPipeline
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from pipeline.synthesize import EngineSpec, loaded_sampler
from svi_model.chain import FilmRenderer
from svi_model.modes import mode_settings
from svi_model.sampler import TEXT_TOKENS, ClipSampler
from svi_model.schedule import SVIFlowMatchScheduler
from svi_model.speeds import SPEEDS
from svi_model.tiny import tiny_components


def engine(args: argparse.Namespace) -> ClipSampler:
    if args.model is not None:
        return loaded_sampler(EngineSpec(model=args.model, device=args.device))
    pipe = WanImageToVideoPipeline(**tiny_components(wan22=True) | {"scheduler": SVIFlowMatchScheduler()})
    pipe.set_progress_bar_config(disable=True)
    return ClipSampler(pipe.to(args.device))


def counting(pipe: WanImageToVideoPipeline) -> dict[str, int]:
    """Forwards of each expert, counted from now on."""
    calls = {"high": 0, "low": 0}
    pipe.transformer.register_forward_hook(lambda *_: calls.__setitem__("high", calls["high"] + 1))
    pipe.transformer_2.register_forward_hook(lambda *_: calls.__setitem__("low", calls["low"] + 1))
    return calls


def forward_flops(sampler: ClipSampler, frames: int, height: int, width: int) -> int:
    """FLOPs of one DiT forward at this clip size (torch's counter, one conditional pass)."""
    pipe = sampler.pipe
    latent = (1, 36, (frames - 1) // 4 + 1, height // 8, width // 8)
    device, dtype = sampler.device, pipe.transformer.dtype
    text = torch.zeros(1, TEXT_TOKENS, pipe.transformer.config.text_dim, device=device, dtype=dtype)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        pipe.transformer(
            hidden_states=torch.zeros(latent, device=device, dtype=dtype),
            timestep=torch.tensor([500.0], device=device),
            encoder_hidden_states=text,
            return_dict=False,
        )
    return counter.get_total_flops()


def timed(run, device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    run()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="a Wan2.2-I2V-A14B folder (default: the tiny one, built here)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--clips", type=int, default=2)
    parser.add_argument("--frames", type=int, default=9)
    parser.add_argument("--height", type=int, default=32)
    parser.add_argument("--width", type=int, default=48)
    parser.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak, for MFU")
    parser.add_argument("--out", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args()

    sampler = engine(args)
    calls = counting(sampler.pipe)
    reference = torch.randint(0, 256, (args.height, args.width, 3), dtype=torch.uint8)
    flops = forward_flops(sampler, args.frames, args.height, args.width)
    figures = {"device": args.device if args.model else f"cpu ({platform.machine()}), tiny Wan2.2", "tiers": {}}
    for speed, recipe in SPEEDS.items():
        settings = mode_settings("pro", num_frames=args.frames, **recipe)
        renderer = FilmRenderer(sampler, settings, reference, ["a red ball rolls across the grass"])
        calls.update(high=0, low=0)
        seconds = timed(lambda renderer=renderer: list(renderer.clips(args.clips)), args.device) / args.clips
        forwards = (calls["high"] + calls["low"]) / args.clips
        figures["tiers"][speed] = tier = {
            "steps": settings.steps,
            "forwards_per_clip": forwards,
            "high_noise_forwards": calls["high"] / args.clips,
            "seconds_per_clip": round(seconds, 3),
            "achieved_tflops": round(flops * forwards / seconds / 1e12, 6),
        }
        if args.peak_tflops:
            tier["mfu"] = round(tier["achieved_tflops"] / args.peak_tflops, 4)

    quality = mode_settings("pro", **SPEEDS["quality"])
    image = Image.fromarray(reference.numpy())
    calls.update(high=0, low=0)
    stock = sampler.pipe
    seconds = timed(
        lambda: stock(
            image=image,
            prompt="a red ball rolls across the grass",
            height=args.height,
            width=args.width,
            num_frames=args.frames,
            num_inference_steps=quality.steps,
            guidance_scale=quality.guidance_scale,
            output_type="latent",
        ),
        args.device,
    )
    figures["stock_diffusers_quality"] = {
        "forwards_per_clip": calls["high"] + calls["low"],
        "high_noise_forwards": calls["high"],
        "seconds_per_clip": round(seconds, 3),
        "boundary_ratio": stock.config.boundary_ratio,
    }
    figures["flops_per_forward"] = flops
    for name, tier in figures["tiers"].items():
        line = f"{name:10} {tier['forwards_per_clip']:5.0f} forwards ({tier['high_noise_forwards']:.0f} high-noise)"
        line += f"  {tier['seconds_per_clip']:8.3f} s/clip  {tier['achieved_tflops']:.4f} TFLOP/s"
        print(line + (f"  MFU {tier['mfu']:.1%}" if "mfu" in tier else ""))
    stock_figures = figures["stock_diffusers_quality"]
    print(
        f"{'stock':10} {stock_figures['forwards_per_clip']:5d} forwards ({stock_figures['high_noise_forwards']} "
        f"high-noise)  {stock_figures['seconds_per_clip']:8.3f} s/clip  (diffusers' own loop, boundary "
        f"{stock_figures['boundary_ratio']})"
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        figures["command"] = "python bench/speed_tiers.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None and k != "out"
        )
        args.out.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()

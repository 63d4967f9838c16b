"""How `bench/speed.py` measures: device-synchronised seconds, peak memory less the models a run leaves idle, the
seconds of each stage of a clip, and the two clips it compares (ours and stock diffusers')."""

import time
from collections import defaultdict
from collections.abc import Callable

import torch
from diffusers import WanImageToVideoPipeline
from PIL import Image

from svi_model.conditioning import condition_video
from svi_model.sampler import ClipCondition, ClipOutput, ClipSampler

STAGES = ("text", "clip_image", "vae_encode", "dit", "vae_decode")
GIB = 2**30


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_of(run: Callable[[], object], device: torch.device) -> tuple[float, object]:
    """Wall seconds of `run()` (the device's queued work included) and what it returned."""
    sync(device)
    start = time.perf_counter()
    result = run()
    sync(device)
    return time.perf_counter() - start, result


def forward_seconds(transformer, inputs: dict, device: torch.device, reps: int) -> tuple[float, torch.Tensor]:
    """The median of `reps` timed DiT forwards after an untimed one, and the output `[1, 16, T, h, w]` (float32)."""
    with torch.no_grad():
        output = transformer(**inputs, return_dict=False)[0]
        times = [seconds_of(lambda: transformer(**inputs, return_dict=False), device)[0] for _ in range(reps)]
    return sorted(times)[len(times) // 2], output.float()


def compared(output: torch.Tensor, stock: torch.Tensor) -> dict:
    """max |Δ| and cosine of an output against the stock one."""
    cosine = torch.nn.functional.cosine_similarity(output.flatten(), stock.flatten(), dim=0).item()
    return {"max_abs_diff": (output - stock).abs().max().item(), "cosine": cosine}


def resident_bytes(*modules: torch.nn.Module) -> int:
    """Bytes of the modules' parameters and buffers on an accelerator (what sits idle through another's run)."""
    tensors = [t for m in modules for t in (*m.parameters(), *m.buffers()) if t.device.type != "cpu"]
    return sum(t.numel() * t.element_size() for t in tensors)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device, idle_bytes: int = 0) -> float | None:
    """GiB allocated at the peak since `reset_peak`, less `idle_bytes`; None off CUDA (no allocator peak there)."""
    if device.type != "cuda":
        return None
    return round((torch.cuda.max_memory_allocated(device) - idle_bytes) / GIB, 2)


class StageTimer:
    """Seconds spent in each stage, from hooks (a device sync on each side) on the shared UMT5, CLIP and VAE
    (`encode`, `decode`) and on each transformer given. Both pipelines call these same modules."""

    def __init__(self, pipe: WanImageToVideoPipeline, transformers: list[torch.nn.Module], device: torch.device):
        self.device = device
        self.seconds: dict[str, float] = defaultdict(float)
        self._started: dict[int, float] = {}
        for stage, module in [("text", pipe.text_encoder), ("clip_image", pipe.image_encoder)]:
            self._hook(stage, module)
        for transformer in transformers:
            self._hook("dit", transformer)
        for stage, method in (("vae_encode", "encode"), ("vae_decode", "decode")):
            setattr(pipe.vae, method, self._timed(stage, getattr(pipe.vae, method)))

    def _now(self) -> float:
        sync(self.device)
        return time.perf_counter()

    def _hook(self, stage: str, module: torch.nn.Module) -> None:
        def start(*_):
            self._started[id(module)] = self._now()

        def stop(*_):
            self.seconds[stage] += self._now() - self._started.pop(id(module))

        module.register_forward_pre_hook(start)
        module.register_forward_hook(stop)

    def _timed(self, stage: str, method):
        def timed(*args, **kwargs):
            start = self._now()
            try:
                return method(*args, **kwargs)
            finally:
                self.seconds[stage] += self._now() - start

        return timed

    def reset(self) -> None:
        self.seconds.clear()

    def stages(self, total: float) -> dict[str, float]:
        """Seconds per stage, `other` (scheduler, concatenations, host work) and the `total` they add up to."""
        timed = {stage: round(self.seconds[stage], 4) for stage in STAGES}
        return timed | {"other": round(total - sum(self.seconds.values()), 4), "total": round(total, 4)}


def stock_clip(pipe: WanImageToVideoPipeline, frame: torch.Tensor, prompt: str, negative: str, clip: dict, steps: int):
    """diffusers' own I2V call: one guided (CFG 5) clip from uint8 `frame` `[H, W, 3]`, decoded to numpy."""
    return pipe(
        image=Image.fromarray(frame.numpy()),
        prompt=prompt,
        negative_prompt=negative,
        height=clip["height"],
        width=clip["width"],
        num_frames=clip["frames"],
        num_inference_steps=steps,
        guidance_scale=5.0,
        generator=torch.Generator("cpu").manual_seed(0),
        output_type="np",
    )


def ours_clip(sampler: ClipSampler, frame: torch.Tensor, prompt: str, clip: dict, steps: int) -> ClipOutput:
    """The engine's clip from uint8 `frame` `[H, W, 3]`: SVI-Film's first-clip condition, encoded, then rendered
    (CFG 5, the sampler's negative prompt), decoded to uint8."""
    condition = ClipCondition(
        latents=sampler.encode(condition_video(frame[None], clip["frames"])), image_encoder_frame=frame
    )
    return sampler.render(prompt, 0, condition, steps=steps, guidance_scale=5.0)

"""Peak memory and FLOPs of one ERFT step at real size, estimated on any machine: no GPU, no weights, no RAM.

    python bench/erft_memory_estimate.py                        # Wan2.1-I2V-14B, 81×480×832, checkpointing
    python bench/erft_memory_estimate.py --no-checkpointing --frames 41
    python bench/erft_memory_estimate.py --out bench/results/erft-estimate-$(date +%F).json
    python bench/erft_memory_estimate.py --tiny                 # the tiny test transformer: exercises this script

Every tensor is a FakeTensor: shapes and dtypes, no storage. The transformer is built on the meta device with SVI's
LoRA (rank = alpha = 128, fp32 on the bf16 base), then its parameters become fake CPU tensors, and the trainer's
own device-side step runs on them: `ErftStep.update` (DiT forward under accelerate's bf16 autocast, weighted MSE,
backward through gradient checkpointing, gradient clipping, AdamW). A dispatch mode adds up the bytes of every live
tensor storage and keeps the peak: what `torch.cuda.max_memory_allocated` reports, but for its rounding of blocks
to 512 bytes. The allocator's fragmentation, the CUDA context and library workspaces come on top, and only a GPU
shows them (`bench/erft_step.py` measures them on one). Attention runs as the CPU's fused flash kernel, which, like
CUDA's flash and cuDNN kernels, keeps the output and the log-sum-exp for the backward and never the attention
matrix. Autocast is the CPU's, whose op lists differ from CUDA's in a few ops; Wan's matmuls, convolutions and
attention run in bf16 under both, and its LayerNorms compute in fp32 whatever the autocast.

Left out: error injection and banking (a few latent-sized tensors, 8.4 MiB each at 81×480×832; the banks live
in host memory), and the encoders (a latent-cache run loads none). The second step is the one reported: the
first creates AdamW's moments.
"""

import argparse
import contextlib
import json
import time
import weakref
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from diffusers import WanTransformer3DModel
from erft_step import (
    GIB,
    H100_BF16_PEAK_TFLOPS,
    WAN21_I2V_14B,
    attention_flop_formulas,
    fill_step_defaults,
    forward_flops,
    memory_breakdown,
    real_transformer,
    step_arguments,
    step_inputs,
    ways_to_free_memory,
)
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode
from torch.utils.weak import WeakIdKeyDictionary

from svi_model.erft.error_bank import grid_sigmas
from svi_model.erft.lora_training import add_training_lora
from svi_model.erft.recycling import ErrorRecycler, PreparedStep, RecyclingSettings
from svi_model.erft.step import ErftStep, StepInputs
from svi_model.tiny import tiny_components

H100_USABLE_GIB = 78.0  # what the lent H100 offers, per the device tool's README


class LiveTensorBytes(TorchDispatchMode):
    """Counts the bytes of live tensor storages made by ops run inside it, plus those `add`ed; keeps the peak.

    A storage is counted once however many views share it, and leaves the count when Python frees it.
    """

    def __init__(self):
        super().__init__()
        self.counted = WeakIdKeyDictionary()
        self.now = self.peak = 0

    def add(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        if storage in self.counted:
            return
        size = storage.nbytes()
        self.counted[storage] = size
        self.now += size
        self.peak = max(self.peak, self.now)
        weakref.finalize(storage, self._free, size)

    def _free(self, size: int) -> None:
        self.now -= size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        output = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(output):
            if isinstance(leaf, torch.Tensor):
                self.add(leaf)
        return output


def make_parameters_fake(model: torch.nn.Module) -> None:
    """Replace every meta parameter and buffer of `model` by a fake CPU tensor of its shape and dtype; call under
    the FakeTensorMode. Assigned directly: `Module.to` cannot swap a fake tensor in."""
    for module in model.modules():
        for store in (module._parameters, module._buffers):
            for name, tensor in store.items():
                if tensor is None:
                    continue
                fake = torch.empty(tensor.shape, dtype=tensor.dtype, device="cpu")
                is_parameter = isinstance(tensor, torch.nn.Parameter)
                store[name] = torch.nn.Parameter(fake, tensor.requires_grad) if is_parameter else fake


def tiny_transformer_config() -> dict:
    """The tiny test transformer's constructor arguments (`svi_model.tiny`)."""
    config = tiny_components()["transformer"].config
    return {key: value for key, value in config.items() if not key.startswith("_")}


def clean_step(inputs: StepInputs, sigma: float) -> tuple[PreparedStep, torch.Tensor, torch.Tensor]:
    """A step's injected inputs when nothing is injected (same shapes as any other), its σ `[1]` and grid
    index `[1]`."""
    noise = torch.randn_like(inputs.latents)
    prepared = PreparedStep(
        noisy_latents=(1 - sigma) * inputs.latents + sigma * noise,
        noise=noise,
        condition_latents=inputs.condition_latents,
        clean=True,
        grid=torch.zeros(1, dtype=torch.int64),
    )
    return prepared, torch.tensor([sigma]), torch.tensor([500])


def lora_training_step(
    model: WanTransformer3DModel, inputs: StepInputs, rank: int, checkpointing: bool, fake_mode: FakeTensorMode | None
) -> tuple[ErftStep, list[torch.nn.Parameter]]:
    """SVI's LoRA on `model`, AdamW over it and accelerate's bf16 autocast on the CPU, as the trainer's ErftStep
    (without banks: `update` never touches them). With `fake_mode`, `model` must be on the meta device; its
    parameters leave as fake CPU tensors."""
    add_training_lora(model, rank, rank, gradient_checkpointing=checkpointing)
    with fake_mode or contextlib.nullcontext():
        if fake_mode:
            make_parameters_fake(model)
        parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]
        optimizer = torch.optim.AdamW(parameters, lr=1e-4)
    AcceleratorState._reset_state()  # as the trainer does: another Accelerator may have run in this process
    accelerator = Accelerator(cpu=True, mixed_precision="bf16", device_placement=False)
    model, optimizer = accelerator.prepare(model, optimizer)
    recycler = ErrorRecycler(RecyclingSettings(enabled=False), tuple(inputs.latents.shape[1:]), grid_sigmas(50), 0)
    return ErftStep(accelerator, model, optimizer, parameters, recycler, torch.bfloat16, 1.0, seed=0), parameters


def peak_step_bytes(step: ErftStep, inputs: StepInputs, fake_mode: FakeTensorMode | None) -> int:
    """Peak bytes of live tensors through the second of two `step.update`s on `inputs` (the first creates
    AdamW's moments), counting the model's parameters and buffers and the inputs as live from the start."""
    tracker = LiveTensorBytes()
    model = step.accelerator.unwrap_model(step.model)
    for tensor in [*model.parameters(), *model.buffers(), *vars(inputs).values()]:
        tracker.add(tensor)
    with fake_mode or contextlib.nullcontext(), tracker:
        for _ in range(2):
            tracker.peak = tracker.now
            step.update(inputs, *clean_step(inputs, 0.5))
    return tracker.peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    step_arguments(parser, "the tiny test transformer's config")
    parser.add_argument("--gpu-gib", type=float, default=H100_USABLE_GIB, help="memory the GPU offers, GiB")
    parser.add_argument("--out", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()
    started = time.perf_counter()
    fill_step_defaults(args)

    model = real_transformer(torch.device("meta"), tiny_transformer_config() if args.tiny else WAN21_I2V_14B)
    fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
    with fake_mode:
        inputs = step_inputs(model, args.frames, args.height, args.width, torch.device("cpu"), torch.bfloat16)
    step, parameters = lora_training_step(model, inputs, args.rank, args.checkpointing, fake_mode)
    peak = peak_step_bytes(step, inputs, fake_mode) / GIB
    with fake_mode, FlopCounterMode(display=False, custom_mapping=attention_flop_formulas()) as counter:
        step.update(inputs, *clean_step(inputs, 0.5))
    with fake_mode:
        forward = forward_flops(model, inputs, torch.bfloat16)
    step_flops = counter.get_total_flops()
    model_flops = step_flops - (forward if args.checkpointing else 0)
    error_shape = inputs.latents.shape[1:]

    breakdown = memory_breakdown(model, parameters)
    resident = sum(breakdown.values()) - breakdown["LoRA grads"]  # set to None after every update
    tokens = error_shape[1] * error_shape[2] * error_shape[3] // 4
    print(
        f"estimated in {time.perf_counter() - started:.0f} s: {args.frames}×{args.height}×{args.width}, "
        f"{tokens} tokens, rank {args.rank}, gradient checkpointing {'on' if args.checkpointing else 'off'}"
    )
    print("resident through a step: " + ", ".join(f"{k} {v:.3g} GiB" for k, v in breakdown.items()))
    print(f"peak live tensors {peak:.1f} GiB: activations, gradients and temporaries ≈ {peak - resident:.1f} GiB")
    print(
        f"FLOPs per step: {step_flops / 1e15:.3f} PFLOP counted (hardware), {model_flops / 1e15:.3f} PFLOP "
        f"without the recomputed forward (model); forward {forward / 1e15:.3f} PFLOP"
    )
    floor = step_flops / (H100_BF16_PEAK_TFLOPS * 1e12)
    print(f"lower bound at 100% of the H100's {H100_BF16_PEAK_TFLOPS} bf16 TFLOP/s: {floor:.1f} s per step")
    spare = args.gpu_gib - peak
    if spare >= 0:
        print(f"fits in {args.gpu_gib:.0f} GiB with {spare:.1f} GiB left for the allocator's slack and CUDA's own")
    else:
        print(
            f"does not fit in {args.gpu_gib:.0f} GiB by {-spare:.1f} GiB. "
            + ways_to_free_memory(breakdown, peak - resident, tokens, args.checkpointing)
        )
    if args.out:
        figures = {
            "method": "fake tensors on the CPU (torch FakeTensorMode); live storage bytes; FlopCounterMode",
            "frames": args.frames,
            "height": args.height,
            "width": args.width,
            "tokens": tokens,
            "lora_rank": args.rank,
            "gradient_checkpointing": args.checkpointing,
            "resident_gib": {k: round(v, 3) for k, v in breakdown.items()},
            "peak_live_tensors_gib": round(peak, 2),
            "step_flop_hardware": step_flops,
            "step_flop_model": model_flops,
            "forward_flop": forward,
            "seconds_per_step_at_100pct_mfu": round(floor, 2),
            "torch": torch.__version__,
            "command": "python bench/erft_memory_estimate.py"
            + (" --tiny" if args.tiny else "")
            + ("" if args.checkpointing else " --no-checkpointing")
            + f" --frames {args.frames} --height {args.height} --width {args.width} --rank {args.rank}",
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()

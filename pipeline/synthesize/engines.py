"""The engine: which model renders the clips (`EngineSpec`: model folder, LoRA, placement), and the process-wide
registry of loaded samplers that keeps it in memory across clips.

Words: the *engine* is what the spec names (its identity goes into cache keys and the manifest); the *sampler* is
the loaded `ClipSampler` it becomes, which `FilmRenderer` renders with. A Wan2.1-I2V-14B load takes minutes and
~40 GB; every clip task of a film (and of the next film in the same process) reuses the loaded sampler. The
registry is keyed by everything that changes the loaded weights.
"""

import threading
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from svi_model.sampler import ClipSampler

from ..hashing import file_sha256, folder_fingerprint
from .speed_options import SpeedOptions

Dtype = Literal["auto", "bf16", "fp32"]
Offload = Literal["none", "model", "group", "experts"]


class StackedLora(BaseModel):
    """A LoRA on top of the SVI LoRA (e.g. a 4-step distill LoRA), with its strength on each expert (0: not
    applied there). Written `FILE[:HIGH[:LOW]]`: the strength on the (high-noise) `transformer`, then on the
    low-noise `transformer_2` (default: the same)."""

    model_config = ConfigDict(frozen=True)

    file: Path
    high: float = Field(1.0, ge=0.0, le=2.0)
    low: float | None = Field(None, ge=0.0, le=2.0)

    @classmethod
    def parse(cls, text: str) -> "StackedLora":
        """`FILE[:HIGH[:LOW]]` → the LoRA; a ValueError names what does not parse."""
        parts = text.split(":")
        numbers = []
        while len(parts) > 1 and len(numbers) < 2:
            try:
                numbers.insert(0, float(parts[-1]))
            except ValueError:
                break
            parts.pop()
        if not ":".join(parts):
            raise ValueError(
                f"stacked LoRA {text!r}: write FILE, FILE:STRENGTH or FILE:HIGH:LOW (e.g. x.safetensors:0.5:1)"
            )
        return cls(file=":".join(parts), **dict(zip(("high", "low"), numbers, strict=False)))

    def strengths(self) -> tuple[float, float]:
        """(on the high-noise expert, on the low-noise one)."""
        return self.high, self.high if self.low is None else self.low


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


class EngineSpec(SpeedOptions):
    """The model folder, the LoRA, how they are placed on the hardware, and the speed levers (`SpeedOptions`)."""

    model_config = ConfigDict(protected_namespaces=(), frozen=True)

    model: Path
    lora: Path | None = Field(None, description="the SVI LoRA; with two experts, the high-noise expert's")
    lora_scale: float = 1.0
    lora_2: Path | None = Field(None, description="two experts: the low-noise expert's SVI LoRA")
    lora_scale_2: float = 1.0
    stacked_loras: tuple[StackedLora, ...] = Field((), description="LoRAs on top of the SVI LoRA, in order")
    fuse_lora: bool = True
    device: str = _default_device()
    dtype: Dtype = "auto"
    offload: Offload = "none"
    vae_tiling: bool = False
    boundary: float | None = Field(
        None, gt=0.0, lt=1.0, description="two experts: where the low-noise one takes over, ·1000 (default 0.875)"
    )

    @model_validator(mode="after")
    def _fp8_gemm_on_the_gpu(self):
        if self.fp8 == "gemm" and self.offload == "group":
            raise ValueError("fp8 gemm quantises the DiT on the GPU; with offload group use fp8 storage")
        return self

    @field_validator("stacked_loras", mode="before")
    @classmethod
    def _parsed(cls, loras):
        return tuple(StackedLora.parse(lora) if isinstance(lora, str) else lora for lora in loras)

    @property
    def torch_dtype(self) -> torch.dtype:
        """DiT and T5 dtype: bf16 on accelerators by default, fp32 on the CPU (bf16 matmuls are slow there)."""
        if self.dtype == "bf16" or (self.dtype == "auto" and self.device != "cpu"):
            return torch.bfloat16
        return torch.float32

    def identity(self) -> dict:
        """What decides the pixels (not where they are computed): for cache keys and manifests."""
        return {
            "model": folder_fingerprint(self.model),
            "lora": None if self.lora is None else file_sha256(self.lora),
            "lora_scale": self.lora_scale,
            "fuse_lora": self.fuse_lora,
            "dtype": str(self.torch_dtype),
            "vae_tiling": self.vae_tiling,
            # Only when set: a one-expert model's identity (and every clip key made before) stays as it was.
            **({"boundary": self.boundary} if self.boundary is not None else {}),
            **({"lora_2": file_sha256(self.lora_2), "lora_scale_2": self.lora_scale_2} if self.lora_2 else {}),
            **(
                {"stacked_loras": [[file_sha256(s.file), *s.strengths()] for s in self.stacked_loras]}
                if self.stacked_loras
                else {}
            ),
            **({"output_changing": self.output_changing()} if self.output_changing() else {}),
        }


def _loras_per_expert(spec: EngineSpec, pipe) -> list[tuple[torch.nn.Module, Path, float]]:
    """(expert, LoRA file, strength) for each LoRA the spec names. SVI 2.0 trains one LoRA per expert, so a
    two-expert model with an SVI LoRA on only one of them would render a film neither LoRA was made for."""
    low_noise = getattr(pipe, "transformer_2", None)
    if low_noise is None and spec.lora_2 is not None:
        raise ValueError(f"lora_2 {spec.lora_2} is for a model with two experts; {spec.model} has one: drop lora_2")
    if low_noise is not None and (spec.lora is None) != (spec.lora_2 is None):
        raise ValueError(
            f"{spec.model} has two experts, each with its own SVI LoRA: give both lora (high noise, e.g. "
            "SVI_Wan2.2-I2V-A14B_high_noise_lora_v2.0_pro.safetensors) and lora_2 (low noise, the _low_noise_ file)"
        )
    loras = [(pipe.transformer, spec.lora, spec.lora_scale), (low_noise, spec.lora_2, spec.lora_scale_2)]
    for stacked in spec.stacked_loras:
        on_experts = zip((pipe.transformer, low_noise), stacked.strengths(), strict=True)
        loras += [
            (expert, stacked.file, strength) for expert, strength in on_experts if expert is not None and strength
        ]
    return [(expert, lora, scale) for expert, lora, scale in loras if lora is not None]


_samplers: dict[EngineSpec, ClipSampler] = {}
_lock = threading.Lock()


def loaded_sampler(spec: EngineSpec) -> ClipSampler:
    """The sampler `spec` names, loading it on first use (thread-safe: Prefect runs tasks in threads)."""
    with _lock:
        if spec not in _samplers:
            from svi_model.levers import apply_levers
            from svi_model.loading import load_wan_pipeline
            from svi_model.lora_files import apply_lora, read_lora_file

            def prepare(pipe) -> None:
                applications = _loras_per_expert(spec, pipe)
                # A stacked LoRA for both experts is read once (a distill LoRA is about 1 GB).
                files = {lora: read_lora_file(lora) for lora in dict.fromkeys(lora for _, lora, _ in applications)}
                for transformer, lora, scale in applications:
                    apply_lora(transformer, files[lora], scale=scale, fuse=spec.fuse_lora)
                for transformer in (pipe.transformer, getattr(pipe, "transformer_2", None)):
                    if transformer is not None:  # after the LoRAs: fp8 rounds the fused weights, compile traces them
                        apply_levers(transformer, **spec.levers())

            pipe = load_wan_pipeline(
                spec.model,
                device=spec.device,
                transformer_dtype=spec.torch_dtype,
                text_encoder_dtype=spec.torch_dtype,
                offload=spec.offload,
                vae_tiling=spec.vae_tiling,
                prepare=prepare,
            )
            # Only one model of this size fits: a different spec replaces the loaded one.
            _samplers.clear()
            _samplers[spec] = ClipSampler(
                pipe, boundary=spec.boundary, swap_experts=spec.offload == "experts", batch_cfg=spec.batch_cfg
            )
        return _samplers[spec]

"""The engine's speed and memory levers as settings: fields of both `EngineSpec` and the request's render group, so
each is a CLI flag, a form field and a manifest entry (`svi_model.levers` says what each one does and needs).

Same output (up to floating-point rounding): `attention_backend` (but `sage`), `compile`, `batch_cfg`. They are
left out of the engine's identity, as the device is, so clips made with or without them are the same clips.
Output-changing: `step_cache`, `fp8`, `attention_backend sage`. Off by default; when on, the engine's identity
(clip keys, the manifest's `engine`) records them under `output_changing`.
"""

from pydantic import BaseModel, Field, model_validator

from svi_model.levers import EXACT_ATTENTION, AttentionBackend, Fp8, StepCache

SAME_OUTPUT_LEVERS = ("attention_backend", "compile", "batch_cfg")


class SpeedOptions(BaseModel):
    """How fast the DiT runs and how much memory it takes."""

    attention_backend: AttentionBackend = Field(
        "native", description="diffusers' attention kernel (native: torch SDPA; sage changes the output)"
    )
    compile: bool = Field(False, description="torch.compile the DiT blocks (same output; the first clip compiles)")
    batch_cfg: bool = Field(False, description="cond and uncond in one batch-2 forward (same output, more memory)")
    step_cache: StepCache = Field("none", description="reuse earlier steps' DiT work (CHANGES the output)")
    step_cache_threshold: float | None = Field(
        None, gt=0.0, description="first_block: how different a step may be and still reuse (default 0.05)"
    )
    fp8: Fp8 = Field(
        "none",
        description="float8 DiT weights: storage (less memory) or gemm (H100/H200, torchao) (CHANGES the output)",
    )

    @model_validator(mode="after")
    def _threshold_is_first_blocks(self):
        if self.step_cache_threshold is not None and self.step_cache != "first_block":
            raise ValueError("step_cache_threshold is for step_cache first_block; drop it or set that cache")
        return self

    def levers(self) -> dict:
        """The levers as `svi_model.levers.apply_levers` takes them."""
        return self.model_dump(include=set(SpeedOptions.model_fields) - {"batch_cfg"})

    def output_changing(self) -> dict:
        """The levers set that change the output (empty by default)."""
        changing = {}
        if self.attention_backend not in EXACT_ATTENTION:
            changing["attention_backend"] = self.attention_backend
        if self.step_cache != "none":
            changing["step_cache"] = self.step_cache
            if self.step_cache_threshold is not None:
                changing["step_cache_threshold"] = self.step_cache_threshold
        if self.fp8 != "none":
            changing["fp8"] = self.fp8
        return changing

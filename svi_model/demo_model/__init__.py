"""The demo model: a small SVI trained here, on the CPU, on the toy world (`svi_model.toyworld`).

Three phases, each the real class at toy size: an `AutoencoderKLWan` (`vae_phase`), a `WanTransformer3DModel`
I2V base trained by flow matching (`base_phase`; `base_check` measures whether it carries its condition into the
frames it makes up), and the SVI LoRA trained on that base by the project's ERFT trainer (`lora_phase`).
`build.build_demo_model` runs them in order, resumable, and `python -m svi_model.demo_model` rebuilds the shipped
folder (`shipped.SHIPPED_FOLDER`) from nothing. The recipe (sizes, steps, seeds) is `recipe`.
"""

from .shipped import LORA_FILE, PADDING, SHIPPED_FOLDER, demo_model_folder

__all__ = ["LORA_FILE", "PADDING", "SHIPPED_FOLDER", "demo_model_folder"]

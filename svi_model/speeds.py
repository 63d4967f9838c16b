"""Speed tiers: named sampling recipes, so that one flag sets the five settings a distill LoRA is made for.

| speed     | steps | expert split     | CFG | shift | LoRAs to stack (strength high / low)          |
|-----------|-------|------------------|-----|-------|-----------------------------------------------|
| quality   | 50    | at t = 875       | 5   | 5     | none                                          |
| lightning | 6     | 3 high + 3 low   | 1.5 | 8     | Wan2.2-Lightning I2V-A14B 4-step, 0.5 / 1.0   |

quality: the paper's and the authors' inference scripts' settings (`FilmSettings` defaults). lightning: the SVI
authors' ComfyUI workflow for SVI 2.0 on Wan2.2 (`comfyui_workflow/SVI-Wan22-1210-4-Clips.json`: the Lightning
4-step LoRAs at 0.5 on the high-noise and 1.0 on the low-noise expert, 6 steps split 3 + 3, shift 8) and their
advice in `docs/svi/comfyui.md` and `docs/svi/tips.md` (CFG fixed at 1.5 with the acceleration LoRAs). Where it
differs: the workflow samples with dpm++_sde and uses CFG 2 for its first two clips; here the engine's Euler
sampler and 1.5 for every clip. The recipe sets the sampling; the distill LoRA files are the user's to stack
(`stacked_loras`). A request's own values win over the recipe's.
"""

SPEEDS: dict[str, dict] = {
    "quality": {},
    "lightning": dict(steps=6, high_noise_steps=3, guidance_scale=1.5, shift=8.0),
}
SPEED_NAMES = tuple(SPEEDS)

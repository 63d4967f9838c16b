"""Where the trained demo model ships: `assets/demo_model/`, a diffusers-layout folder with its SVI LoRA inside.

`SVI_DEMO_MODEL` in the environment chooses another: a folder (one rebuilt with `python -m svi_model.demo_model
OUT`), or `random` for the tiny random weights of `svi_model.tiny` (the test suite renders with those: seconds
instead of minutes, and no dependence on trained weights).
"""

import os
from pathlib import Path

SHIPPED_FOLDER = Path(__file__).resolve().parents[2] / "assets" / "demo_model"
LORA_FILE = "svi-film.safetensors"
# The demo model is SVI-Film (five motion frames, a prompt stream) with Shot's reference padding: every frame of
# the condition after the motion frames is the film's first picture, not mid-grey. A DiT this small does not learn
# to carry a grey-padded condition's picture into the frames it makes up (`base_check`, and the README's "What the
# base lacks"); with the picture at every latent frame of the condition, keeping the scene is a copy at the same
# place. It is trained (`recipe.TRAINING_CLIPS`) and rendered (the demo profile, `svi eval drift`) that way.
PADDING = "reference"
ENVIRONMENT_VARIABLE = "SVI_DEMO_MODEL"
RANDOM = "random"


def demo_model_folder() -> Path | None:
    """The demo model folder to render with, or None for tiny random weights (`SVI_DEMO_MODEL=random`, or no
    shipped folder: a checkout without its assets). ValueError when `SVI_DEMO_MODEL` names a folder that holds no
    model."""
    chosen = os.environ.get(ENVIRONMENT_VARIABLE, "").strip()
    if chosen == RANDOM:
        return None
    folder = Path(chosen).expanduser() if chosen else SHIPPED_FOLDER
    if (folder / "model_index.json").is_file() and (folder / LORA_FILE).is_file():
        return folder
    if chosen:
        raise ValueError(
            f"{ENVIRONMENT_VARIABLE}={chosen} holds no demo model (model_index.json and {LORA_FILE}): build one "
            f"with `python -m svi_model.demo_model {chosen}`, or unset {ENVIRONMENT_VARIABLE}"
        )
    return None

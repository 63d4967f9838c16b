"""`svi eval drift`: the drift evaluation end to end, from a model folder and its variants to the files in `out`."""

import datetime
from pathlib import Path

from ..demo_model.recipe import HEIGHT, NUM_FRAMES, WIDTH
from .evaluate import Variant, contact_clips, evaluate_variant, held_out_films, targets
from .report import write_contact_sheet, write_json, write_plot


def run_drift_benchmark(
    model: Path,
    variants: list[Variant],
    films: int = 10,
    clips: int = 30,
    steps: int = 20,
    out: Path = Path("bench/results"),
    progress: bool = True,
    name: str | None = None,
) -> list[Path]:
    """Render `films` held-out toy-world films of `clips` clips with every variant, measure them, and write
    `<stem>.json`, `<stem>.png` (metrics against the clip index) and `<stem>-contact.png`, where the stem is
    `drift-<date>`, or `drift-<date>-<name>` with a name (so that runs of one day do not overwrite each other).

    The films are at the demo model's size (112×64, 33 frames a clip). Targets are reported when variants named
    `base` and `erft` are both there. Returns the paths written.
    """
    held_out = held_out_films(films, clips, HEIGHT, WIDTH)
    results = [evaluate_variant(model, v, held_out, clips, NUM_FRAMES, steps, progress) for v in variants]
    named = {r.variant.name: r for r in results}
    summary = targets(named["base"], named["erft"]) if {"base", "erft"} <= named.keys() else {}
    stem = f"drift-{datetime.date.today().isoformat()}" + (f"-{name}" if name else "")
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.json", out / f"{stem}.png", out / f"{stem}-contact.png"]
    header = {"model": str(model), "films": films, "clips": clips, "steps": steps, "frames_per_clip": NUM_FRAMES}
    header["command"] = "svi eval drift " + " ".join(
        [f"--model {model}", f"--films {films}", f"--clips {clips}", f"--steps {steps}"]
        + [f"--variant {v.name}={v.lora or 'none'}@{v.scale}" for v in variants]
        + ([f"--name {name}"] if name else [])
    )
    write_json(paths[0], header, results, summary)
    write_plot(paths[1], results)
    write_contact_sheet(paths[2], results, contact_clips(clips))
    return paths

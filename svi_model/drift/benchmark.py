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
) -> list[Path]:
    """Render `films` held-out toy-world films of `clips` clips with every variant, measure them, and write
    `drift-<date>.json`, `drift-<date>.png` (metrics against the clip index) and `drift-<date>-contact.png`.

    The films are at the demo model's size (112×64, 33 frames a clip). Targets are reported when variants named
    `base` and `erft` are both there. Returns the paths written.
    """
    held_out = held_out_films(films, clips, HEIGHT, WIDTH)
    results = [evaluate_variant(model, v, held_out, clips, NUM_FRAMES, steps, progress) for v in variants]
    named = {r.variant.name: r for r in results}
    summary = targets(named["base"], named["erft"]) if {"base", "erft"} <= named.keys() else {}
    stamp = datetime.date.today().isoformat()
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"drift-{stamp}.json", out / f"drift-{stamp}.png", out / f"drift-{stamp}-contact.png"]
    header = {"model": str(model), "films": films, "clips": clips, "steps": steps, "frames_per_clip": NUM_FRAMES}
    header["command"] = "svi eval drift " + " ".join(
        [f"--films {films}", f"--clips {clips}", f"--steps {steps}"]
        + [f"--variant {v.name}={v.lora or 'none'}@{v.scale}" for v in variants]
    )
    write_json(paths[0], header, results, summary)
    write_plot(paths[1], results)
    write_contact_sheet(paths[2], results, contact_clips(clips))
    return paths

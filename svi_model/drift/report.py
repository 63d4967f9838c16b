"""What the drift evaluation writes: the JSON of every figure, a plot of each metric against the clip index, and a
contact sheet (rows: variants; columns: the middle frame of clips 0, 10, 25 and the last, of the first film)."""

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..atomic_files import atomic_path, write_text_atomic
from .evaluate import METRICS, VariantResult, drift_growth

# Contact-sheet frames are small (112×64); shown at this many times their size.
CONTACT_SCALE = 3
LABEL_WIDTH = 150


def write_json(path: Path, header: dict, results: list[VariantResult], summary: dict) -> None:
    """Every per-clip mean of every variant, each film's figures behind them, and how far each metric moved along
    the chain (`drift_growth`), with the run's settings (`header`) and the targets (`summary`)."""
    variants = {r.variant.name: _variant_json(r) for r in results}
    write_text_atomic(path, json.dumps(header | {"variants": variants, "targets": summary}, indent=2) + "\n")


def _variant_json(result: VariantResult) -> dict:
    per_clip = result.per_clip  # computed from per_film on each access: once here
    return {
        "lora": None if result.variant.lora is None else str(result.variant.lora),
        "scale": result.variant.scale,
        "seconds": round(result.seconds, 1),
        "last_clip": {name: values[-1] for name, values in per_clip.items()},
        "growth": drift_growth(per_clip),
        "per_clip": per_clip,
        "per_film": result.per_film,
    }


def write_plot(path: Path, results: list[VariantResult]) -> None:
    """One panel per metric, one line per variant, the clip index along x."""
    import matplotlib

    matplotlib.use("Agg")  # no display: write the file only
    from matplotlib import pyplot

    columns = 4
    rows = -(-len(METRICS) // columns)
    figure, axes = pyplot.subplots(rows, columns, figsize=(4 * columns, 3 * rows), squeeze=False)
    for axis, name in zip(axes.flat, METRICS, strict=False):
        for result in results:
            values = [np.nan if v is None else v for v in result.per_clip[name]]
            axis.plot(range(len(values)), values, label=result.variant.name, linewidth=1.2)
        axis.set_title(name.replace("_", " "))
        axis.set_xlabel("clip")
    for axis in list(axes.flat)[len(METRICS) :]:
        axis.axis("off")
    axes.flat[0].legend(fontsize=7)
    figure.tight_layout()
    with atomic_path(path) as staged:
        figure.savefig(staged, dpi=90)
    pyplot.close(figure)


def write_contact_sheet(path: Path, results: list[VariantResult], shown: list[int]) -> None:
    """Rows of contact frames (one row per variant, labelled), columns labelled with their clip index."""
    height, width = results[0].contact[0].shape[:2]
    cell = (width * CONTACT_SCALE, height * CONTACT_SCALE)
    sheet = Image.new("RGB", (LABEL_WIDTH + cell[0] * len(shown), 20 + cell[1] * len(results)), "white")
    draw = ImageDraw.Draw(sheet)
    for column, clip in enumerate(shown):
        draw.text((LABEL_WIDTH + column * cell[0] + 4, 4), f"clip {clip}", fill="black")
    for row, result in enumerate(results):
        top = 20 + row * cell[1]
        draw.text((4, top + cell[1] // 2), result.variant.name, fill="black")
        for column, frame in enumerate(result.contact):
            picture = Image.fromarray(frame).resize(cell, Image.NEAREST)
            sheet.paste(picture, (LABEL_WIDTH + column * cell[0], top))
    with atomic_path(path) as staged:
        sheet.save(staged)

"""Train the demo model from nothing: `python -m svi_model.demo_model [OUT] [--work FOLDER] [--quick]`.

Seeded and resumable (run the same command again after a stop); each phase shows a progress bar and its losses go
to the work folder. About 80 minutes on 2 CPU cores; `--quick` runs every phase for a few steps (a smoke check).
"""

import argparse
import json
import logging
from pathlib import Path

import torch

from .build import PhaseCheckFailed, build_demo_model
from .recipe import DemoRecipe
from .shipped import SHIPPED_FOLDER


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m svi_model.demo_model", description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", type=Path, default=SHIPPED_FOLDER, help=f"default {SHIPPED_FOLDER}")
    parser.add_argument("--work", type=Path, default=Path("runs/demo-model-training"), help="checkpoints and data")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a few steps per phase, to check the recipe runs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.manual_seed(args.seed)
    recipe = DemoRecipe(seed=args.seed)
    try:
        report = build_demo_model(args.out, args.work, recipe.quick() if args.quick else recipe)
    except PhaseCheckFailed as error:
        parser.exit(1, f"error: {error}\n")
    print(json.dumps(report, indent=2))
    print(f"wrote the demo model to {args.out}")


if __name__ == "__main__":
    main()

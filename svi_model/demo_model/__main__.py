"""Train the demo model from nothing: `python -m svi_model.demo_model [OUT] [options]` (see --help).

Seeded and resumable (run the same command again after a stop); each phase shows a progress bar and its losses go
to the work folder. 100 to 160 minutes on 2 CPU cores; `--quick` runs every phase for a few steps (a smoke check).
`--ablations` then trains the drift evaluation's ablation LoRAs on the same base (about 10 minutes more) and prints
the `svi eval drift` command that compares all four.
"""

import argparse
import json
import logging
from dataclasses import replace
from pathlib import Path

import torch

from ..erft.train_config import TrainConfigError
from .build import PhaseCheckFailed, build_demo_model
from .lora_phase import ABLATIONS, train_ablation
from .recipe import DemoRecipe
from .shipped import LORA_FILE, SHIPPED_FOLDER


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m svi_model.demo_model", description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", type=Path, default=SHIPPED_FOLDER, help=f"default {SHIPPED_FOLDER}")
    parser.add_argument("--work", type=Path, default=Path("runs/demo-model-training"), help="checkpoints and data")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a few steps per phase, to check the recipe runs")
    parser.add_argument("--ablations", action="store_true", help="also train the ablation LoRAs (svi eval drift)")
    parser.add_argument(
        "--lora-steps",
        type=int,
        help=f"phase 3's steps (the SVI LoRA's and the ablations'; default {DemoRecipe().lora_steps}); a work folder "
        "whose LoRA has fewer goes on from where it stopped",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.manual_seed(args.seed)
    recipe = DemoRecipe(seed=args.seed).quick() if args.quick else DemoRecipe(seed=args.seed)
    if args.lora_steps is not None:
        if args.lora_steps < 1:
            parser.error(f"--lora-steps must be at least 1, got {args.lora_steps}")
        recipe = replace(recipe, lora_steps=args.lora_steps)
    try:
        report = build_demo_model(args.out, args.work, recipe)
    except PhaseCheckFailed as error:
        parser.exit(1, f"error: {error}\n")
    except TrainConfigError as error:  # e.g. a work folder whose LoRA went on for more steps (--lora-steps)
        parser.exit(1, f"error: phase 3: {error} (steps: --lora-steps)\n")
    print(json.dumps(report, indent=2))
    print(f"wrote the demo model to {args.out}")
    if args.ablations:
        variants = [f"--variant base=none --variant erft={args.out / LORA_FILE}"]
        for name in ABLATIONS:
            variants.append(f"--variant {name}={train_ablation(name, recipe, args.work).lora_file}")
        print(f"compare them: svi eval drift --model {args.out} {' '.join(variants)}")


if __name__ == "__main__":
    main()

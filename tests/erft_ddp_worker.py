"""Run by `torchrun --nproc_per_node 2` from test_erft_training.py: ERFT with two processes (gloo, CPU).

Usage: erft_ddp_worker.py CONFIG_JSON RESULT_JSON. Trains the config uninterrupted into `<output_dir>/whole`, then
into `<output_dir>/split` in two calls (half the steps, then resumed to all of them); rank 0 writes the losses of
both to RESULT_JSON.
"""

import json
import os
import sys
from pathlib import Path

from svi_model.erft.train_config import TrainConfig
from svi_model.erft.trainer import train

config = TrainConfig.model_validate_json(Path(sys.argv[1]).read_text())
whole = train(config.model_copy(update={"output_dir": config.output_dir / "whole"}))
split = config.model_copy(update={"output_dir": config.output_dir / "split"})
train(split.model_copy(update={"steps": config.steps // 2}))
resumed = train(split)
if os.environ["RANK"] == "0":
    Path(sys.argv[2]).write_text(json.dumps({"whole": whole.losses, "resumed": resumed.losses}))

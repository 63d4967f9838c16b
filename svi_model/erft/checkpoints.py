"""Training checkpoints on disk: one folder per step, written whole or not at all, the newest few kept.

    checkpoints/step-00000500/
        trainer_state.json       step, settings identity, process count, per-step history (loss, σ, ...)
        lora_adapter.safetensors the LoRA (PEFT names, fp32): all a checkpoint needs of the model
        optimizer.bin            AdamW state (accelerate; DeepSpeed writes its own folder instead)
        random_states_<r>.pkl    every process's RNG states (accelerate)
        recycler-rank<r>.pt      every process's error banks and recycler generator (banks differ per process)

A checkpoint is written into `.step-00000500.partial/` and renamed when every process has finished writing, so a
crash leaves either the previous checkpoints or the new one, never a folder that looks whole and is not.
"""

import json
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..atomic_files import replace_folder, write_text_atomic

STATE_FILE = "trainer_state.json"
ADAPTER_FILE = "lora_adapter.safetensors"
_NAME = re.compile(r"^step-(\d{8})$")


def recycler_file(rank: int) -> str:
    return f"recycler-rank{rank}.pt"


@dataclass
class TrainerState:
    """What the loop itself must carry over a resume. identity: `TrainConfig.identity()`; processes and samples:
    the process count and dataset size, which decide the data order; history: one record per finished step."""

    step: int = 0
    identity: dict = field(default_factory=dict)
    processes: int = 1
    samples: int = 0
    history: list[dict] = field(default_factory=list)

    @property
    def losses(self) -> list[float]:
        return [record["loss"] for record in self.history]

    def write(self, folder: Path) -> None:
        write_text_atomic(folder / STATE_FILE, json.dumps(asdict(self), indent=1))

    @classmethod
    def read(cls, folder: Path) -> "TrainerState":
        path = Path(folder) / STATE_FILE
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError) as error:
            raise ValueError(f"{folder} is not a training checkpoint: cannot read {STATE_FILE} ({error})") from error


class CheckpointFolder:
    """The `checkpoints/` folder of a run."""

    def __init__(self, root: Path, keep: int = 2):
        self.root, self.keep = Path(root), keep

    def path(self, step: int) -> Path:
        return self.root / f"step-{step:08d}"

    def partial(self, step: int) -> Path:
        """Where the checkpoint of `step` is written before it is complete."""
        return self.root / f".step-{step:08d}.partial"

    def steps(self) -> list[int]:
        """Steps of the complete checkpoints, oldest first."""
        if not self.root.is_dir():
            return []
        found = (_NAME.match(entry.name) for entry in self.root.iterdir() if entry.is_dir())
        return sorted(int(match[1]) for match in found if match)

    def latest(self) -> Path | None:
        steps = self.steps()
        return self.path(steps[-1]) if steps else None

    def start(self, step: int) -> Path:
        """An empty partial folder for `step` (a leftover of a crashed attempt is removed). One process calls it."""
        partial = self.partial(step)
        if partial.exists():
            shutil.rmtree(partial)
        partial.mkdir(parents=True)
        return partial

    def commit(self, step: int) -> Path:
        """Make the partial checkpoint of `step` durable and complete, then drop all but the newest `keep`."""
        final = self.path(step)
        replace_folder(self.partial(step), final)
        for old in self.steps()[: -self.keep]:
            shutil.rmtree(self.path(old))
        return final

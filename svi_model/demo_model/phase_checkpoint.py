"""A training phase's checkpoint: its module, its optimizer and the steps done, in one file written atomically.

Every random draw of a phase is seeded by (recipe seed, phase, step), so module + optimizer + step is all a phase
needs to continue exactly where it stopped.
"""

from pathlib import Path

import torch

from ..atomic_files import atomic_path


def resume(path: Path, module: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Load `path` into `module` and `optimizer` if it exists; returns the steps it had done (0 without one)."""
    if not path.is_file():
        return 0
    state = torch.load(path, weights_only=True)
    module.load_state_dict(state["module"])
    optimizer.load_state_dict(state["optimizer"])
    return int(state["step"])


def save(path: Path, module: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int) -> None:
    """Write the phase's state after `step` steps (replacing the previous checkpoint only once complete)."""
    with atomic_path(path) as staged:
        torch.save({"module": module.state_dict(), "optimizer": optimizer.state_dict(), "step": step}, staged)

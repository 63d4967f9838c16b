"""Per-clip checks: a clip that fails one is rendered again with the next attempt's seed (`seed_for(k, attempt)`).

`CLIP_CHECKS` is the table (name → `ClipCheck`); a film request names the checks it wants (none by default) and
how many renders a clip may take. Built in: `frozen`, a clip whose frames barely change (a stalled scene).
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..registry import Registry


@dataclass(frozen=True)
class ClipCheck:
    """judge: uint8 frames `[F, H, W, 3]` → None when the clip passes, else why it fails (one line)."""

    judge: Callable[[torch.Tensor], str | None]
    help: str


CLIP_CHECKS: Registry[ClipCheck] = Registry("clip check")
CheckName = CLIP_CHECKS.name_type()

# Mean absolute change between consecutive frames, in 0..255 levels, below which a clip counts as frozen. Sensor
# noise alone in real footage stays above ~1; a clip at 0.5 shows no visible motion.
FROZEN_BELOW = 0.5


def frozen_clip(frames: torch.Tensor) -> str | None:
    """Fails a clip whose consecutive frames differ by less than `FROZEN_BELOW` levels on average."""
    change = (frames[1:].float() - frames[:-1].float()).abs().mean().item()
    if change < FROZEN_BELOW:
        return f"frozen: the frames barely change ({change:.3f} < {FROZEN_BELOW} levels between frames)"
    return None


CLIP_CHECKS.register("frozen", ClipCheck(frozen_clip, "the clip barely moves"))


def verdicts(frames: torch.Tensor, checks: tuple[str, ...]) -> dict[str, str | None]:
    """Each named check's verdict on the clip: None (passed) or why it failed."""
    return {name: CLIP_CHECKS[name].judge(frames) for name in checks}

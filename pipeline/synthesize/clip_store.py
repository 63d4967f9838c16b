"""The clip store: finished clips by content key (`$SVI_CACHE_DIR/clips/<key>/`), shared by every run folder.

<key>/attempts.json       with per-clip checks: every render, its seed and the checks' verdicts (the last is kept)
<key>/clip.mkv            the accepted clip, lossless
<key>/state.safetensors   what the next clip needs from it, sealed with what the clip is (`seals`); written last,
                          so a key with its state is complete
.quarantine/<key>-<time>/ entries found damaged, moved aside (never reused; `svi cache --clear` frees them)

Beside it, `<root>.locks/<key>.lock` is held while an entry is made, so runs that need the same clip at the same
time make it once.
"""

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from filelock import FileLock

from svi_model.atomic_files import place_file, remove_leftovers, write_text_atomic
from svi_model.chain import ChainState
from svi_model.video_files import write_clip

from ..run_folder import RunFolder
from .seals import clip_damage, save_sealed_state

log = logging.getLogger(__name__)


@dataclass
class ClipStore:
    """Finished clips by content key: `<root>/<key>/clip.mkv`, `state.safetensors` and `attempts.json`."""

    root: Path

    def clip(self, key: str) -> Path:
        return self.root / key / "clip.mkv"

    def state(self, key: str) -> Path:
        return self.root / key / "state.safetensors"

    def attempts_file(self, key: str) -> Path:
        return self.root / key / "attempts.json"

    def has(self, key: str, frames: int) -> bool:
        """The entry is there and sound: its clip (of `frames` frames) and state are as they were stored. A damaged
        entry is moved aside with a warning (and so made again by whoever asked)."""
        if not self.state(key).is_file():
            return False
        damage = clip_damage(self.clip(key), self.state(key), frames)
        if damage is not None:
            self.quarantine(key, damage)
        return damage is None

    @contextmanager
    def making(self, key: str) -> Iterator[None]:
        """Held while the entry `key` is made: another run making the same clip waits here, then finds it stored
        (the locks live beside the store, so they are neither counted nor cleared with the clips)."""
        locks = self.root.with_name(f"{self.root.name}.locks")
        locks.mkdir(parents=True, exist_ok=True)
        with FileLock(locks / f"{key}.lock"):
            remove_leftovers(self.root / key)  # of a run killed while it wrote this entry
            yield

    def quarantine(self, key: str, why: str) -> Path:
        """Move the entry `key` aside (never reused, kept for a look); returns where it went."""
        aside = self.root / ".quarantine" / f"{key}-{time.strftime('%Y%m%dT%H%M%S')}"
        aside.parent.mkdir(parents=True, exist_ok=True)
        (self.root / key).rename(aside)
        log.warning(
            "stored clip %s… is damaged (%s): moved to %s and made again (`svi cache --clear` frees it)",
            key[:12],
            why,
            aside,
        )
        return aside

    def put(
        self, key: str, frames: torch.Tensor, state: ChainState, fps: float, attempts: list[dict] | None = None
    ) -> None:
        """Store the accepted clip `[F, H, W, 3]` uint8, the state after it, and the record of its attempts (when
        checks judged them; a clip rendered once without checks has nothing more to say)."""
        if attempts is not None:
            write_text_atomic(self.attempts_file(key), json.dumps(attempts, indent=2))
        write_clip(frames, self.clip(key), fps)
        save_sealed_state(state, self.state(key), self.clip(key), len(frames))

    def attempts(self, key: str) -> list[dict]:
        """The record of the renders behind `key`; a clip stored without one was rendered once, as attempt 0."""
        path = self.attempts_file(key)
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else [{"attempt": 0}]

    def materialise(self, key: str, run: RunFolder, k: int) -> None:
        """Place the stored clip `key` as clip `k` of `run` (a hard link where possible, else a copy)."""
        place_file(self.clip(key), run.clip(k))
        if self.attempts_file(key).is_file():
            place_file(self.attempts_file(key), run.attempts(k))
        place_file(self.state(key), run.state(k))

"""The clip store: finished clips by content key (`$SVI_CACHE_DIR/clips/<key>/`), shared by every run folder.

<key>/attempts.json       with per-clip checks: every render, its seed and the checks' verdicts (the last is kept)
<key>/clip.mkv            the accepted clip, lossless
<key>/state.safetensors   what the next clip needs from it (written last: a key with its state is complete)
"""

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from svi_model.atomic_files import place_file, write_text_atomic
from svi_model.chain import ChainState
from svi_model.video_files import write_clip

from ..run_folder import RunFolder, save_state


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

    def has(self, key: str) -> bool:
        """Both files are there (each is written atomically, the state last)."""
        return self.clip(key).is_file() and self.state(key).is_file()

    def put(
        self, key: str, frames: torch.Tensor, state: ChainState, fps: float, attempts: list[dict] | None = None
    ) -> None:
        """Store the accepted clip `[F, H, W, 3]` uint8, the state after it, and the record of its attempts (when
        checks judged them; a clip rendered once without checks has nothing more to say)."""
        if attempts is not None:
            write_text_atomic(self.attempts_file(key), json.dumps(attempts, indent=2))
        write_clip(frames, self.clip(key), fps)
        save_state(state, self.state(key))

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

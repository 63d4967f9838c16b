"""The run folder: everything one film run made, under fixed names. It is the truth a resumed run starts from.

runs/<name>/
  request.json          the full, validated request (every default filled in)
  images/               retrieved candidates + meta.json
  reference.png         the normalised first frame (lossless)
  storyline.yaml        the prompt stream
  clips/clip_0007.mkv   clip 7, lossless (FFV1)
  clips/clip_0007.state.safetensors   what clip 8 needs (tail frames or last latent)
  clips/clip_0007.attempts.json       its renders: seeds and the per-clip checks' verdicts
  film.mp4 film.srt storyboard.png manifest.json
  chapters/00/ …        a film in chapters: each chapter is a run folder of its own
"""

import logging
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock, Timeout
from PIL import Image
from safetensors.torch import load_file, save_file

from svi_model.atomic_files import atomic_path, remove_leftovers, write_text_atomic
from svi_model.chain import ChainState

log = logging.getLogger(__name__)

# Beside `.lock`: the id of the flow run that holds the folder (`RunFolder.claimed`).
OWNER_FILE = ".lock-owner"


class RunFolderInUse(ValueError):
    """Another run holds the run folder; nothing in it was touched."""


@dataclass(frozen=True)
class RunFolder:
    root: Path

    @contextmanager
    def claimed(self, owner: str | None = None) -> Iterator["RunFolder"]:
        """Hold the run folder for one run (a lock on `.lock` in it): a second run on the same folder fails at once
        instead of racing the first on every file. The OS releases the lock when the holder dies, so a killed run
        never leaves its folder held; the temporary files it was writing are removed here.

        owner: who holds it (a Prefect flow run's id), kept in `.lock-owner` while held. A claim by the owner that
        already holds the folder waits for it instead of failing: that is a second attempt of the same flow run,
        which Prefect starts when a crash is reported twice (the run's worker and its runner each report it; the
        later report can land on the attempt that took the run again, and the retry automation then schedules it
        once more). The waiting attempt goes on when the first one is done, and finds its clips made."""
        self.root.mkdir(parents=True, exist_ok=True)
        lock = FileLock(self.root / ".lock")
        try:
            lock.acquire(timeout=0)
        except Timeout:
            if owner is None or self._owner() != owner:
                raise RunFolderInUse(
                    f"{self.root} is in use by another run: wait for it to finish, or choose another --run-dir"
                ) from None
            log.warning("another attempt of this run holds %s: waiting for it to finish", self.root)
            lock.acquire()
        try:
            if owner is None:  # what a killed holder said of itself is no longer true
                (self.root / OWNER_FILE).unlink(missing_ok=True)
            else:
                write_text_atomic(self.root / OWNER_FILE, owner)
            for folder in (self.root, self.clips):  # what a run killed mid-write left
                remove_leftovers(folder)
            yield self
        finally:
            (self.root / OWNER_FILE).unlink(missing_ok=True)
            lock.release()

    def _owner(self) -> str | None:
        """Who holds the folder, as its claim said (None: not said, or not held)."""
        try:
            return (self.root / OWNER_FILE).read_text(encoding="utf-8")
        except FileNotFoundError:
            return None

    @property
    def request(self) -> Path:
        return self.root / "request.json"

    @property
    def images(self) -> Path:
        return self.root / "images"

    @property
    def reference(self) -> Path:
        return self.root / "reference.png"

    @property
    def storyline(self) -> Path:
        return self.root / "storyline.yaml"

    @property
    def clips(self) -> Path:
        return self.root / "clips"

    def clip(self, k: int) -> Path:
        return self.clips / f"clip_{k:04d}.mkv"

    def state(self, k: int) -> Path:
        return self.clips / f"clip_{k:04d}.state.safetensors"

    def attempts(self, k: int) -> Path:
        """Clip k's renders and the checks' verdicts on each."""
        return self.clips / f"clip_{k:04d}.attempts.json"

    @property
    def film(self) -> Path:
        return self.root / "film.mp4"

    @property
    def chapters(self) -> Path:
        return self.root / "chapters"

    def chapter(self, index: int) -> "RunFolder":
        """The run folder of chapter `index` of a film in chapters."""
        return RunFolder(self.chapters / f"{index:02d}")

    @property
    def subtitles(self) -> Path:
        return self.root / "film.srt"

    @property
    def storyboard(self) -> Path:
        return self.root / "storyboard.png"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"


def clear_run(run: RunFolder) -> None:
    """Delete everything a film made in `run` (its request stays until the new one replaces it)."""
    for folder in (run.images, run.clips, run.chapters):
        shutil.rmtree(folder, ignore_errors=True)
    for path in (run.reference, run.storyline, run.film, run.subtitles, run.storyboard, run.manifest):
        path.unlink(missing_ok=True)


def save_reference_png(frame: torch.Tensor, path: Path) -> None:
    """Store a uint8 `[H, W, 3]` frame losslessly, atomically."""
    with atomic_path(path) as tmp:
        Image.fromarray(frame.numpy()).save(tmp, format="PNG")


def load_reference_png(path: Path) -> torch.Tensor:
    """The stored first frame, bit-exact: uint8 `[H, W, 3]`."""
    with Image.open(path) as image:
        return torch.from_numpy(np.asarray(image.convert("RGB")).copy())


def save_state(state: ChainState, path: Path, metadata: dict[str, str] | None = None) -> None:
    """Store a `ChainState` losslessly (safetensors, with `metadata` in its header), atomically."""
    tensors = {name: value.contiguous() for name, value in state.tensors().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def load_state(path: Path) -> ChainState:
    """A stored `ChainState`."""
    return ChainState(**load_file(str(path)))

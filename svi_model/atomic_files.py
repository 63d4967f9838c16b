"""Atomic file and folder writes: a crash never leaves a half-written file or folder that looks whole.

The content goes to a temporary file in the destination's own folder (so the final rename stays on one file
system), is flushed and fsynced, and only then replaces the destination in one `os.replace`.
"""

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# In every temporary name, so a file a killed process left half-written is never taken for a result (and can be
# found and removed: `remove_leftovers`).
PARTIAL = "partial-"


@contextmanager
def atomic_path(destination: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `destination` to write to; on success it replaces `destination`.

    The temporary name keeps the destination's suffix, so writers that pick a format by extension
    (ffmpeg, PIL, safetensors) behave as they would for the real name. On error the temporary file is removed
    and `destination` is left as it was.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{destination.stem}.{PARTIAL}", suffix=destination.suffix, dir=destination.parent
    )
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        # mkstemp creates 0600 files; outputs are meant to be shared like any other file.
        tmp.chmod(0o644)
        os.replace(tmp, destination)
        _fsync_folder(destination.parent)
    finally:
        tmp.unlink(missing_ok=True)


def remove_leftovers(folder: Path, of: str = "*") -> list[Path]:
    """Delete the temporary files `atomic_path` left in `folder` when its process was killed mid-write; returns them.
    of: only those of destinations with this stem (a glob pattern), for a folder other runs write to as well.
    Call it only while no other process can be writing them (holding the folder's lock)."""
    leftovers = [path for path in folder.glob(f".{of}.{PARTIAL}*") if path.is_file()] if folder.is_dir() else []
    for path in leftovers:
        path.unlink(missing_ok=True)
    return leftovers


def _fsync_folder(folder: Path) -> None:
    """The rename itself is durable only once the folder's entry is on disk."""
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def write_text_atomic(destination: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `destination` atomically."""
    with atomic_path(destination) as tmp:
        tmp.write_text(text, encoding="utf-8")


def replace_folder(staged: Path, final: Path) -> None:
    """Make the finished folder `staged` durable (every file fsynced), then put it in place of `final` by renames
    on the same file system; `final` is never half written. The old `final` is renamed aside (`.<name>.replaced`)
    before the new one takes its name and deleted only after, so a crash at any moment keeps at least one of the
    two whole (deleting the old one first would lose both to a crash before the rename)."""
    for path in staged.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    retired = final.with_name(f".{final.name}.replaced")
    shutil.rmtree(retired, ignore_errors=True)
    if final.exists():
        final.rename(retired)
    staged.rename(final)
    _fsync_folder(final.parent)
    shutil.rmtree(retired, ignore_errors=True)


def place_file(source: Path, destination: Path) -> None:
    """Put the file `source` at `destination` atomically: a hard link where the file system allows it, else a copy.

    A destination that already is `source` (the same file, through another link) is left alone: renaming a link
    onto another link of the same file does nothing and would leave the temporary name behind (POSIX rename).
    """
    if destination.exists() and os.path.samefile(source, destination):
        return
    with atomic_path(destination) as tmp:
        tmp.unlink()
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)

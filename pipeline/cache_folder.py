"""`$SVI_CACHE_DIR` (by default `~/.cache/svi-film`): where work reusable across runs is kept, its parts, what
they hold and how to free them.

clips/             finished clips by content key (the synthesize stage's clip store)
clips.locks/       one small lock file per clip being (or once) made, so two runs make a clip once
prefect-results/   the flows' persisted task results
tiny-model/        the demo's tiny random model

Run folders keep their own clips (hard links to the store where the file system allows it, else copies), so
clearing the cache never loses a film: it only means the next run that needs a clip renders it again.
"""

import os
import shutil
from dataclasses import dataclass
from pathlib import Path


def cache_root() -> Path:
    """Where reusable work is kept: `$SVI_CACHE_DIR`, by default `~/.cache/svi-film`."""
    return Path(os.environ.get("SVI_CACHE_DIR", Path.home() / ".cache" / "svi-film"))


def clip_store_folder() -> Path:
    return cache_root() / "clips"


def task_results_folder() -> Path:
    return cache_root() / "prefect-results"


def tiny_model_folder() -> Path:
    return cache_root() / "tiny-model"


@dataclass(frozen=True)
class CachePart:
    what: str
    path: Path
    files: int
    bytes: int


def _part(what: str, folder: Path) -> CachePart:
    files = [p for p in folder.rglob("*") if p.is_file()] if folder.is_dir() else []
    return CachePart(what, folder, len(files), sum(p.stat().st_size for p in files))


def cache_usage() -> list[CachePart]:
    """Files and bytes under each part of the cache (bytes counted once per file, even when hard-linked)."""
    return [
        _part("stored clips", clip_store_folder()),
        _part("Prefect task results", task_results_folder()),
        _part("the demo's tiny model", tiny_model_folder()),
    ]


def clear_cache() -> list[CachePart]:
    """Delete the stored clips and the Prefect task results (kept: the tiny model); returns what was freed."""
    freed = [part for part in cache_usage() if part.path != tiny_model_folder() and part.files]
    for part in freed:
        shutil.rmtree(part.path)
    return freed

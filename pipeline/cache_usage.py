"""What `$SVI_CACHE_DIR` holds (stored clips, Prefect task results, the demo's tiny model) and how to free it.

Run folders keep their own clips (hard links to the store where the file system allows it, else copies), so
clearing the cache never loses a film: it only means the next run that needs a clip renders it again.
"""

import shutil
from dataclasses import dataclass
from pathlib import Path

from .synthesize import cache_root

PARTS = {"clips": "stored clips", "prefect-results": "Prefect task results", "tiny-model": "the demo's tiny model"}


@dataclass(frozen=True)
class CachePart:
    name: str
    what: str
    path: Path
    files: int
    bytes: int


def cache_usage(root: Path | None = None) -> list[CachePart]:
    """Files and bytes under each part of the cache (bytes counted once per file, even when hard-linked)."""
    root = root or cache_root()
    parts = []
    for name, what in PARTS.items():
        files = [p for p in (root / name).rglob("*") if p.is_file()] if (root / name).is_dir() else []
        parts.append(CachePart(name, what, root / name, len(files), sum(p.stat().st_size for p in files)))
    return parts


def clear_cache(root: Path | None = None) -> list[CachePart]:
    """Delete the stored clips and the Prefect task results (kept: the tiny model); returns what was freed."""
    freed = [part for part in cache_usage(root) if part.name != "tiny-model" and part.files]
    for part in freed:
        shutil.rmtree(part.path)
    return freed

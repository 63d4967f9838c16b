"""The data root, `$SVI_CACHE_DIR` (by default `$XDG_CACHE_HOME/svi-film`, else `~/.cache/svi-film`): where work
reusable across runs is kept, its parts, what they hold and how to free them. With several machines it is the one
shared folder (with the model folders), and a relative path in a request a deployment runs is taken from it.

clips/             finished clips by content key (the synthesize stage's clip store)
clips.locks/       one small lock file per clip being (or once) made, so two runs make a clip once
prefect-results/   the flows' persisted task results
tiny-model/        the demo's tiny random model
runs/              run folders of requests that named them relative (`runs/film`, the default)

Run folders keep their own clips (hard links to the store where the file system allows it, else copies), so
clearing the cache never loses a film: it only means the next run that needs a clip renders it again.
"""

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel

Model = TypeVar("Model", bound=BaseModel)


def cache_root() -> Path:
    """The data root: `$SVI_CACHE_DIR`, else `$XDG_CACHE_HOME/svi-film`, else `~/.cache/svi-film`."""
    if os.environ.get("SVI_CACHE_DIR"):
        return Path(os.environ["SVI_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "svi-film"


def anchored_paths(model: Model, base: Path) -> Model:
    """`model` with every relative path in it (a `Path` field, a list of them, in nested models too) taken from
    `base`. The command line anchors a request at its working directory, a flow at the data root: a worker's own
    working directory never decides where a film goes."""

    def anchored(value):
        if isinstance(value, Path):
            return value if value.is_absolute() else Path(base) / value
        if isinstance(value, list):
            return [anchored(item) for item in value]
        if isinstance(value, BaseModel):
            return anchored_paths(value, base)
        return value

    return model.model_copy(update={name: anchored(getattr(model, name)) for name in type(model).model_fields})


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

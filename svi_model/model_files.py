"""Reading a model folder's files: one error type that names the file, and the JSON and shard indexes in it."""

import json
from contextlib import contextmanager
from pathlib import Path

NOTHING_DOWNLOADED = "Nothing is downloaded: put the missing items in place and run again."


class ModelFolderError(ValueError):
    """A model folder is missing, of no known layout, incomplete, or holds a file that cannot be read."""


@contextmanager
def reading(path: Path):
    """Report any failure while reading `path` as a ModelFolderError naming it; the cause stays chained."""
    try:
        yield
    except ModelFolderError:
        raise
    except Exception as error:
        raise ModelFolderError(
            f"could not read {path} ({type(error).__name__}: {error}). It may be truncated or corrupt: copy it again."
        ) from error


def read_json(path: Path) -> dict:
    with reading(path):
        return json.loads(path.read_text())


def indexed_shards(index: Path) -> list[str]:
    """File names of the shards a `*.safetensors.index.json` maps weights to, each once."""
    with reading(index):
        return sorted(set(read_json(index)["weight_map"].values()))

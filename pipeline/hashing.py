"""Content hashes, one home for all of them: what stages record of their files and what cache keys are made of.

- `file_sha256`: a file's bytes (inputs, LoRAs, clips, films), remembered per file version.
- `content_digest`: JSON-able fields (every cache key).
- `tensor_digest`: named tensors (a reference frame, the state one clip hands the next).
- `folder_fingerprint`: a model folder, without reading its weights.
- `dataset_fingerprint`: a training data set, by names, sizes and modification times.
"""

import hashlib
import json
import os
from pathlib import Path

import torch

_hash_cache: dict[tuple, str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file, read in 8 MB chunks and remembered per (path, size, mtime): LoRAs are 2.5 GB."""
    path = Path(path).resolve()
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _hash_cache:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(8 << 20):
                digest.update(chunk)
        _hash_cache[key] = digest.hexdigest()
    return _hash_cache[key]


def content_digest(fields: dict) -> str:
    """SHA-256 of JSON-able `fields` (sorted keys; other values by their `str`)."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 of named tensors: names, dtypes, shapes and bytes (independent of how they were stored)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        value = tensors[name].contiguous()
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)}".encode())
        digest.update(value.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# Where `hf download --local-dir` records each file's commit and etag (the SHA-256 of a large file's content).
HF_DOWNLOAD_RECORDS = Path(".cache") / "huggingface" / "download"


def folder_fingerprint(folder: Path) -> str:
    """A model folder's identity without reading 30 GB of weights: its resolved path, and every file's
    relative name and size, plus the content of its small (config, index, tokenizer) files.

    A large file is identified by its content hash where Hugging Face recorded it beside the download (that record
    is one of the small files, so its content counts); without such a record its modification time stands in, so a
    retrained file of the same size does not reuse clips made with the old one.
    """
    folder = Path(folder).resolve()
    digest = hashlib.sha256(str(folder).encode())
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        stat, relative = path.stat(), path.relative_to(folder)
        digest.update(f"{relative}:{stat.st_size}".encode())
        if stat.st_size < (1 << 20):
            digest.update(path.read_bytes())
        elif not (folder / HF_DOWNLOAD_RECORDS / f"{relative}.metadata").is_file():
            digest.update(f":{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def dataset_fingerprint(folder: Path) -> str:
    """A training data set's identity: every file's relative name, size and modification time, plus the CSV
    indexes' content (videos are too many and too large to read; a re-encoded video changes size or mtime)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.relative_to(folder)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
        if path.suffix == ".csv":
            digest.update(path.read_bytes())
    return digest.hexdigest()

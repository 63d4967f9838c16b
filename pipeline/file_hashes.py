"""Content hashes: `file_sha256`, what every stage records of its files (inputs, LoRAs, clips, films), remembered
per file version; `content_digest`, of the JSON-able fields cache keys are made of."""

import hashlib
import json
import os
from pathlib import Path

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

"""`file_sha256`: the content hash every stage records (inputs, LoRAs, clips, films), remembered per file version."""

import hashlib
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

"""Seeds derived from a base seed and names, the same in every process and every run."""

import hashlib


def derived_seed(*parts: int | str) -> int:
    """A 63-bit seed from integers and strings, the same in every process (unlike Python's salted `hash`)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1

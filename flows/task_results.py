"""Where the flows' tasks keep their results, and the content digests their cache keys are made of."""

import hashlib
import json

from pipeline.cache_folder import task_results_folder

# Persisted next to the clip store, so a retried or repeated run finds what an earlier one made.
RESULTS = task_results_folder()


def content_digest(fields: dict) -> str:
    """SHA-256 of JSON-able `fields` (sorted keys; other values by their `str`)."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()

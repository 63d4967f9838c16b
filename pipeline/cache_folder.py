"""`$SVI_CACHE_DIR` (by default `~/.cache/svi-film`): where work reusable across runs is kept, and its parts.

clips/             finished clips by content key (the synthesize stage's clip store)
prefect-results/   the flows' persisted task results
tiny-model/        the demo's tiny random model
"""

import os
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

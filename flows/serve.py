"""`svi serve`: the flows as deployments, so the Prefect UI can start runs and Retry failed ones.

Served runs execute in this process's runner; each flow run loads the engine once and keeps it across its clips.
The global concurrency limit `svi-gpu` (1 slot by default; `gpu_slot.py`) keeps the clips of concurrent runs from
sharing one GPU.
"""

import os

from prefect import serve

from pipeline.request import FilmRequest

from .batch import batch
from .film import film
from .gpu_slot import SWITCH, ensure_gpu_limit
from .train import train_flow


def serve_flows(gpu_slots: int = 1) -> None:
    """Serve `film`, `batch` and `train` until interrupted."""
    ensure_gpu_limit(gpu_slots)
    os.environ[SWITCH] = "1"  # the runs this runner starts inherit it: their clips take a slot
    serve(
        film.to_deployment(name="svi-film", tags=["svi"], parameters={"request": FilmRequest().form_defaults()}),
        batch.to_deployment(name="svi-batch", tags=["svi"]),
        train_flow.to_deployment(name="svi-train", tags=["svi"]),
    )

"""`svi serve`: the flows as deployments, so the Prefect UI can start runs and Retry failed ones.

Served runs execute in this process's runner; each flow run loads the engine once and keeps it across its clips.
The tag concurrency limit `gpu` (1 by default) keeps clip tasks of concurrent runs from sharing one GPU.
"""

import os

from prefect import serve
from prefect.client.orchestration import get_client

from pipeline.request import FilmRequest

from .batch import batch
from .film import GPU_TAG, GPU_TAG_SWITCH, film
from .train import train_flow


def ensure_gpu_limit(slots: int) -> None:
    """Create (or resize) the `gpu` tag concurrency limit on the server."""
    with get_client(sync_client=True) as client:
        client.create_concurrency_limit(tag=GPU_TAG, concurrency_limit=slots)


def serve_flows(gpu_slots: int = 1) -> None:
    """Serve `film`, `batch` and `train` until interrupted."""
    ensure_gpu_limit(gpu_slots)
    os.environ[GPU_TAG_SWITCH] = "1"  # the runs this runner starts inherit it: their clip tasks take the limit
    serve(
        film.to_deployment(name="svi-film", tags=["svi"], parameters={"request": FilmRequest().form_defaults()}),
        batch.to_deployment(name="svi-batch", tags=["svi"]),
        train_flow.to_deployment(name="svi-train", tags=["svi"]),
    )

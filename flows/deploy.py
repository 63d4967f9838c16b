"""`svi deploy` and `svi worker`: the flows as deployments on a Prefect work pool, run by workers on GPU machines.

A work pool of the `process` type holds the runs; each GPU machine starts one worker per GPU (`svi worker --gpu N`:
`prefect worker start --limit 1` with `CUDA_VISIBLE_DEVICES=N`), so one film at a time runs on a GPU, and as many
films at once as there are GPUs. A worker runs each flow run in a new process from this project's folder (which
every machine needs at the same path, like the model folders); relative paths in a request are taken from the data
root (`pipeline.cache_folder`), which the machines share. A film run whose worker died is taken again by another
(`crashes.py`). `svi serve` (one process, no pool) stays the way to run on one machine.
"""

import os
import sys
from pathlib import Path

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.exceptions import ObjectNotFound

from pipeline.request import FilmRequest

from .batch import batch
from .crashes import HEARTBEAT_S, SILENCE_S, retry_crashed_runs
from .film import film
from .train import train_flow

PROJECT_FOLDER = Path(__file__).resolve().parents[1]
POOL = "svi-gpu"

# name → (flow, its entrypoint in this project, the run form's defaults)
DEPLOYMENTS = {
    "svi-film": (film, "flows/film.py:film", lambda: {"request": FilmRequest().form_defaults()}),
    "svi-batch": (batch, "flows/batch.py:batch", dict),
    "svi-train": (train_flow, "flows/train.py:train_flow", dict),
}


def ensure_work_pool(pool: str) -> None:
    """Create the process work pool `pool` on the server unless it exists."""
    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(pool)
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=pool, type="process"))


def deploy_flows(pool: str = POOL, silence_s: float = SILENCE_S) -> list[str]:
    """Put `film`, `batch` and `train` on the work pool `pool` (made if missing), run from this project's folder,
    with the automations that take crashed films again (a film silent `silence_s` seconds lost its worker);
    returns the deployments' names as `prefect deployment run` takes them."""
    ensure_work_pool(pool)
    names = []
    for name, (flow, entrypoint, defaults) in DEPLOYMENTS.items():
        deployment_id = flow.from_source(source=str(PROJECT_FOLDER), entrypoint=entrypoint).deploy(
            name=name, work_pool_name=pool, parameters=defaults(), tags=["svi"], print_next_steps=False
        )
        if flow is film:
            retry_crashed_runs(deployment_id, silence_s)
        names.append(f"{flow.name}/{name}")
    return names


def worker_command(pool: str = POOL, gpu: str | None = None, name: str | None = None) -> tuple[list[str], dict]:
    """The command line and environment of a worker for `pool` that runs one flow run at a time on `gpu` (a CUDA
    device index; None: whatever the machine shows)."""
    prefect = str(Path(sys.executable).with_name("prefect"))  # beside this Python: works without the venv on PATH
    command = [prefect, "worker", "start", "--pool", pool, "--type", "process", "--limit", "1"]
    if name or gpu is not None:
        command += ["--name", name or f"{os.uname().nodename}-gpu{gpu}"]
    environment = {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_S), **os.environ}  # its flow runs' pulse
    if gpu is not None:
        environment["CUDA_VISIBLE_DEVICES"] = gpu
    return command, environment

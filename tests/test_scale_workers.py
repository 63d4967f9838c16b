"""Films on a Prefect work pool: `svi deploy`'s deployments run by two process workers (as on two GPU machines),
each started in a working directory of its own, sharing one data root."""

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL

from flows.deploy import PROJECT_FOLDER, deploy_flows, worker_command

pytestmark = pytest.mark.usefixtures("prefect_server")

SMALL = {"clips": 2, "render": {"num_frames": 9, "steps": 2, "max_width": 128}}


def online_workers(pool: str) -> set[str]:
    with get_client(sync_client=True) as client:
        return {worker.name for worker in client.read_workers_for_work_pool(pool) if worker.status == "ONLINE"}


@pytest.fixture
def workers(tmp_path):
    """The flows deployed on the pool `svi-test`, and two of its workers online, started each in a folder of its
    own, with the data root `tmp_path/root`."""
    assert deploy_flows("svi-test") == ["film/svi-film", "batch/svi-batch", "train/svi-train"]
    root = tmp_path / "root"
    started = []
    for name in ("worker-a", "worker-b"):
        command, environment = worker_command("svi-test", name=name)
        # Workers ask for runs every second here (10 s by default): a test film takes seconds, not minutes.
        environment.update(
            PREFECT_API_URL=PREFECT_API_URL.value(), SVI_CACHE_DIR=str(root), PREFECT_WORKER_QUERY_SECONDS="1"
        )
        folder = tmp_path / name
        folder.mkdir()
        log = open(folder / "worker.log", "w")  # noqa: SIM115  (closed with the worker)
        started.append((subprocess.Popen(command, cwd=folder, env=environment, stdout=log, stderr=log), log))
    deadline = time.monotonic() + 120
    while online_workers("svi-test") != {"worker-a", "worker-b"} and time.monotonic() < deadline:
        time.sleep(0.5)
    yield root
    for worker, log in started:
        worker.send_signal(signal.SIGINT)
        worker.wait(timeout=60)
        log.close()


def finished(flow_run_ids: list, timeout_s: float = 300) -> list:
    """The flow runs once all are in a final state."""
    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while True:
            runs = [client.read_flow_run(run_id) for run_id in flow_run_ids]
            if all(run.state.is_final() for run in runs) or time.monotonic() > deadline:
                return runs
            time.sleep(1)


def test_two_films_render_at_once_on_two_workers_under_the_data_root(tmp_path, workers):
    submitted = [
        run_deployment(
            "film/svi-film", parameters={"request": {**SMALL, "output": {"run_dir": f"runs/{name}"}}}, timeout=0
        ).id
        for name in ("a", "b")
    ]
    runs = finished(submitted)

    assert [run.state.type.value for run in runs] == ["COMPLETED", "COMPLETED"], [run.state.message for run in runs]
    assert {run.labels["prefect.worker.name"] for run in runs} == {"worker-a", "worker-b"}
    first, second = sorted(runs, key=lambda run: run.start_time)
    assert second.start_time < first.end_time  # at the same time, not one after the other
    # `runs/a` is taken from the shared data root, not from where a worker or the project happens to be.
    for name in ("a", "b"):
        assert (workers / "runs" / name / "film.mp4").is_file()
    assert not (PROJECT_FOLDER / "runs" / "a").exists()
    assert not any((tmp_path / worker / "runs").exists() for worker in ("worker-a", "worker-b"))


def test_a_worker_pins_its_gpu():
    command, environment = worker_command("svi-gpu", gpu="1")
    assert environment["CUDA_VISIBLE_DEVICES"] == "1" and os.environ.get("CUDA_VISIBLE_DEVICES") != "1"
    assert command[command.index("--limit") + 1] == "1" and command[command.index("--pool") + 1] == "svi-gpu"
    assert Path(command[0]).name == "prefect" and Path(command[0]).is_file()

"""Films on a Prefect work pool: `svi deploy`'s deployments run by two process workers (as on two GPU machines),
each started in a working directory of its own, sharing one data root."""

import os
import signal
import subprocess
import time
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
import torch
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, LogFilter, LogFilterFlowRunId
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL

from flows.batch import batch
from flows.cli import main
from flows.deploy import PROJECT_FOLDER, deploy_flows, worker_command
from flows.film import film
from pipeline.request import FilmRequest
from svi_model.video_files import read_clip

pytestmark = pytest.mark.usefixtures("prefect_server")

SMALL = {"clips": 2, "render": {"num_frames": 9, "steps": 2, "max_width": 128}}


def online_workers(pool: str) -> set[str]:
    with get_client(sync_client=True) as client:
        return {worker.name for worker in client.read_workers_for_work_pool(pool) if worker.status == "ONLINE"}


# The workers' processes by name, for the test that kills one (each leads a process group of its own).
WORKER_PROCESSES: dict[str, subprocess.Popen] = {}


@pytest.fixture
def workers(tmp_path):
    """The flows deployed on the pool `svi-test`, and two of its workers online, started each in a folder of its
    own, with the data root `tmp_path/root` (what the fixture gives)."""
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
        process = subprocess.Popen(command, cwd=folder, env=environment, stdout=log, stderr=log, start_new_session=True)
        WORKER_PROCESSES[name] = process
        started.append((process, log))
    try:  # the workers are stopped even when waiting for them fails (the server busy)
        deadline = time.monotonic() + 120
        while online_workers("svi-test") != {"worker-a", "worker-b"} and time.monotonic() < deadline:
            time.sleep(0.5)
        yield root
    finally:
        for worker, log in started:
            stop_worker(worker)
            log.close()
        WORKER_PROCESSES.clear()


# How long a worker may take to stop after SIGINT before it is killed.
STOP_WAIT_S = 20


def stop_worker(worker: subprocess.Popen) -> None:
    """Stop a worker as Ctrl-C does (SIGINT), then, if it has not stopped within STOP_WAIT_S, as a second Ctrl-C
    does (SIGKILL), with its process group: on loaded cores Prefect 3.9's worker sometimes loses the interrupt and
    goes on taking runs, which would then be the next test's, rendered under this test's data root."""
    if worker.poll() is not None:
        return
    worker.send_signal(signal.SIGINT)
    try:
        worker.wait(timeout=STOP_WAIT_S)
    except subprocess.TimeoutExpired:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)


def finished(flow_run_ids: list, timeout_s: float = 300, crashes_end: bool = True) -> list:
    """The flow runs once all are in a final state. crashes_end=False: Crashed is not an end (the automation takes
    a crashed run again, a moment later)."""
    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while True:
            runs = [client.read_flow_run(run_id) for run_id in flow_run_ids]
            ended = [run.state.is_final() and (crashes_end or not run.state.is_crashed()) for run in runs]
            if all(ended) or time.monotonic() > deadline:
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


def test_a_batch_fans_its_films_out_to_the_workers(tmp_path, workers, monkeypatch):
    monkeypatch.setenv("SVI_CACHE_DIR", str(workers))  # this process waits on the same data root
    listing = tmp_path / "batch.yaml"
    films = [{**SMALL, "keywords": [keyword], "output": {"run_dir": f"runs/{keyword}"}} for keyword in ("ball", "cube")]
    listing.write_text(yaml.safe_dump(films))
    made = batch(listing, fan_out=True)

    assert made == [workers / "runs" / "ball" / "film.mp4", workers / "runs" / "cube" / "film.mp4"]
    assert all(path.is_file() for path in made)
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(limit=2, sort="START_TIME_DESC")
    assert {run.labels.get("prefect.worker.name") for run in runs} == {"worker-a", "worker-b"}


def at_its_second_clip(request: dict, root: Path) -> tuple:
    """Submit the film of `request` and wait until its second clip is in its run folder (under `root`); returns
    the flow run as the server then has it, and that clip's path."""
    run = run_deployment("film/svi-film", parameters={"request": request}, timeout=0)
    second_clip = root / request["output"]["run_dir"] / "clips" / "clip_0001.mkv"
    deadline = time.monotonic() + 120
    while not second_clip.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    with get_client(sync_client=True) as client:
        return client.read_flow_run(run.id), second_clip


def process_of(run) -> int:
    """The process id of the flow run's own process (`infrastructure_pid` is `host:pid`)."""
    return int(str(run.infrastructure_pid).rsplit(":", 1)[-1])


def still_running_task_runs(run_id, timeout_s: float = 60) -> list[str]:
    """The names of the flow run's task runs still Running once none is, or after `timeout_s`. Task-run states
    reach the server a moment after the engine logs them, and a second attempt of the run (Prefect starts one when
    a crash is reported twice: `RunFolder.claimed`) may still be finishing from the clip store when the run is
    Completed; a task run the crashed attempt left Running, unless closed, stays so."""
    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while True:
            task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
            running = [task_run.name for task_run in task_runs if task_run.state.is_running()]
            if not running or time.monotonic() > deadline:
                return running
            time.sleep(1)


def test_a_film_whose_worker_process_dies_goes_on_by_itself(tmp_path, workers, monkeypatch):
    request = {"clips": 5, "render": SMALL["render"], "output": {"run_dir": "runs/crash"}}
    run, second_clip = at_its_second_clip(request, workers)
    os.kill(process_of(run), signal.SIGKILL)  # the flow run's own process, mid-film: as if its machine were lost
    # The clips finished by then, as files (hard links into the clip store): made again, they would be new files.
    made = {path.name: (path.stat().st_ino, path.stat().st_mtime_ns) for path in second_clip.parent.glob("clip_*.mkv")}
    (retried,) = finished([run.id], crashes_end=False)

    assert retried.state.is_completed(), retried.state.message
    assert not still_running_task_runs(run.id)
    with get_client(sync_client=True) as client:
        states = [state.type.value for state in client.read_flow_run_states(run.id)]
        logs = [log.message for log in client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))]
    assert "CRASHED" in states and states[-1] == "COMPLETED"
    assert any("the one before crashed" in message for message in logs)
    # No clip was rendered twice: those finished before the crash are the same files, and the log (what the killed
    # process had sent, and the retried attempt's) names each clip rendered once at most. (A clip the killed
    # process stored but had not yet placed is reused from the store by the retried attempt.)
    assert len(made) >= 2
    for name, (inode, mtime) in made.items():
        path = second_clip.with_name(name)
        assert (path.stat().st_ino, path.stat().st_mtime_ns) == (inode, mtime), name
    assert all(sum(f"clip {k} rendered" in message for message in logs) <= 1 for k in range(5))

    # The same film as one uninterrupted run (another data root, in this process).
    monkeypatch.setenv("SVI_CACHE_DIR", str(tmp_path / "straight"))
    straight = film(FilmRequest.model_validate({**request, "output": {"run_dir": str(tmp_path / "straight-run")}}))
    for k in range(5):
        name = f"clip_{k:04d}.mkv"
        assert torch.equal(read_clip(straight.parent / "clips" / name), read_clip(second_clip.with_name(name)))


def test_a_film_in_chapters_renders_them_on_both_workers(tmp_path, workers, monkeypatch):
    chaptered = {"chapters": 2, "crossfade_s": 0.25}
    request = {**SMALL, "output": {"run_dir": "runs/chapters", "fan_out": True, **chaptered}}
    (parent,) = finished([run_deployment("film/svi-film", parameters={"request": request}, timeout=0).id])

    assert parent.state.is_completed(), parent.state.message
    with get_client(sync_client=True) as client:
        chapter_runs = [run for run in client.read_flow_runs() if run.start_time and run.start_time > parent.start_time]
    assert len(chapter_runs) == 1 and chapter_runs[0].state.is_completed()
    # Chapter 2 ran on the other worker while the parent made chapter 1.
    assert chapter_runs[0].labels["prefect.worker.name"] != parent.labels["prefect.worker.name"]
    assert chapter_runs[0].start_time < parent.end_time

    # The same film as one run that makes both chapters itself, in this process.
    monkeypatch.setenv("SVI_CACHE_DIR", str(tmp_path / "straight"))
    output = {"run_dir": str(tmp_path / "straight-run"), **chaptered}
    straight = film(FilmRequest.model_validate({**SMALL, "output": output}))
    joined = workers / "runs" / "chapters" / "film.mp4"
    assert np.array_equal(video_frames(joined), video_frames(straight))


def video_frames(path: Path) -> np.ndarray:
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    width, height = meta["size"]
    return np.stack([np.frombuffer(frame, np.uint8).reshape(height, width, 3) for frame in reader])


@pytest.mark.parametrize("command", ["deploy", "worker"])
def test_a_pool_needs_a_shared_server(command, monkeypatch, capsys):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    assert main([command]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error == [
        f"error: svi {command} needs the Prefect server the GPU machines share: start it with `svi server` and set "
        "PREFECT_API_URL (e.g. http://127.0.0.1:4200/api) here and on every machine"
    ]


def test_a_film_whose_worker_is_lost_goes_on_on_the_other_worker(tmp_path, workers):
    """The worker and its flow run's process killed together (a machine lost): nobody reports the crash, the run
    falls silent, the automation marks it Crashed, and the other worker takes it again. (Last in this file: the
    short silence below stays on the deployment until the next `deploy_flows`.)"""
    deploy_flows("svi-test", silence_s=35)
    request = {"clips": 5, "render": SMALL["render"], "output": {"run_dir": "runs/lost"}}
    run, second_clip = at_its_second_clip(request, workers)
    lost, process = run.labels["prefect.worker.name"], process_of(run)
    # The worker first, then the run's process at once: neither is left to report the other's death.
    os.killpg(WORKER_PROCESSES[lost].pid, signal.SIGKILL)
    os.kill(process, signal.SIGKILL)
    WORKER_PROCESSES[lost].wait(timeout=30)
    (retried,) = finished([run.id], timeout_s=240, crashes_end=False)

    assert retried.state.is_completed(), retried.state.message
    with get_client(sync_client=True) as client:
        crashes = [s.message for s in client.read_flow_run_states(run.id) if s.type.value == "CRASHED"]
    assert crashes == ["no heartbeat for 35 s: its worker is gone"]
    assert retried.labels["prefect.worker.name"] != lost
    assert all((second_clip.parent / f"clip_{k:04d}.mkv").is_file() for k in range(5))

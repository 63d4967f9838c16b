"""Films as runs of the `film/svi-film` deployment on the work pool (`svi deploy`), waited for together: how
`svi batch --fan-out` spreads its films, and a film in chapters (`fan_out`) its chapters 2…, over free workers."""

import time
from pathlib import Path
from uuid import UUID

from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound

from pipeline.request import FilmRequest

FILM_DEPLOYMENT = "film/svi-film"


def submit_films(requests: list[FilmRequest]) -> dict[UUID, Path]:
    """Each request as a run of the film deployment, started by whichever worker is free; returns each run's id
    and the film it makes."""
    try:
        return {
            run_deployment(FILM_DEPLOYMENT, parameters={"request": request.form_defaults()}, timeout=0).id: (
                request.output.run_dir / "film.mp4"
            )
            for request in requests
        }
    except ObjectNotFound:
        raise ValueError(f"no deployment {FILM_DEPLOYMENT} on the server: run `svi deploy` first") from None


def wait_for_films(runs: dict[UUID, Path], poll_s: float = 1.0) -> None:
    """Wait until every run (id → the film it makes) has ended, logging each as it does; raise if one failed.
    (Nothing to wait for: returns at once.)"""
    waiting, failed = set(runs), []
    with get_client(sync_client=True) as client:
        while waiting:
            time.sleep(poll_s)
            for run_id in sorted(waiting):
                run = client.read_flow_run(run_id)
                if not run.state.is_final():
                    continue
                waiting.discard(run_id)
                worker = run.labels.get("prefect.worker.name", "?")
                get_run_logger().info("%s: %s on %s (run %s)", runs[run_id], run.state.name, worker, run.name)
                if not run.state.is_completed():
                    failed.append(f"{runs[run_id]} ({run.state.name}: {run.state.message})")
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(runs)} films did not finish: {'; '.join(failed)}")


def films_elsewhere(requests: list[FilmRequest]) -> list[Path]:
    """Make the films of `requests` on the work pool and wait for them all; returns their film.mp4 paths."""
    runs = submit_films(requests)
    wait_for_films(runs)
    return list(runs.values())

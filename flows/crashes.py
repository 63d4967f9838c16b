"""A film run whose process died (a worker machine lost, the process killed) goes on by itself, on any worker.

`svi deploy` puts two automations on the server. A `film` run of the deployment that ends Crashed is set back to
Scheduled, so a free worker takes it again and every finished clip comes from the shared clip store. A run whose
worker died with it (the machine lost: nobody is left to report the crash) stops sending the heartbeats its
process sends every `HEARTBEAT_S` (`svi worker` sets them); after `SILENCE_S` without one it is marked Crashed,
and so taken again. The retried run then closes what the dead attempt left open: its task runs still marked
Running are marked Crashed, and the crash's reason goes into the run's own log. A run that crashed `MAX_CRASHES`
times is failed instead of being taken again (a machine that always dies on it would otherwise loop).
"""

from datetime import timedelta
from uuid import UUID

from prefect import get_run_logger
from prefect.automations import Automation
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    TaskRunFilter,
    TaskRunFilterState,
    TaskRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.events.actions import ChangeFlowRunState
from prefect.events.schemas.automations import EventTrigger, Posture
from prefect.exceptions import ObjectNotFound
from prefect.runtime import flow_run
from prefect.states import Crashed

RETRY_AUTOMATION = "svi-retry-crashed-films"
SILENCE_AUTOMATION = "svi-crash-silent-films"
MAX_CRASHES = 3
HEARTBEAT_S = 30  # the least Prefect allows (PREFECT_FLOWS_HEARTBEAT_FREQUENCY)
SILENCE_S = 3 * HEARTBEAT_S
FINAL_EVENTS = {f"prefect.flow-run.{state}" for state in ("Completed", "Failed", "Cancelled", "Crashed")}


def _made_anew(automation: Automation) -> Automation:
    try:
        Automation.read(name=automation.name).delete()
    except ValueError:  # none yet (Automation.read raises ValueError for an unknown name)
        pass
    return automation.create()


def retry_crashed_runs(deployment_id: UUID, silence_s: float = SILENCE_S) -> list[Automation]:
    """The automations (made anew) that mark a silent run of the deployment Crashed and set a crashed one back to
    Scheduled."""
    of_the_deployment = {"prefect.resource.id": f"prefect.deployment.{deployment_id}"}
    return [
        _made_anew(
            Automation(
                name=RETRY_AUTOMATION,
                description="a film run whose process died is taken again by a free worker; finished clips are reused",
                trigger=EventTrigger(
                    expect={"prefect.flow-run.Crashed"},
                    match_related=of_the_deployment,
                    posture=Posture.Reactive,
                    threshold=1,
                ),
                actions=[ChangeFlowRunState(state=StateType.SCHEDULED, message="taken again after its process died")],
            )
        ),
        _made_anew(
            Automation(
                name=SILENCE_AUTOMATION,
                description="a film run that stopped sending heartbeats lost its worker: it is marked Crashed",
                trigger=EventTrigger(
                    after={"prefect.flow-run.heartbeat"},
                    expect={"prefect.flow-run.heartbeat", *FINAL_EVENTS},
                    for_each={"prefect.resource.id"},
                    match_related=of_the_deployment,
                    posture=Posture.Proactive,
                    threshold=1,
                    within=timedelta(seconds=silence_s),
                ),
                actions=[
                    ChangeFlowRunState(
                        state=StateType.CRASHED, message=f"no heartbeat for {silence_s:.0f} s: its worker is gone"
                    )
                ],
            )
        ),
    ]


def close_crashed_attempt() -> None:
    """In a flow run: when an earlier attempt of it crashed, log why, and mark the task runs it left Running as
    Crashed (none of this attempt's has started yet). Raises once the run has crashed `MAX_CRASHES` times."""
    run_id = flow_run.get_id()
    if run_id is None:
        return
    with get_client(sync_client=True) as client:
        try:
            crashes = [state for state in client.read_flow_run_states(run_id) if state.type == StateType.CRASHED]
        except ObjectNotFound:
            return
        if not crashes:
            return
        log = get_run_logger()
        log.warning(
            "attempt %d of this run: the one before crashed (%s); finished clips come from the clip store",
            len(crashes) + 1,
            crashes[-1].message,
        )
        if len(crashes) >= MAX_CRASHES:
            raise RuntimeError(
                f"this run crashed {len(crashes)} times (the last: {crashes[-1].message}): it is not taken again; "
                "look at the worker's machine (memory, GPU), then start the film again"
            )
        left_running = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])),
            task_run_filter=TaskRunFilter(
                state=TaskRunFilterState(type=TaskRunFilterStateType(any_=[StateType.RUNNING]))
            ),
        )
        for task_run in left_running:
            client.set_task_run_state(
                task_run.id, Crashed(message="its flow run's process died; the run was taken again"), force=True
            )
            log.info("task run %s of the crashed attempt marked Crashed", task_run.name)

"""One GPU shared by the runs of one process (`svi serve`): the Prefect global concurrency limit `svi-gpu`, taken
around each clip and each training task with a lease. A slot whose process was killed comes back once its lease
runs out (`LEASE_S`), instead of staying taken as a tag concurrency limit's did. On a work pool each worker's
`--limit 1` does this job and no slot is taken (the switch is off there).
"""

import os
from collections.abc import Iterator
from contextlib import contextmanager

from prefect.client.orchestration import get_client
from prefect.concurrency.sync import concurrency

GPU_LIMIT = "svi-gpu"
SWITCH = "SVI_GPU_LIMIT"  # "1" in the runs `svi serve` starts
LEASE_S = 60.0  # renewed while the slot is held


def ensure_gpu_limit(slots: int) -> None:
    """Create (or resize) the global concurrency limit `svi-gpu` on the server, with `slots` slots."""
    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(name=GPU_LIMIT, limit=slots)


@contextmanager
def gpu_slot() -> Iterator[None]:
    """Hold a slot of `svi-gpu` (waiting for one) where the switch is on; else nothing. Untagged, a command-line run
    skips Prefect's slot calls, which cost about 2 s per clip here (`bench/flow_overhead.py`)."""
    if os.environ.get(SWITCH) != "1":
        yield
        return
    with concurrency(GPU_LIMIT, occupy=1, lease_duration=LEASE_S, strict=True):
        yield

"""Where the flows' tasks keep their results, and which failures they retry."""

import os
from collections.abc import Callable

from prefect import task
from prefect.tasks import exponential_backoff

from pipeline.cache_folder import task_results_folder

# Persisted next to the clip store, so a retried or repeated run finds what an earlier one made; or in the Prefect
# storage block `$SVI_RESULT_STORAGE` names (its slug, e.g. `s3-bucket/svi-results`) for machines without a shared
# folder.
RESULTS = os.environ.get("SVI_RESULT_STORAGE") or task_results_folder()


def worth_retrying(task, task_run, state) -> bool:
    """Network hiccups are; a search that found nothing usable (or bad input) fails the same way again."""
    try:
        state.result()
    except ValueError:  # RetrievalError and bad requests
        return False
    except Exception:
        return True
    return False


def cached_network_task(name: str, key: Callable, retries: int = 2, **options) -> Callable:
    """Prefect's `task` for a stage that talks to the web or to a model: its result cached by `key` (content) and
    persisted in `RESULTS`, and a failure that may pass (`worth_retrying`) retried `retries` times with backoff."""
    return task(
        name=name,
        retries=retries,
        retry_delay_seconds=exponential_backoff(backoff_factor=4),
        retry_condition_fn=worth_retrying,
        cache_key_fn=key,
        persist_result=True,
        result_storage=RESULTS,
        **options,
    )

"""Where the flows' tasks keep their results, and which failures they retry."""

from pipeline.cache_folder import task_results_folder

# Persisted next to the clip store, so a retried or repeated run finds what an earlier one made.
RESULTS = task_results_folder()


def worth_retrying(task, task_run, state) -> bool:
    """Network hiccups are; a search that found nothing usable (or bad input) fails the same way again."""
    try:
        state.result()
    except ValueError:  # RetrievalError and bad requests
        return False
    except Exception:
        return True
    return False

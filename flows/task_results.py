"""Where the flows' tasks keep their results."""

from pipeline.cache_folder import task_results_folder

# Persisted next to the clip store, so a retried or repeated run finds what an earlier one made.
RESULTS = task_results_folder()

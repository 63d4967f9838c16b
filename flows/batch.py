"""The `batch` flow: several films from one YAML file, one after the other in this process (they share the loaded
engine), or, with `fan_out`, each as a run of the `film/svi-film` deployment on the work pool (`svi deploy`), as many
at once as there are free workers.

The file is a list of film requests, each written like the `film` flow's form (keys of `FilmRequest`):

    - keywords: [red ball]
      clips: 3
      run_dir: runs/red-ball
    - keywords: [lighthouse, night]
      clips: 5
      mode: shot
      run_dir: runs/lighthouse

No `from __future__ import annotations` here: served runs must resolve the parameter types.
"""

from pathlib import Path

import yaml
from prefect import flow

from pipeline.cache_folder import anchored_paths, cache_root
from pipeline.request import FilmRequest

from .fan_out import films_elsewhere
from .film import film


def read_batch(path: Path) -> list[FilmRequest]:
    """The film requests in a batch file; a clear error names the file and the entry that is wrong."""
    entries = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{path}: a batch file is a non-empty YAML list of film requests")
    requests = []
    for i, entry in enumerate(entries, start=1):
        try:
            requests.append(FilmRequest.model_validate(entry))
        except ValueError as err:
            raise ValueError(f"{path}: film {i}: {err}") from err
    return requests


@flow(name="batch", log_prints=True)
def batch(path: Path = Path("batch.yaml"), fan_out: bool = False) -> list[Path]:
    """Make every film listed in the YAML file at `path` (a relative one is in the data root); returns their
    film.mp4 paths. fan_out: submit each to the work pool and wait for them all (run this where no GPU is needed:
    it only waits)."""
    requests = read_batch(path if path.is_absolute() else cache_root() / path)
    if not fan_out:
        return [film(request) for request in requests]
    return films_elsewhere([anchored_paths(request, cache_root()) for request in requests])

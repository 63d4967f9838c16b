"""The assemble stage: a run folder's stored clips → film.mp4, film.srt, storyboard.png and manifest.json."""

from .film import assemble_film, assemble_run, join_run_chapters
from .film_video import FilmFrames, StoredFrames, join_chapters, stitched_clips, write_film
from .storyboard import draw_storyboard
from .subtitles import srt_timestamp, subtitles

__all__ = [
    "FilmFrames",
    "StoredFrames",
    "assemble_film",
    "assemble_run",
    "draw_storyboard",
    "join_chapters",
    "join_run_chapters",
    "srt_timestamp",
    "stitched_clips",
    "subtitles",
    "write_film",
]

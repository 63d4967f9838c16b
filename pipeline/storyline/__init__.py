"""The storyline stage: the reference picture → a prompt stream of L prompts (`storyline.yaml`), written by one of
the backends in `STORYLINE_BACKENDS` (built in: `backends.py`), or read from the user's own prompt file."""

from .backends import write_storyline
from .follow import follow_prompt
from .prompt_files import PromptFileError, PromptStream, read_prompt_file, read_prompt_stream
from .request import (
    STORYLINE_BACKENDS,
    ChatTurn,
    Storyline,
    StorylineBackend,
    StorylineError,
    StorylineRequest,
    StorylineServerError,
)
from .storyline_file import read_storyline, save_storyline, storyline_yaml

__all__ = [
    "STORYLINE_BACKENDS",
    "ChatTurn",
    "PromptFileError",
    "Storyline",
    "StorylineBackend",
    "StorylineError",
    "StorylineRequest",
    "StorylineServerError",
    "follow_prompt",
    "PromptStream",
    "read_prompt_file",
    "read_prompt_stream",
    "read_storyline",
    "save_storyline",
    "storyline_yaml",
    "write_storyline",
]

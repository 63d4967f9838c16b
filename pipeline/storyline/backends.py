"""The built-in storyline backends, one row each in `STORYLINE_BACKENDS`: a new backend is a module with its
`write` function plus one row here (or one `STORYLINE_BACKENDS.register` call anywhere before the request is made).
"""

from pathlib import Path

from .request import STORYLINE_BACKENDS, ChatBackend, Storyline, StorylineBackend, StorylineRequest
from .template import template_storyline


def _qwen(image: Path, request: StorylineRequest) -> Storyline:
    # Imported when used: torch + transformers load only for a run that asks for Qwen.
    from .qwen_chat import qwen_storyline

    return qwen_storyline(image, request)


def _qwen_chat(request: StorylineRequest) -> ChatBackend:
    from .qwen_chat import qwen_chat

    return qwen_chat(request)


def _openai(image: Path, request: StorylineRequest) -> Storyline:
    from .openai_chat import openai_storyline

    return openai_storyline(image, request)


def _openai_chat(request: StorylineRequest) -> ChatBackend:
    from .openai_chat import openai_chat

    return openai_chat(request)


STORYLINE_BACKENDS.register(
    "template", StorylineBackend(template_storyline, "offline and deterministic, from the keywords alone")
)
STORYLINE_BACKENDS.register(
    "qwen",
    StorylineBackend(
        _qwen,
        "Qwen2.5-VL-3B/7B-Instruct from a local folder",
        needs=("qwen_model",),
        needs_help="the local Qwen2.5-VL-3B/7B-Instruct folder (e.g. `hf download Qwen/Qwen2.5-VL-7B-Instruct "
        "--local-dir models/qwen2.5-vl-7b`), or use backend 'template'",
        chat=_qwen_chat,
    ),
)
STORYLINE_BACKENDS.register(
    "openai",
    StorylineBackend(
        _openai,
        "any OpenAI-compatible chat server, e.g. vLLM serving Qwen2.5-VL",
        needs=("openai_base_url", "openai_model"),
        needs_help="the server's address (e.g. http://127.0.0.1:8000/v1) and the model name it lists at "
        "GET <base_url>/models",
        chat=_openai_chat,
    ),
)


def write_storyline(image: Path, request: StorylineRequest) -> Storyline:
    """The prompt stream for the picture at `image`, written by the request's backend."""
    return STORYLINE_BACKENDS[request.backend].write(Path(image), request)

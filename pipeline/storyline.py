"""The storyline stage: the reference picture → a prompt stream of L prompts (`storyline.yaml`).

Backends:
- `template` (the demo default): offline and deterministic, from the keywords alone; no model (storyline_template).
- `qwen`: Qwen2.5-VL-3B/7B-Instruct from a local folder with transformers (storyline_qwen).
- `openai`: any OpenAI-compatible chat server, such as vLLM serving Qwen2.5-VL (storyline_openai).

For the two model backends the conversation is the same: the picture and the instruction (`prompts/storyline.md`),
the reply parsed and checked (exactly L non-empty prompts within the length bounds, storyline_replies), and on a
bad reply the problem is sent back (`prompts/storyline-retry.md`) and the model asked again, up to `attempts`
times in all, before failing with every reason. A backend is only "conversation → reply text".
"""

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from svi_model.atomic_files import write_text_atomic

from .keywords import Keywords
from .storyline_replies import JSON_SHAPE, ReplyError, checked_prompts, prompts_from_reply
from .storyline_template import template_prompts

log = logging.getLogger(__name__)

PROMPTS_FOLDER = Path(__file__).resolve().parents[1] / "prompts"
INSTRUCTION = PROMPTS_FOLDER / "storyline.md"
RETRY_INSTRUCTION = PROMPTS_FOLDER / "storyline-retry.md"

# Qwen2.5-VL turns every 28×28 pixels into one visual token. 512 of them keep the film's 832×480 reference whole
# (399,360 pixels, 510 tokens); the model's own default allows 16,384 tokens per picture.
PIXELS_PER_TOKEN = 28 * 28


class StorylineError(ValueError):
    """No usable prompt stream: the message names the input or the replies at fault and what to do.

    Asking again with the same inputs fails the same way (a ValueError, as the flow's retry rules expect).
    """


class StorylineServerError(ConnectionError):
    """The storyline server could not be reached, timed out or failed on its side: worth trying again later."""


class StorylineRequest(BaseModel):
    """How to write the prompt stream for one picture: the backend, L, what the film is about, and the limits."""

    model_config = ConfigDict(protected_namespaces=())

    backend: Literal["template", "qwen", "openai"] = Field("template", description="template: offline demo default")
    clips: int = Field(3, ge=1, le=1000, description="L: prompts to write, one per ~5 s clip")
    keywords: Keywords = Field(default_factory=list, description="what the film is about")
    style: str | None = Field(None, description="e.g. 'cinematic, golden hour'")
    genre: str | None = Field(None, description="e.g. 'nature documentary'")
    qwen_model: Path | None = Field(None, description="qwen: local Qwen2.5-VL-3B/7B-Instruct folder")
    device: str | None = Field(None, description="qwen: cuda, cuda:1 or cpu (default: cuda when there is one)")
    min_pixels: int = Field(4 * PIXELS_PER_TOKEN, ge=PIXELS_PER_TOKEN, description="qwen: smallest picture area")
    max_pixels: int = Field(512 * PIXELS_PER_TOKEN, ge=PIXELS_PER_TOKEN, description="picture area cap (tokens·28²)")
    openai_base_url: str | None = Field(None, description="openai: e.g. http://127.0.0.1:8000/v1")
    openai_model: str | None = Field(None, description="openai: the model name the server serves")
    openai_api_key_env: str = Field("OPENAI_API_KEY", description="openai: name of the variable holding the key")
    openai_json_mode: bool = Field(True, description="openai: ask for response_format json_object")
    timeout_s: float = Field(300.0, gt=0, description="openai: one request")
    max_new_tokens: int | None = Field(None, ge=16, description="longest reply in tokens (default: 200 per prompt)")
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="0: greedy (repeatable); above 0: sampled")
    seed: int = Field(0, ge=0, description="sampling seed (used when temperature > 0)")
    attempts: int = Field(3, ge=1, le=20, description="times the model is asked: the first ask and the re-asks")
    min_prompt_chars: int = Field(40, ge=1, description="shortest prompt accepted, in characters")
    max_prompt_chars: int = Field(1000, ge=1, description="longest prompt accepted, in characters")

    @model_validator(mode="after")
    def _backend_has_what_it_needs(self) -> "StorylineRequest":
        if self.backend == "qwen" and self.qwen_model is None:
            raise ValueError(
                "backend 'qwen' needs qwen_model: the local Qwen2.5-VL-3B/7B-Instruct folder "
                "(e.g. `hf download Qwen/Qwen2.5-VL-7B-Instruct --local-dir models/qwen2.5-vl-7b`), "
                "or use backend 'template'"
            )
        if self.backend == "openai" and not (self.openai_base_url and self.openai_model):
            raise ValueError(
                "backend 'openai' needs openai_base_url (e.g. http://127.0.0.1:8000/v1) and openai_model "
                "(the name the server lists at GET <base_url>/models)"
            )
        if self.min_pixels > self.max_pixels:
            raise ValueError(f"min_pixels {self.min_pixels} is above max_pixels {self.max_pixels}: swap or lower it")
        if self.min_prompt_chars > self.max_prompt_chars:
            raise ValueError(
                f"min_prompt_chars {self.min_prompt_chars} is above max_prompt_chars {self.max_prompt_chars}"
            )
        return self

    def reply_token_limit(self) -> int:
        """The longest reply allowed: `max_new_tokens`, or room for L prompts of ~90 words (~120 tokens) and JSON."""
        return self.max_new_tokens or 200 * self.clips + 256


class Storyline(BaseModel):
    """A prompt stream and where it came from (persisted as the storyline task's result)."""

    prompts: list[str] = Field(min_length=1, description="one prompt per clip, in order")
    backend: str = Field(description="template, qwen or openai")
    model: str = Field(description="'template', the Qwen folder, or the server's model name at its URL")
    attempts: int = Field(1, ge=1, description="times the model was asked")
    rejected: list[str] = Field(default_factory=list, description="why each earlier reply was refused")
    keywords: list[str] = Field(default_factory=list)
    style: str | None = None
    genre: str | None = None


@dataclass(frozen=True)
class ChatTurn:
    """One message of the storyline conversation; the picture goes with the first user turn."""

    role: Literal["user", "assistant"]
    text: str


# What a model backend is: (picture, conversation so far) → the model's next reply.
ChatBackend = Callable[[Path, list[ChatTurn]], str]


def _template_text(path: Path, **fields) -> str:
    """The instruction file at `path` without its <!-- --> notes, filled in with `fields`."""
    text = re.sub(r"<!--.*?-->", "", path.read_text(encoding="utf-8"), flags=re.DOTALL).strip()
    try:
        return text.format(**fields)
    except (KeyError, IndexError, ValueError) as err:
        raise StorylineError(
            f"{path}: cannot fill in the instruction ({err!r}); the placeholders it may use are "
            f"{', '.join('{' + name + '}' for name in fields)}, and a literal brace is written {{{{ or }}}}"
        ) from err


def _limits(request: StorylineRequest) -> dict:
    return {
        "clips": request.clips,
        "min_chars": request.min_prompt_chars,
        "max_chars": request.max_prompt_chars,
        "json_shape": JSON_SHAPE,
    }


def instruction_text(request: StorylineRequest) -> str:
    """The first message to the model (sent with the picture), from `prompts/storyline.md`."""
    return _template_text(
        INSTRUCTION,
        topic=", ".join(request.keywords) or "whatever the picture shows",
        style=request.style or "true to the picture's own look",
        genre=request.genre or "whatever suits the picture",
        **_limits(request),
    )


def retry_text(problem: str, request: StorylineRequest) -> str:
    """The message sent back after a reply that could not be used, from `prompts/storyline-retry.md`."""
    return _template_text(RETRY_INSTRUCTION, problem=problem, **_limits(request))


def ask_for_prompts(chat: ChatBackend, image: Path, request: StorylineRequest) -> tuple[list[str], list[str]]:
    """Ask `chat` for the prompt stream, re-asking with the problem on a bad reply.

    Returns the checked prompts and the reasons the earlier replies were refused (one per re-ask). Raises
    `StorylineError` naming every refused reply once `request.attempts` replies were unusable.
    """
    turns = [ChatTurn("user", instruction_text(request))]
    rejected: list[str] = []
    for attempt in range(1, request.attempts + 1):
        reply = chat(image, turns)
        try:
            prompts = prompts_from_reply(reply, request.clips, request.min_prompt_chars, request.max_prompt_chars)
        except ReplyError as problem:
            rejected.append(str(problem))
            log.warning("storyline reply %d of %d refused: %s", attempt, request.attempts, problem)
            turns += [ChatTurn("assistant", reply), ChatTurn("user", retry_text(str(problem), request))]
            continue
        return prompts, rejected
    reasons = "\n".join(f"  reply {n}: {reason}" for n, reason in enumerate(rejected, start=1))
    raise StorylineError(
        f"the {request.backend} storyline model gave no usable prompt stream of {request.clips} prompts in "
        f"{request.attempts} attempts:\n{reasons}\n"
        "Try more attempts, a larger max_new_tokens, a larger model, or write the prompts yourself (prompts_file)."
    )


def _model_backend(request: StorylineRequest) -> tuple[ChatBackend, str]:
    """The chat backend the request names, and how the storyline records its model."""
    # Imported here: each pulls in its own client stack (torch + transformers, or httpx) only when used.
    if request.backend == "qwen":
        from .storyline_qwen import QwenChat

        chat = QwenChat(
            folder=request.qwen_model,
            device=request.device,
            min_pixels=request.min_pixels,
            max_pixels=request.max_pixels,
            max_new_tokens=request.reply_token_limit(),
            temperature=request.temperature,
            seed=request.seed,
        )
        return chat, str(request.qwen_model)
    from .storyline_openai import OpenAIChat

    chat = OpenAIChat(
        base_url=request.openai_base_url,
        model=request.openai_model,
        api_key_env=request.openai_api_key_env,
        json_mode=request.openai_json_mode,
        max_pixels=request.max_pixels,
        max_tokens=request.reply_token_limit(),
        temperature=request.temperature,
        seed=request.seed,
        timeout_s=request.timeout_s,
    )
    return chat, f"{request.openai_model} at {request.openai_base_url}"


def write_storyline(image: Path, request: StorylineRequest) -> Storyline:
    """The prompt stream for the picture at `image`, written by the request's backend."""
    about = {"keywords": request.keywords, "style": request.style, "genre": request.genre}
    if request.backend == "template":
        prompts = template_prompts(request.clips, request.keywords, request.style, request.genre)
        try:
            prompts = checked_prompts(prompts, request.clips, request.min_prompt_chars, request.max_prompt_chars)
        except ReplyError as problem:
            raise StorylineError(
                f"the template storyline does not fit the request's prompt lengths ({problem}): "
                "widen min_prompt_chars..max_prompt_chars"
            ) from problem
        return Storyline(prompts=prompts, backend="template", model="template", **about)
    if not Path(image).is_file():
        raise StorylineError(f"reference picture {image} does not exist: the storyline is written from it")
    chat, model = _model_backend(request)
    prompts, rejected = ask_for_prompts(chat, Path(image), request)
    return Storyline(
        prompts=prompts,
        backend=request.backend,
        model=model,
        attempts=len(rejected) + 1,
        rejected=rejected,
        **about,
    )


def storyline_yaml(storyline: Storyline) -> str:
    """`storyline.yaml`'s text: a note on editing, where the prompts came from, then the `prompts:` list."""
    header = (
        "# The prompt stream: one prompt per clip (about 5 seconds each), in order.\n"
        "# Edit the prompts and render again; only the `prompts:` list is read, the rest is a record.\n"
    )
    record = storyline.model_dump(exclude={"prompts"})
    body = yaml.safe_dump(record, sort_keys=False, allow_unicode=True, width=1000)
    prompts = yaml.safe_dump({"prompts": storyline.prompts}, sort_keys=False, allow_unicode=True, width=1000)
    return header + body + prompts


def save_storyline(storyline: Storyline, path: Path) -> None:
    """Write `storyline` to `path` (storyline.yaml) atomically, readable by `prompt_files.read_prompt_file`."""
    write_text_atomic(path, storyline_yaml(storyline))

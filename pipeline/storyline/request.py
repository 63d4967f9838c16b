"""What the storyline stage is asked and what it gives: `StorylineRequest`, `Storyline`, the chat types, the errors,
and the table of backends (`STORYLINE_BACKENDS`, filled in `backends.py`). This module imports no backend, so every
backend module may import these types without an import cycle.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, model_validator

from svi_model.clip_overrides import ClipOverrides

from ..keywords import Keywords
from ..registry import Registry

# Qwen2.5-VL turns every 28×28 pixels into one visual token. 512 of them keep the film's 832×480 reference whole
# (399,360 pixels, 510 tokens); the model's own default allows 16,384 tokens per picture.
PIXELS_PER_TOKEN = 28 * 28


class StorylineError(ValueError):
    """No usable prompt stream: the message names the input or the replies at fault and what to do.

    Asking again with the same inputs fails the same way (a ValueError, as the flow's retry rules expect).
    """


class StorylineServerError(ConnectionError):
    """The storyline server could not be reached, timed out or failed on its side: worth trying again later."""


@dataclass(frozen=True)
class ChatTurn:
    """One message of the storyline conversation; the picture goes with the first user turn."""

    role: Literal["user", "assistant"]
    text: str


Visual = Path | Sequence[Image.Image]
"""What a model backend is shown: a picture file, or a clip as some of its frames (RGB, in order)."""

# What a model backend is: (what it is shown, conversation so far) → the model's next reply.
ChatBackend = Callable[[Sequence[Visual], list[ChatTurn]], str]


@dataclass(frozen=True)
class StorylineBackend:
    """One way to write the prompt stream.

    write: (reference picture, request) → the storyline.
    needs: request fields it cannot do without; `needs_help` says what to give (shown when one is missing).
    chat: request → the model to talk to, for follow mode (None: the backend does not look at pictures).
    """

    write: Callable[[Path, "StorylineRequest"], "Storyline"]
    help: str
    needs: tuple[str, ...] = ()
    needs_help: str = ""
    chat: Callable[["StorylineRequest"], ChatBackend] | None = None


STORYLINE_BACKENDS: Registry[StorylineBackend] = Registry("storyline backend")
BackendName = STORYLINE_BACKENDS.name_type()


StorylineMode = Literal["plan", "follow"]
# json_schema: vLLM, SGLang, LM Studio, llama.cpp's server and OpenAI hold the reply to the schema; json_object: only
# to some JSON; text: no response_format (the lenient reading and re-asking still apply).
ReplyFormat = Literal["json_schema", "json_object", "text"]


def _watching_backends() -> list[str]:
    return [name for name in STORYLINE_BACKENDS if STORYLINE_BACKENDS[name].chat is not None]


class StorylineRequest(BaseModel):
    """How to write the prompt stream for one picture: the backend, L, what the film is about, and the limits."""

    model_config = ConfigDict(protected_namespaces=())

    backend: BackendName = Field("template", description="template: offline demo default")
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
    openai_reply_format: ReplyFormat = Field(
        "json_schema", description="openai: the response_format asked for (json_schema: exactly L prompts)"
    )
    timeout_s: float = Field(300.0, gt=0, description="openai: one request")
    max_new_tokens: int | None = Field(None, ge=16, description="longest reply in tokens (default: 200 per prompt)")
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="0: greedy (repeatable); above 0: sampled")
    seed: int = Field(0, ge=0, description="sampling seed (used when temperature > 0)")
    attempts: int = Field(3, ge=1, le=20, description="times the model is asked: the first ask and the re-asks")
    storyline_mode: StorylineMode = Field(
        "plan", description="plan: every prompt up front; follow: each next prompt written from the clip before it"
    )
    follow_frames: int = Field(4, ge=1, le=32, description="follow: last frames of the clip before that are shown")
    min_prompt_chars: int = Field(40, ge=1, description="shortest prompt accepted, in characters")
    max_prompt_chars: int = Field(1000, ge=1, description="longest prompt accepted, in characters")

    @model_validator(mode="after")
    def _backend_has_what_it_needs(self) -> "StorylineRequest":
        backend = STORYLINE_BACKENDS[self.backend]
        missing = [name for name in backend.needs if not getattr(self, name)]
        if missing:
            raise ValueError(f"backend {self.backend!r} needs {' and '.join(missing)}: {backend.needs_help}")
        if self.storyline_mode == "follow" and backend.chat is None:
            raise ValueError(
                f"storyline_mode 'follow' writes each prompt from the clip before it, and backend {self.backend!r} "
                f"does not look at pictures: use one that does ({', '.join(_watching_backends())})"
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
    backend: str = Field(description="the backend that wrote it (STORYLINE_BACKENDS)")
    model: str = Field(description="'template', the Qwen folder, or the server's model name at its URL")
    attempts: int = Field(1, ge=1, description="times the model was asked")
    rejected: list[str] = Field(default_factory=list, description="why each earlier reply was refused")
    keywords: list[str] = Field(default_factory=list)
    style: str | None = None
    genre: str | None = None
    overrides: list[ClipOverrides | None] = Field(
        default_factory=list, description="beside each prompt, the settings its entry sets (edited in by hand)"
    )
    planned: list[str] = Field(default_factory=list, description="follow: the prompts as the plan wrote them")
    followed: list[str | None] = Field(
        default_factory=list, description="follow: the prompt the model wrote from the clip before, per clip"
    )

    def pinned(self, k: int) -> bool:
        """Prompt k was edited by hand: it differs from what the model last wrote for it (follow mode keeps it)."""
        written = self.followed[k] if k < len(self.followed) and self.followed[k] is not None else None
        if written is None and k < len(self.planned):
            written = self.planned[k]
        return written is not None and k < len(self.prompts) and self.prompts[k] != written

    def with_followed(self, k: int, prompt: str) -> "Storyline":
        """This storyline with `prompt` written by follow mode for clip k (the stream grows to reach k)."""
        prompts, followed = list(self.prompts), list(self.followed)
        prompts += [prompt] * (k + 1 - len(prompts))
        followed += [None] * (k + 1 - len(followed))
        prompts[k], followed[k] = prompt, prompt
        return self.model_copy(update={"prompts": prompts, "followed": followed})

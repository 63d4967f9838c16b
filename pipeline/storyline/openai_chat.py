"""The `openai` storyline backend: any OpenAI-compatible chat server (vLLM, LM Studio, llama.cpp's server…).

One `POST {base_url}/chat/completions` per ask, with httpx (already a Prefect dependency). A picture goes in as
a `data:image/png;base64,…` URL in an `image_url` content part of the first message, shrunk first to `max_pixels`
(the server applies its own limit too, but a smaller upload is faster); a clip goes in as one such part per frame
it is given as (the chat API has no portable video part). The key is read from the environment
variable the request names, never stored; without it no Authorization header is sent (vLLM without `--api-key`).
"""

import base64
import io
import math
import os
from collections.abc import Sequence
from pathlib import Path

import httpx
from PIL import Image

from .conversation import chat_storyline
from .replies import PromptReply, reply_schema
from .request import (
    ChatTurn,
    ReplyFormat,
    Storyline,
    StorylineError,
    StorylineRequest,
    StorylineServerError,
    Visual,
)


def image_data_url(picture: Image.Image, max_pixels: int) -> str:
    """`picture` as a PNG data URL, scaled down (aspect kept) to at most `max_pixels` pixels."""
    rgb = picture.convert("RGB")
    scale = math.sqrt(max_pixels / (rgb.width * rgb.height))
    if scale < 1:
        rgb = rgb.resize((max(1, int(rgb.width * scale)), max(1, int(rgb.height * scale))), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    rgb.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def image_parts(visual: Visual, max_pixels: int) -> list[dict]:
    """The `image_url` content parts showing `visual`: one for a picture file, one per frame for a clip."""
    if isinstance(visual, Path):
        with Image.open(visual) as picture:
            frames = [picture.convert("RGB")]
    else:
        frames = list(visual)
    return [{"type": "image_url", "image_url": {"url": image_data_url(frame, max_pixels)}} for frame in frames]


def openai_messages(visuals: Sequence[Visual], turns: list[ChatTurn], max_pixels: int) -> list[dict]:
    """The conversation in the OpenAI chat format, the visuals first in the first message."""
    messages = []
    for index, turn in enumerate(turns):
        if index == 0:
            shown = [part for visual in visuals for part in image_parts(visual, max_pixels)]
            messages.append({"role": turn.role, "content": [*shown, {"type": "text", "text": turn.text}]})
        else:
            messages.append({"role": turn.role, "content": turn.text})
    return messages


class OpenAIChat:
    """(pictures and clips, conversation) → the reply of the model served at `base_url`."""

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str = "OPENAI_API_KEY",
        reply_format: ReplyFormat = "json_schema",
        reply_shape: dict | None = None,
        max_pixels: int = 512 * 28 * 28,
        max_tokens: int = 4096,
        temperature: float = 0.0,
        seed: int = 0,
        timeout_s: float = 300.0,
    ):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.api_key_env, self.reply_format = model, api_key_env, reply_format
        self.reply_shape = reply_shape or PromptReply.model_json_schema()
        self.max_pixels, self.max_tokens = max_pixels, max_tokens
        self.temperature, self.seed, self.timeout_s = temperature, seed, timeout_s

    def request_body(self, visuals: Sequence[Visual], turns: list[ChatTurn]) -> dict:
        """The JSON body of one chat-completions request showing `visuals` (pictures, clips as frames)."""
        body = {
            "model": self.model,
            "messages": openai_messages(visuals, turns, self.max_pixels),
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "seed": self.seed,
        }
        if self.reply_format == "json_schema":
            # Not `strict`: OpenAI's strict subset has no length bounds, which the other servers enforce.
            schema = {"name": "prompt_stream", "schema": self.reply_shape, "strict": False}
            body["response_format"] = {"type": "json_schema", "json_schema": schema}
        elif self.reply_format == "json_object":
            body["response_format"] = {"type": "json_object"}
        return body

    def _headers(self) -> dict[str, str]:
        key = os.environ.get(self.api_key_env)
        return {"Authorization": f"Bearer {key}"} if key else {}

    def __call__(self, visuals: Sequence[Visual], turns: list[ChatTurn]) -> str:
        try:
            response = httpx.post(
                self.url, json=self.request_body(visuals, turns), headers=self._headers(), timeout=self.timeout_s
            )
        except httpx.TimeoutException as err:
            raise StorylineServerError(f"{self.url} did not answer within {self.timeout_s:.0f} s (timeout_s)") from err
        except httpx.HTTPError as err:
            raise StorylineServerError(
                f"cannot reach the storyline server at {self.url} ({err}): is it running, and is openai_base_url "
                "right (it usually ends in /v1)?"
            ) from err
        if response.status_code in (401, 403):
            raise StorylineError(
                f"{self.url} refused the key (HTTP {response.status_code}): put the server's key in the "
                f"environment variable {self.api_key_env}"
            )
        if response.status_code == 429 or response.status_code >= 500:
            raise StorylineServerError(f"{self.url} answered HTTP {response.status_code}: {response.text[:500]}")
        if response.status_code != 200:
            hint = (
                f" (if the server rejects response_format {self.reply_format}, set openai_reply_format to json_object "
                "or text)"
                if self.reply_format != "text"
                else ""
            )
            raise StorylineError(f"{self.url} answered HTTP {response.status_code}: {response.text[:500]}{hint}")
        try:
            content = response.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as err:
            raise StorylineError(f"{self.url} answered with no chat completion: {response.text[:500]}") from err
        # A refusal comes back as null content: an empty reply, which is re-asked like any other bad one.
        return content or ""


def openai_chat(request: StorylineRequest) -> OpenAIChat:
    """The chat with the server the request names."""
    return OpenAIChat(
        base_url=request.openai_base_url,
        model=request.openai_model,
        api_key_env=request.openai_api_key_env,
        reply_format=request.openai_reply_format,
        reply_shape=reply_schema(request.clips, request.min_prompt_chars, request.max_prompt_chars),
        max_pixels=request.max_pixels,
        max_tokens=request.reply_token_limit(),
        temperature=request.temperature,
        seed=request.seed,
        timeout_s=request.timeout_s,
    )


def openai_storyline(image: Path, request: StorylineRequest) -> Storyline:
    """The storyline the model served at `request.openai_base_url` writes for the picture at `image`."""
    return chat_storyline(openai_chat(request), f"{request.openai_model} at {request.openai_base_url}", image, request)

"""Reading a prompt stream out of a language model's reply, and saying exactly what is wrong when it cannot.

The reply is a `PromptReply`; a server that takes a JSON schema is given `reply_schema` (exactly L prompts of the
allowed lengths), and a reply that is that JSON and nothing else is read as it is. Other models wrap JSON in chatter
and Markdown fences, so otherwise the whole reply is searched for JSON values, and the one meant is the first
`{"prompts": [...]}` object, else the first bare list of strings (so a stray `[3]` or `{}` in the chatter is passed
over). The prompts it holds are then checked against the request (exactly L, none empty, each
within the length bounds). A `ReplyError`'s message is written to be sent back to the model as it is, so it says
what to fix.
"""

import json
import re
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, create_model

# The reply shape the instruction asks for, quoted in the instruction and in every complaint.
JSON_SHAPE = '{"prompts": ["<prompt 1>", "<prompt 2>", "..."]}'

# Control characters (a raw newline inside a string) are common in model output and harmless here.
_LENIENT_JSON = json.JSONDecoder(strict=False)


class PromptReply(BaseModel):
    """What a storyline model replies: the prompt stream."""

    model_config = ConfigDict(extra="forbid")  # `additionalProperties: false` in the schema, as servers expect

    prompts: list[str]


def reply_schema(count: int, min_chars: int, max_chars: int) -> dict:
    """The JSON schema of a usable `PromptReply`: exactly `count` prompts of `min_chars`..`max_chars` characters."""
    prompt = Annotated[str, StringConstraints(min_length=min_chars, max_length=max_chars)]
    usable = create_model(
        "PromptReply", __base__=PromptReply, prompts=(list[prompt], Field(min_length=count, max_length=count))
    )
    return usable.model_json_schema()


class ReplyError(ValueError):
    """A reply that holds no usable prompt stream; the message tells the model what to fix."""


def _json_values(text: str) -> list:
    """Every outermost JSON object or array in `text`, in order (inside a ``` fence or not)."""
    values, end = [], 0
    for match in re.finditer(r"[\[{]", text):
        if match.start() < end:
            continue
        try:
            value, end = _LENIENT_JSON.raw_decode(text, match.start())
        except json.JSONDecodeError:
            continue
        values.append(value)
    return values


def _meant_value(values: list) -> object | None:
    """The value a reply means as its answer: a `{"prompts": …}` object, else a list of strings, else the first."""
    for value in values:
        if isinstance(value, dict) and "prompts" in value:
            return value
    for value in values:
        if isinstance(value, list) and value and all(isinstance(item, str) for item in value):
            return value
    return values[0] if values else None


def _prompt_list(reply: str) -> list:
    """The list the reply means as its prompts, before any check of the prompts themselves."""
    if not reply.strip():
        raise ReplyError(f"The reply was empty. Reply with only the JSON object {JSON_SHAPE}.")
    try:  # what a server held to `reply_schema` sends
        return PromptReply.model_validate_json(reply).prompts
    except ValidationError:
        pass
    value = _meant_value(_json_values(reply))
    if value is None:
        if "{" in reply:
            raise ReplyError(
                "The JSON in the reply does not parse: was it cut off, or is a quote inside a prompt not escaped? "
                f"Reply with only the JSON object {JSON_SHAPE}."
            )
        raise ReplyError(f"The reply holds no JSON. Reply with only the JSON object {JSON_SHAPE}, with no other text.")
    if isinstance(value, dict):
        if "prompts" not in value:
            raise ReplyError(
                f'The JSON object has no "prompts" key (its keys: {", ".join(map(str, value)) or "none"}). '
                f"Reply with only {JSON_SHAPE}."
            )
        value = value["prompts"]
    if not isinstance(value, list):
        raise ReplyError(f'"prompts" must be a list of strings, not {type(value).__name__}: {JSON_SHAPE}.')
    return value


def prompts_from_reply(reply: str, count: int, min_chars: int, max_chars: int) -> list[str]:
    """The `count` prompts in a model's reply, stripped; raises `ReplyError` listing every problem found.

    Inputs: the reply text as the model wrote it; L = `count`; the allowed length of one prompt in characters.
    Outputs: exactly `count` non-empty strings, each `min_chars`..`max_chars` characters long.
    """
    return checked_prompts(_prompt_list(reply), count, min_chars, max_chars)


def checked_prompts(prompts: list, count: int, min_chars: int, max_chars: int) -> list[str]:
    """`prompts` stripped, if they are exactly `count` strings within the length bounds; else `ReplyError`."""
    problems = []
    if len(prompts) != count:
        problems.append(f"the list has {len(prompts)} prompts, but exactly {count} are needed (one per clip)")
    for number, prompt in enumerate(prompts, start=1):
        if not isinstance(prompt, str):
            problems.append(f"prompt {number} is a {type(prompt).__name__}, not a string")
        elif not prompt.strip():
            problems.append(f"prompt {number} is empty")
        elif len(prompt.strip()) < min_chars:
            problems.append(f"prompt {number} is too short ({len(prompt.strip())} characters, at least {min_chars})")
        elif len(prompt.strip()) > max_chars:
            problems.append(f"prompt {number} is too long ({len(prompt.strip())} characters, at most {max_chars})")
    if problems:
        raise ReplyError("The prompts cannot be used: " + "; ".join(problems) + ".")
    return [prompt.strip() for prompt in prompts]

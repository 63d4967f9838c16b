"""Prompt streams from files: YAML, plain text, or the authors' `prompts = [...]` Python files.

Formats, chosen by content:
- YAML (`.yaml`/`.yml`): a list, or a mapping with a `prompts:` list. Each entry is a prompt, or a mapping with the
  `prompt` and any settings it sets for its clips (`ClipOverrides`: seed, steps, guidance_scale, guidance_scale_2,
  negative_prompt).
- The authors' format: a file containing `prompts = [ "…", "…" ]`. Their script `exec`s it; here the list is
  parsed with `ast.literal_eval`, so a file with code in it is refused, never run.
- Plain text: one prompt per line; blank lines and lines starting with `#` are skipped.
"""

import ast
import os
import re
from pathlib import Path

import yaml
from pydantic import ValidationError

from svi_model.clip_overrides import ClipOverrides


class PromptFileError(ValueError):
    """A prompt file that cannot be used; the message names the file and what is wrong."""


_AUTHORS_LIST = re.compile(r"^\s*prompts\s*=\s*(\[.*\])\s*$", re.DOTALL | re.MULTILINE)


PromptStream = tuple[list[str], list[ClipOverrides | None]]
"""The prompts, and beside each the settings its entry sets for its clips (None: none)."""


def _entry(entry, number: int, path: Path) -> tuple[object, ClipOverrides | None]:
    """A YAML entry's prompt, and its overrides when it is a mapping."""
    if not isinstance(entry, dict):
        return entry, None
    fields = dict(entry)
    prompt = fields.pop("prompt", None)
    if prompt is None:
        raise PromptFileError(f"{path}: entry {number} is a mapping without `prompt:`; give the clip's prompt there")
    try:
        return prompt, ClipOverrides(**fields)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise PromptFileError(
            f"{path}: entry {number}: {problems} (an entry may set {', '.join(ClipOverrides.model_fields)})"
        ) from None


def _checked(prompts, path: Path) -> list[str]:
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        raise PromptFileError(f"{path}: the prompts must be a list of strings (or of mappings with a `prompt:`)")
    prompts = [p.strip() for p in prompts]
    if not prompts:
        raise PromptFileError(f"{path} holds no prompt: write at least one")
    for i, prompt in enumerate(prompts):
        if not prompt:
            raise PromptFileError(f"{path}: prompt {i + 1} is empty")
    return prompts


def read_prompt_file(path: str | os.PathLike) -> list[str]:
    """The prompt stream in `path`, one string per clip (before any repeat rule)."""
    return read_prompt_stream(path)[0]


def read_prompt_stream(path: str | os.PathLike) -> PromptStream:
    """The prompt stream in `path` with the overrides its entries set (only YAML entries can)."""
    path = Path(path)
    if not path.is_file():
        raise PromptFileError(f"prompt file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise PromptFileError(f"{path} is not UTF-8 text: {err}") from err
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise PromptFileError(f"{path} is not valid YAML: {err}") from err
        entries = data.get("prompts") if isinstance(data, dict) else data
        if not isinstance(entries, list):
            _checked(entries, path)  # raises, naming what a prompt file must hold
        pairs = [_entry(entry, number, path) for number, entry in enumerate(entries, start=1)]
        return _checked([prompt for prompt, _ in pairs], path), [overrides for _, overrides in pairs]
    match = _AUTHORS_LIST.search(text)
    if match:
        try:
            return _plain(_checked(ast.literal_eval(match.group(1)), path))
        except (ValueError, SyntaxError) as err:
            raise PromptFileError(
                f"{path}: `prompts = [...]` must be a plain list of string literals; it is never executed ({err})"
            ) from err
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return _plain(_checked(lines, path))


def _plain(prompts: list[str]) -> PromptStream:
    return prompts, [None] * len(prompts)

"""Prompt streams from files: YAML, plain text, or the authors' `prompts = [...]` Python files.

Formats, chosen by content:
- YAML (`.yaml`/`.yml`): a list of strings, or a mapping with a `prompts:` list of strings.
- The authors' format: a file containing `prompts = [ "…", "…" ]`. Their script `exec`s it; here the list is
  parsed with `ast.literal_eval`, so a file with code in it is refused, never run.
- Plain text: one prompt per line; blank lines and lines starting with `#` are skipped.
"""

import ast
import os
import re
from pathlib import Path

import yaml


class PromptFileError(ValueError):
    """A prompt file that cannot be used; the message names the file and what is wrong."""


_AUTHORS_LIST = re.compile(r"^\s*prompts\s*=\s*(\[.*\])\s*$", re.DOTALL | re.MULTILINE)


def _checked(prompts, path: Path) -> list[str]:
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        raise PromptFileError(f"{path}: the prompts must be a list of strings")
    prompts = [p.strip() for p in prompts]
    if not prompts:
        raise PromptFileError(f"{path} holds no prompt: write at least one")
    for i, prompt in enumerate(prompts):
        if not prompt:
            raise PromptFileError(f"{path}: prompt {i + 1} is empty")
    return prompts


def read_prompt_file(path: str | os.PathLike) -> list[str]:
    """The prompt stream in `path`, one string per clip (before any repeat rule)."""
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
        return _checked(data.get("prompts") if isinstance(data, dict) else data, path)
    match = _AUTHORS_LIST.search(text)
    if match:
        try:
            return _checked(ast.literal_eval(match.group(1)), path)
        except (ValueError, SyntaxError) as err:
            raise PromptFileError(
                f"{path}: `prompts = [...]` must be a plain list of string literals; it is never executed ({err})"
            ) from err
    return _checked([line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")], path)

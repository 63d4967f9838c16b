"""`storyline.yaml`: the prompt stream as the run folder keeps it, with a record of where it came from."""

from pathlib import Path

import yaml
from pydantic import ValidationError

from svi_model.atomic_files import write_text_atomic

from .prompt_files import read_prompt_stream
from .request import Storyline, StorylineError


def storyline_yaml(storyline: Storyline) -> str:
    """`storyline.yaml`'s text: a note on editing, where the prompts came from, then the `prompts:` list."""
    header = (
        "# The prompt stream: one prompt per clip (about 5 seconds each), in order.\n"
        "# Edit the prompts and render again; only the `prompts:` list is read, the rest is a record.\n"
        "# A prompt may be a mapping: `prompt:` and any of seed, steps, guidance_scale, guidance_scale_2,\n"
        "# negative_prompt, which its clips then render with.\n"
    )
    record = storyline.model_dump(exclude={"prompts", "overrides"})
    body = yaml.safe_dump(record, sort_keys=False, allow_unicode=True, width=1000)
    overrides = storyline.overrides + [None] * (len(storyline.prompts) - len(storyline.overrides))
    entries = [
        {"prompt": prompt, **given.given()} if given is not None and given.given() else prompt
        for prompt, given in zip(storyline.prompts, overrides, strict=False)
    ]
    prompts = yaml.safe_dump({"prompts": entries}, sort_keys=False, allow_unicode=True, width=1000)
    return header + body + prompts


def save_storyline(storyline: Storyline, path: Path) -> None:
    """Write `storyline` to `path` (storyline.yaml) atomically, readable by `prompt_files.read_prompt_file`."""
    write_text_atomic(path, storyline_yaml(storyline))


def read_storyline(path: Path) -> Storyline:
    """The storyline in `path` (storyline.yaml) with its record, as `save_storyline` wrote it and the user edited."""
    try:
        prompts, overrides = read_prompt_stream(path)
        record = yaml.safe_load(path.read_text(encoding="utf-8"))
        return Storyline.model_validate({**record, "prompts": prompts, "overrides": overrides})
    except (OSError, yaml.YAMLError, ValidationError, TypeError) as err:
        raise StorylineError(
            f"{path} cannot be read as a storyline ({str(err).splitlines()[0]}): edit only its prompts, or delete it "
            "to write a new one"
        ) from err

"""Follow mode (`storyline_mode: follow`): the prompt of each clip after the first is written once the clip before
it exists, by a model shown the film's first picture and that clip's last frames, with the story so far and what
the plan meant the clip to show. The prompts then follow what the film shows, not only what the plan foresaw.
"""

from pathlib import Path

from PIL import Image

from svi_model.video_files import read_clip

from .conversation import ask_for_prompts, follow_text
from .request import STORYLINE_BACKENDS, StorylineRequest


def last_frames(clip: Path, count: int) -> list[Image.Image]:
    """The last `count` frames of the stored clip at `clip`, in order, as RGB pictures."""
    return [Image.fromarray(frame.numpy()) for frame in read_clip(clip)[-count:]]


def follow_prompt(
    picture: Path, previous_clip: Path, story: list[str], planned: str | None, request: StorylineRequest
) -> str:
    """The prompt of the clip after `previous_clip`, the story so far being `story` (one prompt per clip played,
    so this is clip `len(story)`); `planned` is what the plan meant it to show (None: the plan was shorter)."""
    # The chat for an ask of one prompt: its reply budget and (openai) reply schema are made for one.
    chat = STORYLINE_BACKENDS[request.backend].chat(request.model_copy(update={"clips": 1}))
    shown = [picture, last_frames(previous_clip, request.follow_frames)]
    instruction = follow_text(request, len(story), story, planned)
    prompts, _ = ask_for_prompts(chat, shown, instruction, 1, request)
    return prompts[0]

"""The `template` storyline: L prompts built from the keywords alone, offline and deterministic.

This is the demo profile's default and is NOT a language model: it never looks at the picture. It names the first
keyword as the subject and the others as the setting, and walks a fixed bank of beats (camera moves, wind, light),
cycled in order. Each beat is "state + motion", and its state is where the previous beat's motion left the scene,
so the stream reads as one continuous shot. The same request always gives the same prompts.

A toy-world picture (`svi_model.toyworld`) describes itself; for one, the template speaks the world's grammar
instead ("a small red ball rolls right on a striped green background", ...), as the demo model was trained on.
"""

from pathlib import Path

from svi_model.toyworld.story import prompt_stream, read_still_caption

from ..retrieve.reference import picture_description
from .replies import ReplyError, checked_prompts
from .request import Storyline, StorylineError, StorylineRequest

# One beat per clip: the motion during the clip, and the state it leaves for the next clip to start from.
# {subject} and {setting} are filled in; a beat's state is written to open a sentence.
BEATS = [
    (
        "the camera pushes in slowly toward {subject}, bringing its shape and texture into sharper detail",
        "{subject} is close and large in the frame, its texture in sharp detail",
    ),
    (
        "a gentle breeze moves through {setting}, and the small things around {subject} sway and shift softly",
        "{subject} rests among the softly swaying details of {setting}",
    ),
    (
        "the camera glides sideways in a smooth half circle around {subject}, showing it from a new angle",
        "{subject} is seen from a new angle, with {setting} turning slowly behind it",
    ),
    (
        "the light warms little by little and shadows stretch across {setting} as clouds drift overhead",
        "{subject} glows in warmer light, long shadows lying across {setting}",
    ),
    (
        "the camera rises gently and more of {setting} comes into view around {subject}",
        "{subject} is seen from a little higher, with more of {setting} in view",
    ),
    (
        "the camera pulls back steadily and the view widens to take in all of {setting}",
        "{subject} sits small within a wide view of {setting}",
    ),
]


def _capitalised(text: str) -> str:
    return text[:1].upper() + text[1:]


def template_prompts(clips: int, keywords: list[str], style: str | None = None, genre: str | None = None) -> list[str]:
    """`clips` caption-like prompts, each continuing the previous one, about `keywords` (and style and genre)."""
    subject = f"the {keywords[0]}" if keywords else "the main subject"
    setting = " and ".join(f"the {keyword}" for keyword in keywords[1:]) or "its surroundings"
    look = ", ".join(part for part in (style, genre) if part)
    lead = f"{_capitalised(look)}. " if look else ""
    prompts = []
    for k in range(clips):
        motion = BEATS[k % len(BEATS)][0].format(subject=subject, setting=setting)
        if k == 0:
            state = f"{subject} in {setting}, still and clearly visible in the opening moment of one continuous shot"
        else:
            after = BEATS[(k - 1) % len(BEATS)][1].format(subject=subject, setting=setting)
            state = f"continuing the same shot, {after}"
        prompts.append(f"{lead}{_capitalised(state)}; then {motion}.")
    return prompts


def template_storyline(image: Path, request: StorylineRequest) -> Storyline:
    """The template's prompt stream for the request (the picture's pixels are not looked at).

    A toy-world picture (one whose description reads as a still toy-world caption) gets a stream in the world's
    own grammar, the only language the demo model was trained on; any other picture gets the keyword beats.
    """
    description = picture_description(image)
    world = read_still_caption(description) if description is not None else None
    if world is not None:
        prompts = prompt_stream(*world, request.clips)
    else:
        prompts = template_prompts(request.clips, request.keywords, request.style, request.genre)
    try:
        prompts = checked_prompts(prompts, request.clips, request.min_prompt_chars, request.max_prompt_chars)
    except ReplyError as problem:
        raise StorylineError(
            f"the template storyline does not fit the request's prompt lengths ({problem}): "
            "widen min_prompt_chars..max_prompt_chars"
        ) from problem
    about = {"keywords": request.keywords, "style": request.style, "genre": request.genre}
    return Storyline(prompts=prompts, backend=request.backend, model="template", **about)

"""A prompt stream in the toy world's grammar: how the template storyline speaks to a model trained on the world.

A still picture of the world describes itself ("a small red ball on a striped green background", its PNG
Description, written by `files.write_pictures`); `read_still_caption` reads that back into the toy and background,
and `prompt_stream` writes one clip caption per clip, in exactly the grammar the model was trained on
(`captions.caption`), walking a fixed tour of motions. The toy's size word follows the story: after it grows it
is big, after it shrinks small, as the captions of the training clips that start from such a toy say.
"""

import re

from .captions import caption
from .scene import COLOURS, PATTERNS, SHAPES, SIZES, Background, Scene, Toy

# The motions of a film, in order, repeated as long as it runs: each leaves the toy where the next can go on.
TOUR = ("roll-right", "bounce", "roll-left", "grow", "shrink", "drift")
SIZE_AFTER = {"grow": "big", "shrink": "small"}

_WORD = {
    name: "|".join(options)
    for name, options in (("size", SIZES), ("colour", COLOURS), ("shape", SHAPES), ("pattern", PATTERNS))
}
_STILL = re.compile(
    rf"^a (?P<size>{_WORD['size']}) (?P<colour>{_WORD['colour']}) (?P<shape>{_WORD['shape']}) on a "
    rf"(?P<pattern>{_WORD['pattern']}) (?P<background>{_WORD['colour']}) background$"
)


def read_still_caption(text: str) -> tuple[Toy, Background] | None:
    """The toy and background of a still caption ("a <size> <colour> <shape> on a <pattern> <colour>
    background", `captions.state_caption`), or None for any other text."""
    match = _STILL.match(text.strip().lower())
    if match is None:
        return None
    return Toy(match["colour"], match["shape"], match["size"]), Background(match["pattern"], match["background"])


def prompt_stream(toy: Toy, background: Background, clips: int) -> list[str]:
    """`clips` clip captions for a film of `toy` over `background`, the camera still, walking `TOUR`."""
    prompts = []
    for index in range(clips):
        motion = TOUR[index % len(TOUR)]
        prompts.append(caption(Scene(toy, background, motion)))
        toy = Toy(toy.colour, toy.shape, SIZE_AFTER.get(motion, toy.size))
    return prompts

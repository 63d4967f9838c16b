"""A procedural toy world with known ground truth, to train and test a small SVI model on the CPU.

A scene is one toy (a coloured ball, box or triangle) moving over a patterned background, maybe under a panning
camera (`scene`); `motion` says where everything is in each frame, `render` draws it, `captions` says it in one
fixed grammar, and `files` writes training videos (MixKit layout) and tagged still pictures. Command line:
`python -m svi_model.toyworld dataset OUT --count N --seed S` and `... pictures OUT --count N --seed S`.
"""

from .captions import (
    CAMERA_WORDS,
    COLOUR_WORDS,
    MOTION_WORDS,
    PATTERN_WORDS,
    SHAPE_WORDS,
    SIZE_WORDS,
    SYNONYMS,
    caption,
    state_caption,
    tags,
)
from .files import write_dataset, write_pictures
from .render import frames_and_toy_coverage, render_frames
from .scene import CAMERAS, COLOURS, MOTIONS, PATTERNS, SHAPES, SIZES, Background, Scene, Toy, random_scene

__all__ = [
    "CAMERAS",
    "CAMERA_WORDS",
    "COLOURS",
    "COLOUR_WORDS",
    "MOTIONS",
    "MOTION_WORDS",
    "PATTERNS",
    "PATTERN_WORDS",
    "SHAPES",
    "SHAPE_WORDS",
    "SIZES",
    "SIZE_WORDS",
    "SYNONYMS",
    "Background",
    "Scene",
    "Toy",
    "caption",
    "frames_and_toy_coverage",
    "random_scene",
    "render_frames",
    "state_caption",
    "tags",
    "write_dataset",
    "write_pictures",
]

"""What a toy-world scene is: one toy, one background, one motion, one camera, and a seeded random draw of them.

Every name below is also the word the captions use for it (`captions`), except motions and cameras, whose
identifiers (hyphenated, usable as folder names) map to phrases there.
"""

from dataclasses import dataclass

import numpy as np

# The named palette: toys use these colours as they are, backgrounds a lighter and a darker shade of them
# (`render`), so a toy's exact colour never occurs in any background and its pixels can be found by colour.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "blue": (40, 90, 220),
    "green": (40, 170, 60),
    "yellow": (240, 210, 40),
    "white": (245, 245, 245),
    "purple": (150, 60, 200),
}
SHAPES = ("ball", "box", "triangle")
# The toy's radius at scale 1, as a fraction of the frame height.
SIZES: dict[str, float] = {"small": 0.1, "big": 0.17}
MOTIONS = ("roll-left", "roll-right", "bounce", "drift", "grow", "shrink")
PATTERNS = ("plain", "shaded", "striped", "checkered", "dotted")
# A pan only shows on a pattern that changes along x: plain and shaded (a vertical gradient) look the same when
# scrolled, so a caption saying "the camera pans" over them would name something no frame shows.
PANNABLE_PATTERNS = ("striped", "checkered", "dotted")
CAMERAS = ("still", "pan-left", "pan-right")

# Where a motion's toy starts, (x, y) ranges as fractions of the frame's width and height: far enough from the side
# it heads for that a short clip shows the motion without the toy leaving the frame.
START_RANGES: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {
    "roll-left": ((0.6, 0.8), (0.55, 0.75)),
    "roll-right": ((0.2, 0.4), (0.55, 0.75)),
    "bounce": ((0.25, 0.75), (0.72, 0.78)),
    "drift": ((0.2, 0.4), (0.55, 0.7)),
    "grow": ((0.35, 0.65), (0.4, 0.6)),
    "shrink": ((0.35, 0.65), (0.4, 0.6)),
}
# Share of random scenes with a moving camera (when the drawn pattern can show one).
PAN_PROBABILITY = 0.4


def _check(value: str, allowed, what: str) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; choose one of {', '.join(allowed)}")


@dataclass(frozen=True)
class Toy:
    """The one moving thing: a colour of `COLOURS`, a shape of `SHAPES`, a size of `SIZES` (its size at frame 0)."""

    colour: str
    shape: str
    size: str

    def __post_init__(self):
        _check(self.colour, COLOURS, "colour")
        _check(self.shape, SHAPES, "shape")
        _check(self.size, SIZES, "size")


@dataclass(frozen=True)
class Background:
    """A pattern of `PATTERNS` drawn in two shades of a colour of `COLOURS`."""

    pattern: str
    colour: str

    def __post_init__(self):
        _check(self.pattern, PATTERNS, "pattern")
        _check(self.colour, COLOURS, "colour")


@dataclass(frozen=True)
class Scene:
    """The whole true state of a clip: `render.render_frames` draws it, `captions.caption` says it.

    start: the toy's centre at frame 0, (x, y) as fractions of the frame's width and height.
    The camera moves only the background: the toy's motion is in frame coordinates, so "rolls left" always means
    leftwards on screen, whatever the camera does.
    """

    toy: Toy
    background: Background
    motion: str
    camera: str = "still"
    start: tuple[float, float] = (0.5, 0.5)

    def __post_init__(self):
        _check(self.motion, MOTIONS, "motion")
        _check(self.camera, CAMERAS, "camera")
        if self.toy.colour == self.background.colour:
            raise ValueError(f"a {self.toy.colour} toy would vanish on a {self.background.colour} background")
        if self.camera != "still" and self.background.pattern not in PANNABLE_PATTERNS:
            raise ValueError(
                f"a pan does not show on a {self.background.pattern} background; pan over one of "
                f"{', '.join(PANNABLE_PATTERNS)}"
            )
        if not all(0 <= value <= 1 for value in self.start):
            raise ValueError(f"start must be fractions of the frame in [0, 1], got {self.start}")


def random_scene(
    rng: np.random.Generator,
    colour: str | None = None,
    shape: str | None = None,
    size: str | None = None,
    motion: str | None = None,
    pattern: str | None = None,
    camera: str | None = None,
) -> Scene:
    """A random valid scene drawn from `rng`; any choice given is kept instead of drawn.

    Draw order (fixed, so a seed always gives the same scenes): colour, shape, size, motion, pattern, background
    colour (never the toy's), camera, start. Every draw is taken even when the choice is given, so fixing one
    choice leaves the others as the seed would have drawn them.
    """

    def pick(options, given):
        drawn = str(options[int(rng.integers(len(options)))])
        return drawn if given is None else given

    colour = pick(tuple(COLOURS), colour)
    shape, size, motion = pick(SHAPES, shape), pick(tuple(SIZES), size), pick(MOTIONS, motion)
    pattern = pick(PATTERNS, pattern)
    background_colour = pick(tuple(name for name in COLOURS if name != colour), None)
    pans, direction = rng.random() < PAN_PROBABILITY, pick(CAMERAS[1:], None)
    if camera is None:
        camera = direction if pans and pattern in PANNABLE_PATTERNS else "still"
    (x_low, x_high), (y_low, y_high) = START_RANGES[motion]
    start = (round(float(rng.uniform(x_low, x_high)), 3), round(float(rng.uniform(y_low, y_high)), 3))
    return Scene(Toy(colour, shape, size), Background(pattern, background_colour), motion, camera, start)

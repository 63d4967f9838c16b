"""What a scene is called: captions in one fixed grammar, made from the true state, and tags for still pictures.

The grammar (each <slot> is one entry of the word lists below, nothing else ever appears):

    clip:   a <size> <colour> <shape> <motion> on a <pattern> <colour> background[, <camera>]
    still:  a <size> <colour> <shape> on a <pattern> <colour> background

e.g. "a small red ball rolls left on a striped green background, the camera pans right" and
"a big blue box on a plain yellow background". The first colour is the toy's, the second the background's; the
size is the toy's at the first frame; ", <camera>" is only there when the camera moves. Every word in a slot starts
with a consonant, so the article is always "a".

The word lists are data (`SIZE_WORDS`, `COLOUR_WORDS`, `SHAPE_WORDS`, `MOTION_WORDS`, `PATTERN_WORDS`,
`CAMERA_WORDS`), so that other code (a storyline template) can speak the same language.
"""

from .scene import COLOURS, PATTERNS, SHAPES, SIZES, Scene

SIZE_WORDS = tuple(SIZES)
COLOUR_WORDS = tuple(COLOURS)
SHAPE_WORDS = SHAPES
PATTERN_WORDS = PATTERNS
MOTION_WORDS: dict[str, str] = {
    "roll-left": "rolls left",
    "roll-right": "rolls right",
    "bounce": "bounces",
    "drift": "drifts up and right",
    "grow": "grows",
    "shrink": "shrinks",
}
# A still camera says nothing.
CAMERA_WORDS: dict[str, str] = {"still": "", "pan-left": "the camera pans left", "pan-right": "the camera pans right"}
# Extra tags of a still picture, so a search in other words finds it too ("circle" finds a ball).
SYNONYMS: dict[str, tuple[str, ...]] = {
    "ball": ("circle", "sphere"),
    "box": ("square", "cube", "block"),
    "big": ("large",),
    "small": ("little",),
    "plain": ("flat",),
    "shaded": ("gradient",),
    "striped": ("stripe",),
    "checkered": ("checker", "checkerboard"),
    "dotted": ("dot", "spotted"),
}


def _toy(scene: Scene) -> str:
    toy = scene.toy
    return f"a {toy.size} {toy.colour} {toy.shape}"


def _background(scene: Scene) -> str:
    return f"a {scene.background.pattern} {scene.background.colour} background"


def caption(scene: Scene) -> str:
    """The clip caption: "a <size> <colour> <shape> <motion> on a <pattern> <colour> background[, <camera>]"."""
    words = f"{_toy(scene)} {MOTION_WORDS[scene.motion]} on {_background(scene)}"
    return f"{words}, {CAMERA_WORDS[scene.camera]}" if scene.camera != "still" else words


def state_caption(scene: Scene) -> str:
    """The still-picture caption (the scene at frame 0): "a <size> <colour> <shape> on a <pattern> <colour>
    background"."""
    return f"{_toy(scene)} on {_background(scene)}"


def tags(scene: Scene) -> list[str]:
    """A still picture's tags: the toy's colour, shape and size and the background's pattern, each followed by
    its synonyms. The background's colour is left out: a "red ball" search should not find a blue ball on red."""
    words = [scene.toy.colour, scene.toy.shape, scene.toy.size, scene.background.pattern]
    return [tag for word in words for tag in (word, *SYNONYMS.get(word, ()))]

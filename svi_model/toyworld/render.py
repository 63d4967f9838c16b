"""Drawing a scene: the background pattern, scrolled by the camera, then the toy over it (numpy, all frames at once).

Backgrounds mix a light and a dark shade of their colour: plain is all light; shaded runs from light at the top to
dark at the bottom; striped is vertical bands, checkered squares, dotted a grid of dark dots, all of period
CELL × height. The toy is drawn in its exact palette colour with anti-aliased edges (coverage from a signed
distance); a ball carries a dark dot off its centre, so its turning shows.
"""

import numpy as np

from .motion import Track, track
from .scene import COLOURS, Background, Scene

LIGHT, DARK = 0.85, 0.55  # the background's two shades, as multiples of its palette colour
CELL = 0.25  # pattern period (stripe pair, checker square, dot spacing) as a fraction of the frame height
DOT_RADIUS = 0.06  # as a fraction of the frame height
MARKER_SHADE = 0.5  # the ball's dot, as a multiple of the toy's colour
# Shape extents relative to the toy's radius, chosen so the three shapes look about as big as each other.
BOX_HALF_SIDE = 0.85
TRIANGLE_CIRCUMRADIUS = 1.2


def render_frames(scene: Scene, num_frames: int, height: int, width: int) -> np.ndarray:
    """The clip of `scene`: uint8 `[num_frames, height, width, 3]`, the same for the same arguments."""
    return frames_and_toy_coverage(scene, num_frames, height, width)[0]


def frames_and_toy_coverage(scene: Scene, num_frames: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """The clip of `scene` (uint8 `[num_frames, height, width, 3]`, as `render_frames` draws it) and where its toy
    is in each frame: float32 `[num_frames, height, width]` in [0, 1], the share of each pixel the toy covers (1
    inside, fractional on the anti-aliased rim, 0 on the background)."""
    if num_frames < 1 or height < 1 or width < 1:
        raise ValueError(f"need at least one frame of at least 1×1 pixels, got {num_frames}×{height}×{width}")
    state = track(scene, num_frames, height, width)
    # Pixel centres, shaped to broadcast against per-frame values [F, 1, 1].
    ys = (np.arange(height, dtype=np.float32) + 0.5)[None, :, None]
    xs = (np.arange(width, dtype=np.float32) + 0.5)[None, None, :]
    frames = _background(scene.background, state.pan, xs, ys, height, width)
    coverage, marker = _toy_coverage(scene.toy.shape, state, xs, ys)
    colour = np.array(COLOURS[scene.toy.colour], np.float32)
    frames += coverage[..., None] * (colour - frames)
    frames += marker[..., None] * (colour * MARKER_SHADE - frames)
    return np.round(frames).astype(np.uint8), coverage


def _background(
    background: Background, pan: np.ndarray, xs: np.ndarray, ys: np.ndarray, height: int, width: int
) -> np.ndarray:
    """float32 `[F, height, width, 3]`: the pattern, its x shifted by the camera's pan of each frame."""
    colour = np.array(COLOURS[background.colour], np.float32)
    light, dark = LIGHT * colour, DARK * colour
    cell = CELL * height
    u = xs + pan.astype(np.float32)[:, None, None]  # world x of each pixel, [F, 1, W]
    pattern = background.pattern
    if pattern == "plain":
        darkness = np.zeros((1, 1, 1), np.float32)
    elif pattern == "shaded":
        darkness = ys / height
    elif pattern == "striped":
        darkness = np.floor(u / (cell / 2)) % 2
    elif pattern == "checkered":
        darkness = (np.floor(u / cell) + np.floor(ys / cell)) % 2
    else:  # dotted
        du, dv = u % cell - cell / 2, ys % cell - cell / 2
        darkness = np.clip(0.5 - (np.hypot(du, dv) - DOT_RADIUS * height), 0, 1)
    darkness = np.broadcast_to(darkness, (len(pan), height, width)).astype(np.float32)
    return light + darkness[..., None] * (dark - light)


def _toy_coverage(shape: str, state: Track, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(toy, marker) coverage in [0, 1], each float32 `[F, H, W]`; the marker is all zeros except on a ball."""

    def per_frame(values: np.ndarray) -> np.ndarray:
        return values.astype(np.float32)[:, None, None]

    radius = per_frame(state.radius)
    px, py = xs - per_frame(state.x), ys - per_frame(state.y)
    # The pixel in the toy's own frame: rotate back by its clockwise-on-screen angle.
    cos, sin = per_frame(np.cos(state.angle)), per_frame(np.sin(state.angle))
    qx, qy = cos * px + sin * py, cos * py - sin * px
    if shape == "ball":
        distance = np.hypot(px, py) - radius
    elif shape == "box":
        distance = np.maximum(np.abs(qx), np.abs(qy)) - BOX_HALF_SIDE * radius
    else:  # triangle, apex up: one edge faces down, the others up-left and up-right
        normals = [(np.cos(a), np.sin(a)) for a in np.radians([90, 210, 330])]
        distance = np.max([nx * qx + ny * qy for nx, ny in normals], axis=0) - TRIANGLE_CIRCUMRADIUS * radius / 2
    coverage = np.clip(0.5 - distance, 0, 1)
    if shape != "ball":
        return coverage, np.zeros_like(coverage)
    dot = np.hypot(qx - 0.55 * radius, qy) - 0.28 * radius
    return coverage, coverage * np.clip(0.5 - dot, 0, 1)

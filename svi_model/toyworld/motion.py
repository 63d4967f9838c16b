"""Where the toy and the background are in each frame: the true state behind every rendered pixel.

Lengths and speeds are fractions of the frame height (per frame), so a scene looks the same at any size of one
aspect. The motions, frame f counted from 0:
* roll-left / roll-right: x moves by ∓ROLL_SPEED per frame and the toy turns as if rolling without slipping
  (angle = distance / radius, clockwise when moving right); it leaves one side and comes back on the other.
* bounce: y follows parabolic hops of BOUNCE_HEIGHT every BOUNCE_PERIOD frames, on the floor at frame 0.
* drift: x and y move by +DRIFT_SPEED and −DRIFT_SPEED per frame (slowly up and to the right), wrapping around.
* grow / shrink: the scale goes from 1 by ±rate per frame, held once it reaches GROW_MAX / SHRINK_MIN.
The camera pan scrolls the background by PAN_SPEED per frame; the toy is in frame coordinates (see `scene.Scene`).
"""

from dataclasses import dataclass

import numpy as np

from .scene import SIZES, Scene

ROLL_SPEED = 0.03
DRIFT_SPEED = 0.012
BOUNCE_HEIGHT = 0.45
BOUNCE_PERIOD = 32
GROW_RATE, GROW_MAX = 0.025, 1.8
SHRINK_RATE, SHRINK_MIN = 0.015, 0.5
PAN_SPEED = 0.03


@dataclass(frozen=True)
class Track:
    """The per-frame state of a clip, each an array `[F]` in pixels of a height × width frame.

    x, y: the toy's centre. radius: its radius (size × scale). angle: its turn in radians, clockwise on screen
    (y points down). pan: how far the camera has moved right (the background is drawn shifted left by it).
    """

    x: np.ndarray
    y: np.ndarray
    radius: np.ndarray
    angle: np.ndarray
    pan: np.ndarray


def _wrap(value: np.ndarray, extent: float, margin: float) -> np.ndarray:
    """`value` brought back into [−margin, extent + margin): what leaves one side re-enters on the other."""
    return (value + margin) % (extent + 2 * margin) - margin


def track(scene: Scene, num_frames: int, height: int, width: int) -> Track:
    """The state of every frame of `scene` rendered at height × width."""
    frames = np.arange(num_frames, dtype=np.float64)
    radius0 = SIZES[scene.toy.size] * height
    x = np.full(num_frames, scene.start[0] * width)
    y = np.full(num_frames, scene.start[1] * height)
    scale, angle = np.ones(num_frames), np.zeros(num_frames)
    motion = scene.motion
    if motion in ("roll-left", "roll-right"):
        shift = (1 if motion == "roll-right" else -1) * ROLL_SPEED * height * frames
        x, angle = _wrap(x + shift, width, radius0), shift / radius0
    elif motion == "bounce":
        phase = (frames % BOUNCE_PERIOD) / BOUNCE_PERIOD
        y = y - BOUNCE_HEIGHT * height * 4 * phase * (1 - phase)
    elif motion == "drift":
        step = DRIFT_SPEED * height * frames
        x, y = _wrap(x + step, width, radius0), _wrap(y - step, height, radius0)
    elif motion == "grow":
        scale = np.minimum(1 + GROW_RATE * frames, GROW_MAX)
    elif motion == "shrink":
        scale = np.maximum(1 - SHRINK_RATE * frames, SHRINK_MIN)
    direction = {"still": 0, "pan-left": -1, "pan-right": 1}[scene.camera]
    pan = direction * PAN_SPEED * height * frames
    return Track(x, y, radius0 * scale, angle, pan)

"""Drift metrics on hand-made videos: each metric must move the right way, by a clear margin, on a known change."""

import math

import cv2
import numpy as np
import pytest
import torch

from svi_model.drift import (
    METRICS,
    clip_metrics,
    colour_drift,
    dynamic_degree,
    ground_truth,
    seam_discontinuity,
    sharpness_ratio,
    ssim_to_reference,
    toy_mask,
)
from svi_model.drift.evaluate import drift_growth
from svi_model.toyworld import COLOURS, random_scene, render_frames
from svi_model.toyworld.render import LIGHT

HEIGHT, WIDTH = 64, 112
SQUARE, SPEED = 16, 2  # the red square's side and its speed to the right, in pixels (per frame)


def square_clip(num_frames: int = 9, start: int = 20) -> np.ndarray:
    """uint8 [F, 64, 112, 3]: a grey checkerboard with a red square moving right by SPEED px per frame."""
    ys, xs = np.mgrid[:HEIGHT, :WIDTH]
    board = np.where((xs // 6 + ys // 6) % 2 == 0, 180, 70).astype(np.uint8)
    frames = np.repeat(np.stack([board] * 3, axis=-1)[None], num_frames, axis=0)
    for index, frame in enumerate(frames):
        x = start + SPEED * index
        frame[24 : 24 + SQUARE, x : x + SQUARE] = COLOURS["red"]
    return frames


def toy_film(num_frames: int = 25) -> np.ndarray:
    """A red ball rolling right over blue stripes under a still camera, [F, 64, 112, 3]."""
    rng = np.random.default_rng(0)
    scene = random_scene(rng, colour="red", shape="ball", motion="roll-right", pattern="striped", camera="still")
    return render_frames(scene, num_frames, HEIGHT, WIDTH)


def test_colour_shift_drifts_and_a_copy_does_not():
    clip = square_clip()
    shifted = clip.astype(np.int16)
    shifted[..., 0] += 40
    shifted = np.clip(shifted, 0, 255).astype(np.uint8)
    assert colour_drift(clip.copy(), clip) < 0.5
    assert colour_drift(shifted, clip) > 5
    # A torch tensor is read like the array it holds.
    assert colour_drift(torch.from_numpy(shifted), clip) == pytest.approx(colour_drift(shifted, clip))


def test_blur_lowers_sharpness_ratio():
    clip = square_clip()
    blurred = np.stack([cv2.GaussianBlur(frame, (0, 0), 2) for frame in clip])
    assert sharpness_ratio(clip.copy(), clip) == pytest.approx(1, abs=1e-6)
    assert sharpness_ratio(blurred, clip) < 0.7


def test_dynamic_degree_sees_motion_and_not_a_frozen_video():
    clip = square_clip()
    frozen = np.repeat(clip[:1], len(clip), axis=0)
    moving, still = dynamic_degree(clip), dynamic_degree(frozen)
    assert still < 0.02
    assert moving > still + 0.02
    # The mean over the frame is about the square's speed times the share of the frame it covers.
    expected = SPEED * SQUARE**2 / (HEIGHT * WIDTH)
    assert 0.5 * expected < moving < 2 * expected


def test_ssim_to_reference():
    clip = square_clip()
    noise = np.random.default_rng(0).integers(0, 256, clip.shape, dtype=np.uint8)
    assert ssim_to_reference(np.repeat(clip[:1], 4, axis=0), clip[0]) == pytest.approx(1, abs=1e-6)
    assert ssim_to_reference(noise, clip[0]) < 0.3


@pytest.mark.parametrize("size", [(7, 9), (6, 6)])
def test_ssim_works_on_tiny_frames(size):
    frames = np.random.default_rng(1).integers(0, 256, (2, *size, 3), dtype=np.uint8)
    assert ssim_to_reference(frames[:1], frames[0]) == pytest.approx(1, abs=1e-6)
    assert ssim_to_reference(frames[1:], frames[0]) < 0.9


def test_seam_discontinuity_is_about_one_when_continuous_and_large_on_a_jump():
    long = square_clip(num_frames=20, start=4)
    previous, clip = long[:12], long[7:]  # clip starts with the 5 last frames of previous
    assert 0.5 < seam_discontinuity(previous, clip) < 2
    teleported = clip.copy()
    teleported[5:] = square_clip(num_frames=20, start=34)[12:]  # the square's new frames 30 px further right
    assert seam_discontinuity(previous, teleported) > 3
    film = toy_film()
    other = render_frames(
        random_scene(np.random.default_rng(1), colour="blue", shape="box", motion="roll-left", pattern="checkered"),
        15,
        HEIGHT,
        WIDTH,
    )
    assert 0.5 < seam_discontinuity(film[:15], film[10:]) < 2
    assert seam_discontinuity(film[:15], np.concatenate([film[10:15], other[5:]])) > 3


def test_seam_discontinuity_needs_two_new_frames():
    clip = square_clip()
    with pytest.raises(ValueError, match="at least 2 frames"):
        seam_discontinuity(clip, clip[:6])


def test_toy_ground_truth_on_a_render():
    film = toy_film()
    reference_area = float(toy_mask(film[:1], "red").sum())
    assert reference_area > 100
    truth = ground_truth(film, "red", reference_area)
    assert 0.7 < truth["toy_area_ratio"] < 1.3
    assert truth["toy_colour_error"] < 10
    # The toy painted over with the background's light shade (blue): it is gone, and has no colour to measure.
    painted = film.copy()
    painted[toy_mask(film, "red")] = np.round(LIGHT * np.array(COLOURS["blue"]))
    gone = ground_truth(painted, "red", reference_area)
    assert gone["toy_area_ratio"] < 0.05
    assert math.isnan(gone["toy_colour_error"])
    # A toy turned another colour (green, as a drifting model might paint it) is no longer found as red.
    recoloured = film.copy()
    recoloured[toy_mask(film, "red")] = COLOURS["green"]
    assert ground_truth(recoloured, "red", reference_area)["toy_area_ratio"] < 0.3


def test_clip_metrics_one_dict_per_clip_measured_on_new_frames():
    film = toy_film()
    first, second = film[:15].copy(), film[10:].copy()
    # Blur the overlap frames of clip 1: they are not shown in the film, so no metric but the seam may see them.
    second[:5] = np.stack([cv2.GaussianBlur(frame, (0, 0), 3) for frame in second[:5]])
    results = clip_metrics([first, second], film[0], toy_colour="red")
    keys = set(METRICS)
    assert len(results) == 2
    assert all(set(metrics) == keys for metrics in results)
    assert results[0]["seam_discontinuity"] is None
    assert results[0]["colour_drift"] == pytest.approx(0, abs=1e-6)
    assert results[0]["sharpness_ratio"] == pytest.approx(1, abs=1e-6)
    assert results[1]["sharpness_ratio"] > 0.9
    assert 0.5 < results[1]["seam_discontinuity"] < 2
    assert 0.7 < results[1]["toy_area_ratio"] < 1.3
    assert all(isinstance(value, float) for metrics in results for value in metrics.values() if value is not None)
    without_toy = clip_metrics([first], film[0])
    assert "toy_area_ratio" not in without_toy[0]


def test_drift_growth_tells_a_drifting_chain_from_a_steady_one():
    """A metric that worsens clip by clip grows; one that lost the same at clip 1 and stayed there (a chain whose
    every clip is equally imperfect) does not, though both end at the same value."""
    drifting = [0.0] + [0.1 * k for k in range(1, 30)]
    steady = [0.0] + [2.9] * 29
    growth = drift_growth({"colour_drift": drifting, "sharpness_ratio": steady, "seam_discontinuity": [None] * 30})
    assert growth["colour_drift"] == pytest.approx(2.4)  # clips 25-29 (2.7) against clips 1-5 (0.3)
    assert growth["sharpness_ratio"] == pytest.approx(0.0)
    assert growth["seam_discontinuity"] is None
    assert drift_growth({"colour_drift": drifting[:10]})["colour_drift"] is None  # too short to have a start and end

"""The toy world: deterministic scenes, captions that say the true state, pixels that show it, and files the
project's readers (the ERFT dataset index, the bundled picture library) accept."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.retrieve.bundled import match_library, read_library
from svi_model.erft.dataset import read_video_index
from svi_model.toyworld import (
    CAMERA_WORDS,
    CAMERAS,
    COLOURS,
    MOTION_WORDS,
    MOTIONS,
    PATTERNS,
    Background,
    Scene,
    Toy,
    caption,
    frames_and_toy_coverage,
    random_scene,
    render_frames,
    state_caption,
    write_dataset,
    write_pictures,
)
from svi_model.toyworld.__main__ import main
from svi_model.toyworld.scene import PANNABLE_PATTERNS
from svi_model.video_files import probe_video, read_clip

F, H, W = 33, 64, 112


def scene(motion="roll-left", camera="still", pattern="striped", colour="red", shape="ball", size="small", start=None):
    """A hand-built scene on a green background, started where its motion has room."""
    starts = {"roll-left": (0.8, 0.6), "roll-right": (0.2, 0.6), "bounce": (0.5, 0.75), "drift": (0.3, 0.65)}
    return Scene(
        Toy(colour, shape, size), Background(pattern, "green"), motion, camera, start or starts.get(motion, (0.5, 0.5))
    )


def toy_mask(frames: np.ndarray, colour: str) -> np.ndarray:
    """bool [F, H, W]: the pixels of the toy's exact palette colour (its anti-aliased rim and a ball's dot aside)."""
    return (np.abs(frames.astype(int) - COLOURS[colour]) <= 8).all(axis=-1)


def centroid(mask: np.ndarray) -> np.ndarray:
    """float [F, 2]: (x, y) of the pixels of a bool mask [F, H, W] in each frame."""
    ys, xs = np.mgrid[: mask.shape[1], : mask.shape[2]]
    area = mask.sum(axis=(1, 2))
    assert area.min() > 0, "the toy is missing from a frame"
    return np.stack([(mask * xs).sum(axis=(1, 2)) / area, (mask * ys).sum(axis=(1, 2)) / area], axis=1)


def centroids(frames: np.ndarray, colour: str = "red") -> np.ndarray:
    """float [F, 2]: (x, y) of the toy in each frame."""
    return centroid(toy_mask(frames, colour))


def test_rendering_is_deterministic_uint8_frames():
    made = render_frames(scene(camera="pan-right"), F, H, W)
    assert made.shape == (F, H, W, 3) and made.dtype == np.uint8
    np.testing.assert_array_equal(made, render_frames(scene(camera="pan-right"), F, H, W))
    assert not np.array_equal(made[0], made[-1])


def test_the_toy_coverage_is_where_the_toy_is_drawn():
    """A box (no marker dot): every fully covered pixel is the toy's colour and no uncovered pixel is."""
    box = scene(motion="roll-right", shape="box", size="big")
    frames, coverage = frames_and_toy_coverage(box, F, H, W)
    drawn = toy_mask(frames, "red")
    np.testing.assert_array_equal(frames, render_frames(box, F, H, W))
    assert coverage.shape == (F, H, W) and coverage.dtype == np.float32
    assert drawn[coverage == 1].all() and not drawn[coverage == 0].any()
    np.testing.assert_allclose(centroid(coverage == 1), centroid(drawn), atol=0.5)


def test_captions_say_the_true_state():
    assert caption(scene()) == "a small red ball rolls left on a striped green background"
    box = scene("bounce", "pan-right", "dotted", "blue", "box", "big")
    assert caption(box) == "a big blue box bounces on a dotted green background, the camera pans right"
    assert state_caption(box) == "a big blue box on a dotted green background"
    triangle = scene("grow", pattern="shaded", colour="yellow", shape="triangle")
    assert caption(triangle) == "a small yellow triangle grows on a shaded green background"
    assert set(MOTION_WORDS) == set(MOTIONS) and set(CAMERA_WORDS) == set(CAMERAS)


def test_a_scene_refuses_what_no_frame_could_show():
    with pytest.raises(ValueError, match="vanish"):
        scene(colour="green")
    with pytest.raises(ValueError, match="pan does not show"):
        scene(camera="pan-left", pattern="plain")
    with pytest.raises(ValueError, match="unknown shape"):
        scene(shape="cone")


def test_random_scenes_are_seeded_valid_and_varied():
    first = [random_scene(np.random.default_rng(5)) for _ in range(2)]
    assert first[0] == first[1]
    rng = np.random.default_rng(0)
    drawn = [random_scene(rng) for _ in range(300)]
    assert {s.motion for s in drawn} == set(MOTIONS) and {s.background.pattern for s in drawn} == set(PATTERNS)
    assert {s.camera for s in drawn} == set(CAMERAS)
    assert all(s.camera == "still" or s.background.pattern in PANNABLE_PATTERNS for s in drawn)
    fixed = random_scene(np.random.default_rng(1), colour="red", shape="ball")
    assert (fixed.toy.colour, fixed.toy.shape) == ("red", "ball") and fixed.background.colour != "red"


def test_rolling_moves_the_toy_the_way_the_caption_says():
    left = centroids(render_frames(scene("roll-left"), F, H, W))
    assert np.all(np.diff(left[:, 0]) < 0) and left[0, 0] - left[-1, 0] > 40
    assert np.ptp(left[:, 1]) < 1.5  # it rolls along, it does not rise or fall
    right = centroids(render_frames(scene("roll-right", shape="box"), F, H, W))
    assert np.all(np.diff(right[:, 0]) > 0)


def test_a_rolling_ball_turns():
    frames = render_frames(scene("roll-right"), 9, H, W)
    dot = (frames.astype(int) == np.round(np.array(COLOURS["red"]) * 0.5)).all(axis=-1)  # the ball's dark dot
    offset = centroid(dot) - centroid(dot | toy_mask(frames, "red"))
    turn = np.diff(np.unwrap(np.arctan2(offset[:, 1], offset[:, 0])))
    assert np.all(turn > 0.1)  # clockwise on screen (y points down), as a ball rolling right turns


def test_a_bounce_rises_then_falls_and_drift_goes_up_and_right():
    heights = -centroids(render_frames(scene("bounce"), F, H, W))[:, 1]  # up is −y
    top = int(np.argmax(heights))
    assert 12 <= top <= 20 and heights[top] - heights[0] > 20 and heights[top] - heights[-1] > 20
    assert np.all(np.diff(heights[: top - 1]) > 0) and np.all(np.diff(heights[top + 2 :]) < 0)
    drift = centroids(render_frames(scene("drift"), F, H, W))
    assert drift[-1, 0] - drift[0, 0] > 10 and drift[0, 1] - drift[-1, 1] > 10


def test_growing_and_shrinking_change_the_area_only():
    for motion, sign in (("grow", 1), ("shrink", -1)):
        frames = render_frames(scene(motion, shape="triangle"), F, H, W)
        area = toy_mask(frames, "red").sum(axis=(1, 2))
        assert np.all(sign * np.diff(area[::4]) > 0) and (area[-1] / area[0]) ** sign > 2
        assert np.ptp(centroids(frames), axis=0).max() < 1.5


@pytest.mark.parametrize("camera, direction", [("pan-right", 1), ("pan-left", -1), ("still", 0)])
@pytest.mark.parametrize("pattern", PANNABLE_PATTERNS)
def test_the_camera_pan_scrolls_the_background(camera, direction, pattern):
    frames = render_frames(scene(camera=camera, pattern=pattern, start=(0.5, 0.85)), 4, H, W).astype(int)
    # Rows above the toy: frame 3 is frame 0 moved by the pan (1.92 px a frame), content sliding against the pan.
    row0, row3 = frames[0, :32], frames[3, :32]

    def mismatch(shift: int) -> float:  # frame 3 at x shows frame 0 at x + shift
        return np.abs(row3[:, 10:-10] - row0[:, 10 + shift : W - 10 + shift]).mean()

    best = min(range(-7, 8), key=mismatch)  # within half a pattern period, so the answer is unique
    assert best == round(1.92 * 3) * direction
    if direction:
        assert mismatch(best) < 0.15 * mismatch(0)
    else:
        assert mismatch(0) == 0


def test_the_dataset_is_deterministic_and_read_by_the_training_loader(tmp_path):
    frames, height, width = 13, 32, 48
    paths = write_dataset(tmp_path / "a", 8, seed=3, num_frames=frames, height=height, width=width)
    write_dataset(tmp_path / "b", 8, seed=3, num_frames=frames, height=height, width=width)
    tables = sorted((tmp_path / "a").glob("*/*.csv"))
    assert tables and all(
        t.read_bytes() == (tmp_path / "b" / t.relative_to(tmp_path / "a")).read_bytes() for t in tables
    )
    assert (tmp_path / "a" / "scenes.jsonl").read_bytes() == (tmp_path / "b" / "scenes.jsonl").read_bytes()

    truth = {line["file"]: line for line in map(json.loads, (tmp_path / "a" / "scenes.jsonl").read_text().splitlines())}
    items = read_video_index(tmp_path / "a")
    assert sorted(item.path for item in items) == sorted(paths)
    for item in items:
        entry = truth[item.path.relative_to(tmp_path / "a").as_posix()]
        assert item.caption == entry["caption"] and item.category == entry["scene"]["motion"]
        info = probe_video(item.path)
        assert (info.frame_count, info.height, info.width) == (frames, height, width)
        decoded = read_clip(item.path)
        assert torch.equal(decoded, read_clip(tmp_path / "b" / item.path.relative_to(tmp_path / "a")))
        s = entry["scene"]
        true_scene = Scene(Toy(**s["toy"]), Background(**s["background"]), s["motion"], s["camera"], tuple(s["start"]))
        assert caption(true_scene) == item.caption
        np.testing.assert_array_equal(decoded.numpy(), render_frames(true_scene, frames, height, width))  # lossless
    other = read_video_index(write_dataset(tmp_path / "c", 8, seed=4, num_frames=5, height=16, width=16)[0].parents[1])
    assert [i.caption for i in other] != [i.caption for i in items]


def test_pictures_and_their_library_find_a_red_ball(tmp_path):
    paths = write_pictures(tmp_path / "a", 6, seed=2, height=48, width=80)
    write_pictures(tmp_path / "b", 6, seed=2, height=48, width=80)
    assert (tmp_path / "a" / "library.yaml").read_bytes() == (tmp_path / "b" / "library.yaml").read_bytes()
    library = read_library(tmp_path / "a")
    assert list(library) == [p.name for p in paths]
    assert all({"ball", "circle"} <= set(tags) for name, tags in library.items() if name.endswith("-ball.png"))
    found, matched = match_library(["red ball"], tmp_path / "a")
    assert matched and {"red", "ball"} <= set(library[found[0].name])
    with Image.open(found[0]) as picture:
        pixels = np.asarray(picture)
    assert pixels.shape == (48, 80, 3) and toy_mask(pixels[None], "red").any()
    np.testing.assert_array_equal(pixels, np.asarray(Image.open(tmp_path / "b" / found[0].name)))


def test_the_command_line_writes_both_and_refuses_a_used_folder(tmp_path, capsys):
    main(["dataset", str(tmp_path / "d"), "--count", "2", "--seed", "0", "--frames", "5", "--height", "16"])
    main(["pictures", str(tmp_path / "p"), "--count", "2", "--seed", "0", "--height", "32", "--width", "48"])
    assert len(read_video_index(tmp_path / "d")) == 2 and len(read_library(tmp_path / "p")) == 2
    assert "wrote 2 pictures" in capsys.readouterr().out
    with pytest.raises(SystemExit) as stopped:
        main(["pictures", str(tmp_path / "p"), "--count", "2", "--seed", "0"])
    assert stopped.value.code == 2 and "not empty" in capsys.readouterr().err

"""kill -9 of `svi generate` at 14 moments of a 6-clip tiny film, each run resumed by the next: the film equals the
uninterrupted run's byte for byte, no finished clip is rendered again, and no temporary file is left behind."""

import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
from kill_points import start_run
from PIL import Image

from svi_model.atomic_files import PARTIAL
from svi_model.tiny import save_tiny_model
from svi_model.video_files import read_clip

# (moment, which occurrence in its run): each lies ahead of what the run before it finished. See kill_points.
KILLS = [
    ("render 0", 1),  # model loaded, request and reference written, nothing rendered
    ("forward 0 2", 1),  # mid-denoising of clip 0
    (r"frame cache/clips/\w+/clip.mkv 5", 1),  # ffmpeg writing clip 0 into the store
    (r"rename cache/clips/\w+/state.safetensors", 1),  # clip 0's video stored, its state (what completes it) not
    ("rename film.clips/clips/clip_0000.mkv", 1),  # clip 0 stored whole, not yet in the run folder
    ("rename film.clips/clips/clip_0001.state.safetensors", 1),  # clip 1 half placed in the run folder
    ("frame film.preview.mp4 5", 3),  # the preview being written
    ("render 3", 1),  # between clips
    ("forward 4 3", 1),  # mid-denoising of clip 4
    ("rename film.clips/clips/clip_0005.mkv", 1),  # the last clip stored, not placed
    ("frame film.clips/film.mp4 20", 1),  # ffmpeg writing the film
    ("rename film.clips/film.mp4", 1),  # the film written, not in place
    ("rename film.clips/storyboard.png", 1),  # the film in place, the storyboard and manifest not
    ("rename film.mp4", 1),  # everything made, the film not yet placed at --out
]


@pytest.fixture(scope="module")
def film_inputs(tmp_path_factory) -> tuple[Path, Path, Path]:
    folder = tmp_path_factory.mktemp("inputs")
    picture = folder / "frame.png"
    Image.fromarray((np.random.default_rng(0).random((32, 48, 3)) * 255).astype(np.uint8)).save(picture)
    prompts = folder / "story.txt"
    prompts.write_text("a red ball rests on the grass\nthe ball rolls away\nthe ball stops\n")
    return save_tiny_model(folder / "tiny-wan"), picture, prompts


def film_args(inputs: tuple[Path, Path, Path], out: Path) -> list[str]:
    model, picture, prompts = inputs
    return ["generate", "--images", str(picture), "--prompts", str(prompts), "--model", str(model), "--clips", "6",
            "--num-frames", "9", "--steps", "2", "--device", "cpu", "--out", str(out)]  # fmt: skip


def moments(log: Path) -> list[tuple[str, str]]:
    """(pid, moment) in the order they happened, over every run."""
    return [tuple(line.split(" ", 1)) for line in log.read_text(encoding="utf-8").splitlines()]


def renders_after_storing(log: Path) -> list[str]:
    """The renders of a clip that had been stored whole before (a state in the store completes an entry)."""
    current, stored, again = {}, set(), []
    for pid, moment in moments(log):
        if moment.startswith("render "):
            k = moment.split()[1]
            if k in stored:
                again.append(f"clip {k} rendered again by run {pid}")
            current[pid] = k
        elif re.fullmatch(r"renamed cache/clips/\w+/state.safetensors", moment):
            stored.add(current[pid])
    return again


def test_a_film_killed_at_any_moment_resumes_to_the_same_film(film_inputs, tmp_path):
    straight = tmp_path / "straight"
    run = start_run(film_args(film_inputs, straight / "film.mp4"), straight / "cache", straight / "log", straight)
    run.join()
    assert run.exitcode == 0

    base = tmp_path / "killed"
    args = film_args(film_inputs, base / "film.mp4")
    for kill_at, nth in KILLS:
        run = start_run(args, base / "cache", base / "log", base, kill_at, nth)
        run.join()
        assert run.exitcode == -9, f"the run meant to die at {kill_at!r} ended with {run.exitcode}"
    run = start_run(args, base / "cache", base / "log", base)
    run.join()
    assert run.exitcode == 0

    assert (base / "film.mp4").read_bytes() == (straight / "film.mp4").read_bytes()
    for k in range(6):
        clip = f"film.clips/clips/clip_{k:04d}.mkv"
        assert torch.equal(read_clip(base / clip), read_clip(straight / clip)), clip  # (Matroska's IDs differ)
    assert renders_after_storing(base / "log") == []
    renders = defaultdict(int)
    for _, moment in moments(base / "log"):
        renders[moment] += moment.startswith("render ")
    # Renders begun: by each of the 5 runs killed before clip 0 was stored whole, and one more for each kill at the
    # start of clip 3 and inside clip 4; every other clip once.
    assert {k: renders[f"render {k}"] for k in range(6)} == {0: 5, 1: 1, 2: 1, 3: 2, 4: 2, 5: 1}
    assert [path for path in base.rglob("*") if PARTIAL in path.name] == []
    assert not (base / "cache" / "clips" / ".quarantine").exists()  # a killed write never looks whole

"""Per-clip checks: a clip that fails one is rendered again with the next attempt's seed, the manifest records every
attempt and verdict, and a rerun takes the accepted clip from the store."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from flows.cli import main
from pipeline.synthesize import CLIP_CHECKS, ClipCheck
from pipeline.synthesize.checks import frozen_clip
from svi_model.modes import mode_settings


@pytest.fixture
def first_render_fails():
    """A check registered for one test: it fails the first clip it judges, and passes every later one."""
    judged = []

    def judge(frames: torch.Tensor) -> str | None:
        judged.append(frames.shape)
        return "the first render is never good enough" if len(judged) == 1 else None

    CLIP_CHECKS.register("first-fails", ClipCheck(judge, "fails the first clip it sees"))
    yield judged
    CLIP_CHECKS.unregister("first-fails")


def test_frozen_clip_check():
    still = torch.full((9, 16, 16, 3), 128, dtype=torch.uint8)
    moving = torch.randint(0, 256, (9, 16, 16, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    assert frozen_clip(still).startswith("frozen: the frames barely change (0.000")
    assert frozen_clip(moving) is None


def test_a_failed_check_renders_the_clip_again_with_the_next_seed(
    model_dir, tmp_path, monkeypatch, first_render_fails, seeds
):
    monkeypatch.setenv("SVI_CACHE_DIR", str(tmp_path / "cache"))
    image, prompts = tmp_path / "frame.png", tmp_path / "story.txt"
    Image.fromarray((np.random.default_rng(0).random((32, 48, 3)) * 255).astype(np.uint8)).save(image)
    prompts.write_text("a red ball rests on the grass\nthe ball rolls away\n")
    out = tmp_path / "film.mp4"
    args = ["generate", "--images", str(image), "--prompts", str(prompts), "--model", str(model_dir),
            "--clips", "2", "--num-frames", "9", "--steps", "2", "--device", "cpu",
            "--checks", "first-fails", "--out", str(out)]  # fmt: skip

    assert main(args) == 0
    retake = mode_settings("film", seed=42).seed_for(0, attempt=1)
    assert seeds == [0, retake, 42]  # clip 0: attempt 0 (seed 42·0) failed, attempt 1 passed; clip 1 at once
    manifest = json.loads((tmp_path / "film.clips" / "manifest.json").read_text())
    first, second = manifest["clips"][0]["attempts"], manifest["clips"][1]["attempts"]
    assert first == [
        {
            "attempt": 0,
            "seed": 0,
            "verdicts": {"first-fails": "the first render is never good enough"},
            "passed": False,
        },
        {"attempt": 1, "seed": retake, "verdicts": {"first-fails": None}, "passed": True},
    ]
    assert second == [{"attempt": 0, "seed": 42, "verdicts": {"first-fails": None}, "passed": True}]

    seeds.clear()
    out.unlink()
    assert main(args) == 0
    assert seeds == []  # both accepted clips came from the store
    assert json.loads((tmp_path / "film.clips" / "manifest.json").read_text())["clips"][0]["attempts"] == first


def test_an_unknown_check_is_refused_naming_the_known_ones(tmp_path, capsys):
    assert main(["film", "--checks", "sharpness", "--run-dir", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: argument --checks: invalid choice: 'sharpness' (choose from") and "frozen" in error
    assert error.count("\n") == 1

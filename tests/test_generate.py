"""`svi generate` end to end on a tiny model folder: outputs, resume, and bad input (one clear line, exit 2)."""

import shutil
import subprocess
import sys

import imageio_ffmpeg
import numpy as np
import pytest
import torch
from PIL import Image

from flows.cli import main
from svi_model.sampler import ClipSampler
from svi_model.video_files import read_clip


@pytest.fixture
def inputs(tmp_path):
    image = tmp_path / "frame.png"
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((40, 60, 3)) * 255).astype(np.uint8)).save(image)
    prompts = tmp_path / "story.txt"
    prompts.write_text("# story\na red ball rests on the grass\nthe ball rolls away\n")
    return image, prompts


def args_for(model_dir, image, prompts, out, *extra):
    return [
        "generate", "--images", str(image), "--prompts", str(prompts), "--model", str(model_dir),
        "--num-frames", "9", "--steps", "2", "--device", "cpu", "--out", str(out), *extra,
    ]  # fmt: skip


def mp4_frame_count(path) -> int:
    reader = imageio_ffmpeg.read_frames(str(path))
    next(reader)
    return sum(1 for _ in reader)


def test_generate_writes_the_film_and_keeps_clips(model_dir, inputs, tmp_path):
    image, prompts = inputs
    out = tmp_path / "out" / "film.mp4"
    assert main(args_for(model_dir, image, prompts, out, "--clips", "3")) == 0
    assert out.is_file() and not (tmp_path / "out" / "film.preview.mp4").exists()
    assert mp4_frame_count(out) == 3 * (9 - 5) + 5  # Film: m=5
    clips = sorted((tmp_path / "out" / "film.clips" / "clips").glob("clip_*.mkv"))
    assert [c.name for c in clips] == ["clip_0000.mkv", "clip_0001.mkv", "clip_0002.mkv"]
    assert read_clip(clips[0]).shape == (9, 32, 48, 3)  # 60x40 → sides floored to multiples of 16


def test_rerun_continues_after_the_last_stored_clip_with_identical_frames(model_dir, inputs, tmp_path, monkeypatch):
    image, prompts = inputs
    args = ["--clips", "4", "--mode", "shot"]
    monkeypatch.setenv("SVI_CACHE_DIR", str(tmp_path / "cache-a"))
    assert main(args_for(model_dir, image, prompts, tmp_path / "straight.mp4", *args)) == 0
    uninterrupted = [read_clip(tmp_path / "straight.clips" / "clips" / f"clip_{k:04d}.mkv") for k in range(4)]

    # A run that dies during clip 2 (in a fresh clip store), then the same command again.
    monkeypatch.setenv("SVI_CACHE_DIR", str(tmp_path / "cache-b"))
    out = tmp_path / "film.mp4"
    calls, killed = [], {"during clip 2": True}
    real_render = ClipSampler.render

    def dies_once_during_clip_2(self, *a, **k):
        if a[1] == 42 * 2 and killed.pop("during clip 2", False):
            raise KeyboardInterrupt("killed during clip 2")
        calls.append(a[1])
        return real_render(self, *a, **k)

    monkeypatch.setattr(ClipSampler, "render", dies_once_during_clip_2)
    assert main(args_for(model_dir, image, prompts, out, *args)) == 130  # interrupted: one line, exit 130
    assert calls == [0, 42] and not out.exists()
    calls.clear()
    assert main(args_for(model_dir, image, prompts, out, *args)) == 0
    assert calls == [42 * 2, 42 * 3]  # only clips 2 and 3 were rendered again
    work = tmp_path / "film.clips" / "clips"
    for k in range(4):
        assert torch.equal(read_clip(work / f"clip_{k:04d}.mkv"), uninterrupted[k])


def test_a_different_request_never_overwrites_stored_clips(model_dir, inputs, tmp_path, capsys):
    image, prompts = inputs
    out = tmp_path / "film.mp4"
    assert main(args_for(model_dir, image, prompts, out, "--clips", "1")) == 0
    before = (tmp_path / "film.clips" / "clips" / "clip_0000.mkv").read_bytes()
    assert main(args_for(model_dir, image, prompts, out, "--clips", "1", "--seed", "7")) == 2
    assert "holds another film (different seed)" in capsys.readouterr().err
    assert (tmp_path / "film.clips" / "clips" / "clip_0000.mkv").read_bytes() == before
    assert main(args_for(model_dir, image, prompts, out, "--clips", "1", "--seed", "7", "--overwrite")) == 0


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing model folder", "does-not-exist"),
        ("partial model folder", "vae"),
        ("not an image", "is not a readable image"),
        ("zero clips", "clips"),
        ("m >= frames", "motion frames (9) must be fewer than frames per clip (9)"),
        ("frames not 4k+1", "frames per clip must be 4k+1"),
        ("empty prompt stream", "holds no prompt"),
    ],
)
def test_bad_input_is_one_clear_line_and_exit_2(model_dir, inputs, tmp_path, capsys, case, expected):
    image, prompts = inputs
    model, extra = model_dir, []
    if case == "missing model folder":
        model = tmp_path / "does-not-exist"
    elif case == "partial model folder":
        model = tmp_path / "partial"
        shutil.copytree(model_dir, model)
        shutil.rmtree(model / "vae")
    elif case == "not an image":
        image = tmp_path / "notes.png"
        image.write_text("not pixels")
    elif case == "zero clips":
        extra = ["--clips", "0"]
    elif case == "m >= frames":
        extra = ["--motion-frames", "9"]
    elif case == "frames not 4k+1":
        extra = ["--num-frames", "10"]
    elif case == "empty prompt stream":
        prompts = tmp_path / "empty.txt"
        prompts.write_text("# nothing yet\n")
    out = tmp_path / "film.mp4"
    assert main(args_for(model, image, prompts, out, *extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err and err.count("\n") == 1
    assert not out.exists()


def test_console_exit_code_is_non_zero_on_bad_input(inputs, tmp_path):
    image, prompts = inputs
    result = subprocess.run(
        [sys.executable, "-m", "flows.cli", *args_for(tmp_path / "no-model", image, prompts, tmp_path / "f.mp4")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "error:" in result.stderr and "no-model" in result.stderr


def test_without_clips_there_is_one_clip_per_prompt(model_dir, inputs, tmp_path):
    image, prompts = inputs  # two prompts
    out = tmp_path / "film.mp4"
    assert main(args_for(model_dir, image, prompts, out)) == 0
    assert mp4_frame_count(out) == 2 * (9 - 5) + 5

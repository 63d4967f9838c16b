"""Stored clips are checked before reuse: a damaged clip or state (in the clip store or the run folder, which share
the file through a hard link) is moved aside and made again, and a film is never rebuilt from damaged clips."""

import numpy as np
import pytest
import torch
from PIL import Image

from flows.cli import main
from pipeline.run_folder import load_state, save_state
from pipeline.synthesize import ClipStore
from pipeline.synthesize.seals import clip_damage, read_seal, save_sealed_state
from svi_model.chain import ChainState
from svi_model.video_files import read_clip, write_clip


@pytest.fixture
def generate(model_dir, tmp_path, monkeypatch):
    """`svi generate` of 3 clips into tmp_path/film.mp4 (run folder film.clips/), with its own clip store."""
    monkeypatch.setenv("SVI_CACHE_DIR", str(tmp_path / "cache"))
    image, prompts = tmp_path / "frame.png", tmp_path / "story.txt"
    Image.fromarray((np.random.default_rng(0).random((32, 48, 3)) * 255).astype(np.uint8)).save(image)
    prompts.write_text("a red ball rests on the grass\nthe ball rolls away\nthe ball stops\n")
    args = ["generate", "--images", str(image), "--prompts", str(prompts), "--model", str(model_dir),
            "--num-frames", "9", "--steps", "2", "--device", "cpu", "--out", str(tmp_path / "film.mp4")]  # fmt: skip
    return lambda: main(args)


def clips(run) -> list[torch.Tensor]:
    return [read_clip(run / "clips" / f"clip_{k:04d}.mkv") for k in range(3)]


def test_a_damaged_clip_is_never_assembled_and_is_made_again(generate, tmp_path, seeds, capsys):
    assert generate() == 0
    run = tmp_path / "film.clips"
    before, film = clips(run), (run / "film.mp4").read_bytes()
    clip = run / "clips" / "clip_0001.mkv"
    data = bytearray(clip.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: same size, other content
    clip.write_bytes(bytes(data))

    capsys.readouterr()
    assert main(["assemble", "--run-dir", str(run)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "clip_0001.mkv is damaged" in error and "SHA-256 differs" in error
    assert (run / "film.mp4").read_bytes() == film  # the good film is kept

    seeds.clear()
    assert generate() == 0
    assert seeds == [42]  # only clip 1 is made again; its state is the same, so clip 2 is reused
    assert all(torch.equal(a, b) for a, b in zip(before, clips(run), strict=True))
    assert len(list((tmp_path / "cache" / "clips" / ".quarantine").iterdir())) == 1


def test_a_truncated_state_is_made_again_not_a_traceback(generate, tmp_path, seeds):
    assert generate() == 0
    state = tmp_path / "film.clips" / "clips" / "clip_0000.state.safetensors"
    state.write_bytes(state.read_bytes()[:20])
    seeds.clear()
    assert generate() == 0
    assert seeds == [0]


def test_clips_stored_before_seals_are_checked_once_and_sealed(generate, tmp_path, seeds):
    assert generate() == 0
    store = ClipStore(tmp_path / "cache" / "clips")
    keys = [path.parent.name for path in store.root.glob("*/state.safetensors")]
    for key in keys:  # as an older version stored them: no seal
        save_state(load_state(store.state(key)), store.state(key))
        assert read_seal(store.state(key)) is None
    seeds.clear()
    assert generate() == 0
    assert seeds == []
    assert all(read_seal(store.state(key))["clip_frames"] == "9" for key in keys)


def test_a_sealed_state_records_the_clip(tmp_path):
    frames = torch.randint(0, 256, (5, 16, 16, 3), dtype=torch.uint8)
    write_clip(frames, tmp_path / "c.mkv")
    state = ChainState(tail_frames=frames[-1:])
    save_sealed_state(state, tmp_path / "s.safetensors", tmp_path / "c.mkv", 5)
    assert clip_damage(tmp_path / "c.mkv", tmp_path / "s.safetensors", 5) is None
    assert "holds 5 frames where the request makes 9" in clip_damage(tmp_path / "c.mkv", tmp_path / "s.safetensors", 9)

"""`assemble` on a run folder built by hand (synthetic clips, no model): the film follows the stitching rule frame
for frame, the subtitles and storyboard follow the film, the manifest records what made it, and failures are
clear and leave earlier outputs whole."""

import hashlib
import json
from importlib import metadata
from pathlib import Path

import av
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from pipeline.assemble import (
    FilmFrames,
    StoredFrames,
    assemble_run,
    join_chapters,
    srt_timestamp,
    storyboard,
    write_film,
)
from pipeline.assemble import film as film_assembly
from pipeline.hashing import folder_fingerprint
from pipeline.request import FilmRequest
from pipeline.run_folder import RunFolder
from svi_model.chain import stitch
from svi_model.video_files import read_clip, write_clip

PROMPTS = ["a red ball rests on the grass", "the ball rolls away\ninto the woods"]
HEIGHT, WIDTH, FRAMES = 48, 64, 9


def synthetic_clip(k: int) -> torch.Tensor:
    """uint8 [9, 48, 64, 3]: smooth gradients, and a blue level unique to (clip, frame) so a shifted frame shows."""
    frames = np.zeros((FRAMES, HEIGHT, WIDTH, 3), np.uint8)
    frames[..., 0] = 3 * np.arange(WIDTH)[None, None, :]
    frames[..., 1] = 4 * np.arange(HEIGHT)[None, :, None]
    frames[..., 2] = (9 * (FRAMES * k + np.arange(FRAMES)))[:, None, None]
    return torch.from_numpy(frames)


def make_run(root: Path, mode: str = "film", clips: int = 3, **fields) -> FilmRequest:
    """A run folder as the film flow leaves it: request.json, storyline.yaml, reference.png, clips/."""
    request = FilmRequest(run_dir=root, mode=mode, clips=clips, num_frames=FRAMES, **fields)
    root.mkdir(parents=True)
    RunFolder(root).request.write_text(json.dumps(request.model_dump(mode="json"), indent=2))
    (root / "storyline.yaml").write_text(yaml.safe_dump({"prompts": PROMPTS}))
    Image.fromarray(synthetic_clip(0)[0].numpy()).save(root / "reference.png")
    for k in range(clips):
        write_clip(synthetic_clip(k), root / "clips" / f"clip_{k:04d}.mkv")
    return request


def decoded(path: Path) -> tuple[np.ndarray, str, str]:
    """The MP4's frames uint8 [n, H, W, 3], its codec and its pixel format."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        codec, pix_fmt = stream.codec_context.name, stream.codec_context.pix_fmt
        frames = np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(stream)])
    return frames, codec, pix_fmt


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    "mode, length", [("film", 3 * (9 - 5) + 5), ("tom", 3 * (9 - 1) + 1), ("svi2", 9 + 2 * 8), ("pro", 9 + 2 * 5)]
)
def test_film_is_the_stitched_clips_frame_for_frame(tmp_path, mode, length):
    request = make_run(tmp_path / "run", mode)
    film = assemble_run(tmp_path / "run")
    assert film == tmp_path / "run" / "film.mp4"
    frames, codec, pix_fmt = decoded(film)
    assert (codec, pix_fmt) == ("h264", "yuv420p")
    expected = stitch(request.settings(), [synthetic_clip(k) for k in range(3)]).numpy()
    assert len(frames) == len(expected) == length
    error = np.abs(frames.astype(np.int16) - expected.astype(np.int16)).mean(axis=(1, 2, 3))
    assert error.max() < 3, f"frames off the stitching rule: {np.flatnonzero(error >= 3)}"


def test_film_frame_count_survives_float_rounding(tmp_path):
    # 29 / 25 * 25 == 28.999…: moviepy's int(duration·fps) would drop the last frame.
    frames = torch.zeros(29, 16, 16, 3, dtype=torch.uint8)
    assert write_film([frames], tmp_path / "f.mp4", fps=25, preset="ultrafast") == 29
    assert len(decoded(tmp_path / "f.mp4")[0]) == 29


def test_subtitles_show_each_clips_prompt_over_its_frames(tmp_path):
    make_run(tmp_path / "run", "film")
    assemble_run(tmp_path / "run")
    # Film mode, 9 frames, m=5: clips fill frames 0–4, 4–8, 8–17 at 16 fps; clip 2 wraps back to prompt 0.
    assert (tmp_path / "run" / "film.srt").read_text() == (
        "1\n00:00:00,000 --> 00:00:00,250\na red ball rests on the grass\n\n"
        "2\n00:00:00,250 --> 00:00:00,500\nthe ball rolls away into the woods\n\n"
        "3\n00:00:00,500 --> 00:00:01,062\na red ball rests on the grass\n"
    )


def test_srt_timestamps():
    assert srt_timestamp(0) == "00:00:00,000"
    assert srt_timestamp(3661.5) == "01:01:01,500"
    assert srt_timestamp(59.9996) == "00:01:00,000"


def test_storyboard_shows_the_middle_of_each_clips_part(tmp_path):
    make_run(tmp_path / "run", "film")
    assemble_run(tmp_path / "run")
    with Image.open(tmp_path / "run" / "storyboard.png") as image:
        sheet = np.asarray(image.convert("RGB"))
    cell = max(WIDTH, storyboard.CAPTION_WIDTH) + 2 * storyboard.MARGIN
    assert sheet.shape[1] == 3 * cell and sheet.shape[0] > HEIGHT + 2 * storyboard.MARGIN
    film = stitch(FilmRequest(num_frames=FRAMES).settings(), [synthetic_clip(k) for k in range(3)]).numpy()
    for k, middle in enumerate((2, 6, 12)):  # spans 0–4, 4–8, 8–17
        left, top = k * cell + (cell - WIDTH) // 2, storyboard.MARGIN
        np.testing.assert_array_equal(sheet[top : top + HEIGHT, left : left + WIDTH], film[middle])


def test_storyboard_wraps_rows_and_shrinks_wide_films():
    wide = torch.zeros(5, 96, 640, 3, dtype=torch.uint8)
    sheet = storyboard.draw_storyboard(FilmFrames([wide] * 6), ["word " * 200] * 6, fps=16)
    cell = storyboard.THUMB_WIDTH + 2 * storyboard.MARGIN
    assert sheet.width == storyboard.STORYBOARD_COLUMNS * cell
    thumb_height = round(96 * storyboard.THUMB_WIDTH / 640)
    caption = (1 + storyboard.CAPTION_LINES) * (storyboard.FONT_SIZE + 4)
    assert sheet.height == 2 * (3 * storyboard.MARGIN + thumb_height + caption)


def test_manifest_records_request_versions_hashes_and_timings(tmp_path):
    model = tmp_path / "model"
    (model / "transformer").mkdir(parents=True)
    (model / "transformer" / "config.json").write_text('{"layers": 2}')
    lora = tmp_path / "svi-film.safetensors"
    lora.write_bytes(b"not really a LoRA")
    run = tmp_path / "run"
    request = make_run(run, "film", model=model, lora=lora)
    assemble_run(run, timings={"retrieve": 1.5, "synthesize": 20.0})
    manifest = json.loads((run / "manifest.json").read_text())

    assert manifest["request"] == request.model_dump(mode="json")
    assert manifest["settings"]["motion_frames"] == 5
    assert manifest["versions"]["moviepy"] == metadata.version("moviepy")
    assert set(film_assembly.VERSIONED_PACKAGES) <= set(manifest["versions"])
    assert manifest["engine"]["model"] == folder_fingerprint(model)
    assert manifest["engine"]["lora"] == hashlib.sha256(b"not really a LoRA").hexdigest()
    assert manifest["inputs"]["reference.png"] == sha256(run / "reference.png")
    assert manifest["inputs"]["prompts"]["sha256"] == sha256(run / "storyline.yaml")
    assert [c["sha256"] for c in manifest["clips"]] == [sha256(run / f"clips/clip_{k:04d}.mkv") for k in range(3)]
    assert [c["film_frames"] for c in manifest["clips"]] == [[0, 4], [4, 8], [8, 17]]
    assert manifest["clips"][1]["prompt"] == PROMPTS[1]
    film = manifest["film"]
    assert film["sha256"] == sha256(run / "film.mp4")
    assert (film["frames"], film["fps"], film["width"], film["height"]) == (17, 16, WIDTH, HEIGHT)
    assert film["duration_s"] == pytest.approx(17 / 16)
    assert manifest["timings"]["synthesize"] == 20.0 and manifest["timings"]["assemble"] > 0

    assemble_run(run)  # `svi assemble` later: the render's timings stay
    assert json.loads((run / "manifest.json").read_text())["timings"]["synthesize"] == 20.0


def test_manifest_without_the_weights_records_where_they_were(tmp_path):
    make_run(tmp_path / "run", "film", model=tmp_path / "gone")
    assemble_run(tmp_path / "run")
    engine = json.loads((tmp_path / "run" / "manifest.json").read_text())["engine"]
    assert engine["unavailable"] == [str(tmp_path / "gone")]


def test_a_missing_clip_is_a_clear_error(tmp_path):
    make_run(tmp_path / "run", "film")
    (tmp_path / "run" / "clips" / "clip_0001.mkv").unlink()
    with pytest.raises(FileNotFoundError, match=r"lacks 1 of the 3 clips \(clip_0001.mkv\).*run `svi film"):
        assemble_run(tmp_path / "run")
    assert not (tmp_path / "run" / "film.mp4").exists()


def test_a_folder_without_request_is_not_a_run_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a run folder"):
        assemble_run(tmp_path)


def test_a_clip_made_with_other_settings_is_named(tmp_path):
    make_run(tmp_path / "run", "film")
    write_clip(synthetic_clip(1)[:5], tmp_path / "run" / "clips" / "clip_0001.mkv")
    with pytest.raises(ValueError, match="clip_0001.mkv holds 5 frames where the request makes 9"):
        assemble_run(tmp_path / "run")


def test_a_failed_rerun_leaves_the_earlier_outputs_whole(tmp_path, monkeypatch):
    run = tmp_path / "run"
    make_run(run, "film")
    assemble_run(run)
    before = {name: (run / name).read_bytes() for name in ("film.mp4", "film.srt", "storyboard.png", "manifest.json")}
    real_load = StoredFrames.load

    def dies_at_the_last_clip(self):
        if self.path.name == "clip_0002.mkv":
            raise OSError("disk died")
        return real_load(self)

    monkeypatch.setattr(StoredFrames, "load", dies_at_the_last_clip)
    with pytest.raises(OSError, match="disk died"):
        assemble_run(run)
    assert {name: (run / name).read_bytes() for name in before} == before
    assert sorted(p.name for p in run.iterdir()) == sorted([*before, "clips", "reference.png", "request.json",
                                                              "storyline.yaml"])  # fmt: skip


def test_chapters_join_with_a_crossfade(tmp_path):
    red = torch.zeros(16, HEIGHT, WIDTH, 3, dtype=torch.uint8)
    red[..., 0] = 200
    blue = torch.zeros(16, HEIGHT, WIDTH, 3, dtype=torch.uint8)
    blue[..., 2] = 200
    chapters = [tmp_path / "one.mp4", tmp_path / "two.mp4"]
    for frames, path in zip((red, blue), chapters, strict=True):
        write_film([frames], path, fps=16, preset="ultrafast")
    joined = join_chapters(chapters, tmp_path / "film.mp4", crossfade_s=0.5, preset="ultrafast")
    frames, codec, pix_fmt = decoded(joined)
    assert (codec, pix_fmt) == ("h264", "yuv420p")
    assert len(frames) == 16 + 16 - 8
    means = frames.reshape(len(frames), -1, 3).mean(axis=1)
    assert means[0, 0] > 190 and means[0, 2] < 10  # chapter one alone
    assert means[-1, 2] > 190 and means[-1, 0] < 10  # chapter two alone
    assert 60 < means[12, 0] < 140 and 60 < means[12, 2] < 140  # halfway through the fade


def test_read_clip_round_trip_is_exact(tmp_path):
    write_clip(synthetic_clip(2), tmp_path / "c.mkv")
    assert torch.equal(read_clip(tmp_path / "c.mkv"), synthetic_clip(2))

"""ERFT data: dataset index, clip sampling and the latent cache, on small synthetic videos.

Every frame encodes where it came from: red = 3·x, green = 3·y (native pixel position), blue = 10·i + 5 (native
frame index). Lossless MKV files let the clips be checked bit-exactly against crops made here with PIL; the MP4
files (H.264, what MixKit ships) are checked through the blue channel's mean. Targets are 9 frames at 32×48, the
same code path as 81 at 480×832.
"""

import csv
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.assemble import write_film
from svi_model.conditioning import condition_video, unit_range
from svi_model.erft.dataset import (
    ClipDataset,
    ClipSettings,
    DatasetError,
    VideoItem,
    draw_clip_plan,
    draw_crop,
    read_video_index,
    sample_training_clip,
)
from svi_model.erft.latent_cache import LatentCacheDataset, build_latent_cache
from svi_model.video_files import VideoReadError, write_clip

SMALL = dict(num_frames=9, height=32, width=48)
TINY_FILM = ClipSettings.for_mode("film", **SMALL)
TINY_SHOT = ClipSettings.for_mode("shot", **SMALL)
MIXKIT_HEADER = ["Video Title", "Video Description", "Video URL", "Download URL", "Filename"]


def synthetic_frames(count: int, height: int = 48, width: int = 80) -> np.ndarray:
    """uint8 [count, height, width, 3] with red = 3x, green = 3y, blue = 10i + 5."""
    frames = np.zeros((count, height, width, 3), np.uint8)
    frames[..., 0] = 3 * np.arange(width)[None, None, :]
    frames[..., 1] = 3 * np.arange(height)[None, :, None]
    frames[..., 2] = (10 * np.arange(count) + 5)[:, None, None]
    return frames


def write_video(path: Path, frames: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (write_clip if path.suffix == ".mkv" else lambda f, p: write_film([f], p))(torch.from_numpy(frames), path)
    return path


def frame_numbers(clip: torch.Tensor) -> list[int]:
    """The native frame index each clip frame shows (read from its blue channel; robust to H.264)."""
    return [round((float(frame[..., 2].float().mean()) - 5) / 10) for frame in clip]


def expected_frame(source: np.ndarray, crop, size=(32, 48)) -> np.ndarray:
    """A native frame cropped and resized as the authors do: PIL crop, then PIL bilinear resize."""
    return np.array(Image.fromarray(source).crop(crop).resize(size[::-1], Image.Resampling.BILINEAR))


def write_mixkit_csv(path: Path, rows: list[tuple[str, str]], header=MIXKIT_HEADER) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for filename, description in rows:
            title = filename.rsplit(".", 1)[0]
            url = f"https://mixkit.co/free-stock-video/{title}/"
            writer.writerow([title, description, url, f"https://assets.mixkit.co/videos/download/{filename}", filename])


@pytest.fixture(scope="module")
def mixkit_root(tmp_path_factory) -> Path:
    """Two categories in the authors' layout: Cats (H.264 MP4) and Waves (lossless MKV)."""
    root = tmp_path_factory.mktemp("mixkit")
    write_video(root / "Cats" / "cat-on-sofa.mp4", synthetic_frames(20))
    write_video(root / "Cats" / "cat-in-garden.mp4", synthetic_frames(16))
    write_mixkit_csv(
        root / "Cats" / "Cats.csv",
        [("cat-on-sofa.mp4", 'A white cat sits on a sofa, "blue-eyed".'), ("cat-in-garden.mp4", "A cat in a garden.")],
    )
    write_video(root / "Waves" / "waves-at-dusk.mkv", synthetic_frames(20))
    write_video(root / "Waves" / "short-wave.mkv", synthetic_frames(14))
    write_mixkit_csv(
        root / "Waves" / "Waves.csv", [("short-wave.mkv", "A short wave."), ("waves-at-dusk.mkv", "Waves at dusk.")]
    )
    return root


@pytest.fixture(scope="module")
def plain_root(tmp_path_factory) -> Path:
    """A metadata.csv dataset: a landscape, a portrait and a too-short video, all lossless."""
    root = tmp_path_factory.mktemp("plain")
    write_video(root / "clips" / "landscape.mkv", synthetic_frames(20))
    write_video(root / "clips" / "portrait.mkv", synthetic_frames(18, height=80, width=48))
    write_video(root / "clips" / "short.mkv", synthetic_frames(6))
    (root / "metadata.csv").write_text(
        "video,caption\nclips/landscape.mkv,A wide view.\nclips/portrait.mkv,A tall view.\nclips/short.mkv,Brief.\n"
    )
    return root


@pytest.fixture(scope="module")
def bad_video(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bad") / "corrupt.mp4"
    path.write_bytes(b"this is not a video" * 50)
    return path


def item(root: Path, relative: str) -> VideoItem:
    return VideoItem(root / relative, f"caption of {relative}", "test")


# ---- the index ------------------------------------------------------------------------------------------------------


def test_mixkit_index_reads_captions_and_categories(mixkit_root):
    items = read_video_index(mixkit_root)
    assert [(i.path.relative_to(mixkit_root).as_posix(), i.caption, i.category) for i in items] == [
        ("Cats/cat-in-garden.mp4", "A cat in a garden.", "Cats"),
        ("Cats/cat-on-sofa.mp4", 'A white cat sits on a sofa, "blue-eyed".', "Cats"),
        ("Waves/short-wave.mkv", "A short wave.", "Waves"),
        ("Waves/waves-at-dusk.mkv", "Waves at dusk.", "Waves"),
    ]


def test_plain_index_reads_paths_relative_to_the_csv(plain_root):
    items = read_video_index(plain_root)
    assert [(i.path, i.caption) for i in items] == [
        (plain_root / "clips" / "landscape.mkv", "A wide view."),
        (plain_root / "clips" / "portrait.mkv", "A tall view."),
        (plain_root / "clips" / "short.mkv", "Brief."),
    ]


def test_csv_without_the_columns_names_the_missing_ones(tmp_path):
    write_video(tmp_path / "mix" / "Dogs" / "dog.mkv", synthetic_frames(3))
    write_mixkit_csv(tmp_path / "mix" / "Dogs" / "Dogs.csv", [("dog.mkv", "A dog.")], header=["Title", "Text", "File"])
    with pytest.raises(DatasetError, match=r"Dogs\.csv lacks the column\(s\) Filename, Video Description"):
        read_video_index(tmp_path / "mix")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "metadata.csv").write_text("video,text\nx.mkv,hello\n")
    with pytest.raises(DatasetError, match=r"metadata\.csv lacks the column\(s\) caption"):
        read_video_index(tmp_path / "plain")


@pytest.fixture
def uncaptioned_root(tmp_path) -> Path:
    """One category: a captioned video, one whose description is empty, one the CSV does not list."""
    folder = tmp_path / "Birds"
    for name in ("gull.mkv", "owl.mkv", "crow.mkv"):
        write_video(folder / name, synthetic_frames(3))
    write_mixkit_csv(folder / "Birds.csv", [("gull.mkv", "A gull."), ("owl.mkv", "")])
    return tmp_path


def test_missing_caption_fails_by_default_naming_csv_and_row(uncaptioned_root):
    with pytest.raises(DatasetError, match=r"crow\.mkv has no caption: Birds\.csv does not list it"):
        read_video_index(uncaptioned_root)
    (uncaptioned_root / "Birds" / "crow.mkv").unlink()
    with pytest.raises(DatasetError, match=r"Birds\.csv line 3 \(owl\.mkv\) has an empty Video Description"):
        read_video_index(uncaptioned_root)


def test_missing_caption_skip_or_category_fallback(uncaptioned_root, caplog):
    with caplog.at_level(logging.WARNING, logger="svi_model.erft.dataset"):
        items = read_video_index(uncaptioned_root, missing_caption="skip")
    assert [i.path.name for i in items] == ["gull.mkv"]
    assert "owl.mkv" in caplog.text and "crow.mkv" in caplog.text
    items = read_video_index(uncaptioned_root, missing_caption="category")
    assert {i.path.name: i.caption for i in items} == {
        "crow.mkv": "A video from Birds category",
        "gull.mkv": "A gull.",
        "owl.mkv": "A video from Birds category",
    }


def test_listed_video_that_does_not_exist(tmp_path):
    write_video(tmp_path / "Fish" / "carp.mkv", synthetic_frames(3))
    write_mixkit_csv(tmp_path / "Fish" / "Fish.csv", [("carp.mkv", "A carp."), ("pike.mp4", "A pike.")])
    with pytest.raises(DatasetError, match=r"Fish\.csv line 3: video file 'pike\.mp4' does not exist"):
        read_video_index(tmp_path)
    (tmp_path / "Fish" / "Fish.csv").unlink()
    (tmp_path / "metadata.csv").write_text("video,caption\nFish/carp.mkv,A carp.\nFish/pike.mp4,A pike.\n")
    with pytest.raises(DatasetError, match=r"metadata\.csv line 3: video file 'Fish/pike\.mp4' does not exist"):
        read_video_index(tmp_path)


def test_empty_dataset_is_an_error(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        read_video_index(tmp_path / "nowhere")
    with pytest.raises(DatasetError, match="no videos found"):
        read_video_index(tmp_path)
    (tmp_path / "Empty").mkdir()
    (tmp_path / "Empty" / "notes.txt").write_text("no videos here")
    with pytest.raises(DatasetError, match="no videos found"):
        read_video_index(tmp_path)


# ---- clips ----------------------------------------------------------------------------------------------------------


def test_clip_settings_are_the_inference_modes():
    assert ClipSettings.for_mode("film") == ClipSettings()
    shot = ClipSettings.for_mode("shot", num_frames=33)
    assert (shot.motion_frames, shot.padding, shot.num_frames) == (1, "reference", 33)
    with pytest.raises(ValueError, match="no training clips for mode 'pro'.*shot, film, tom"):
        ClipSettings.for_mode("pro")


@pytest.mark.parametrize("name, height, width", [("landscape", 48, 80), ("portrait", 80, 48)])
def test_clip_is_consecutive_frames_with_one_crop(plain_root, name, height, width):
    source = synthetic_frames(20 if name == "landscape" else 18, height, width)
    # L is the side that limits a 32:48 crop: the height of the wide frame, the width of the tall one.
    limit = height if name == "landscape" else width
    for seed in range(6):
        sample = sample_training_clip(
            item(plain_root, f"clips/{name}.mkv"), TINY_FILM, torch.Generator().manual_seed(seed)
        )
        plan = sample.plan
        assert sample.frames.shape == (9, 32, 48, 3) and sample.frames.dtype == torch.uint8
        assert plan.frame_indices == list(range(plan.start, plan.start + 9))
        assert frame_numbers(sample.frames) == plan.frame_indices
        left, top, right, bottom = plan.crop
        assert 0 <= left < right <= width and 0 <= top < bottom <= height
        side = bottom - top if name == "landscape" else right - left
        assert limit - limit // 14 <= side <= limit
        for frame, native in zip(sample.frames.numpy(), plan.frame_indices, strict=True):
            np.testing.assert_array_equal(frame, expected_frame(source[native], plan.crop))


def test_crop_draws_span_the_allowed_sides_and_positions():
    generator = torch.Generator().manual_seed(0)
    wide = [draw_crop(1080, 1920, 480, 832, generator) for _ in range(400)]
    heights = {bottom - top for _, top, _, bottom in wide}
    assert heights == set(range(1080 - 1080 // 14, 1081))
    for left, top, right, bottom in wide:
        assert right - left == (bottom - top) * 832 // 480 and right <= 1920 and bottom <= 1080
    assert {left for left, *_ in wide} > {0} and max(left for left, *_ in wide) > 100
    tall = [draw_crop(1920, 1080, 480, 832, generator) for _ in range(400)]
    widths = {right - left for left, _, right, _ in tall}
    assert widths == set(range(1080 - 1080 // 14, 1081))
    assert all(bottom - top == (right - left) * 480 // 832 for left, top, right, bottom in tall)
    # A frame at exactly the target aspect keeps its full size as the largest crop.
    exact = [draw_crop(480, 832, 480, 832, generator) for _ in range(200)]
    assert max(right - left for left, _, right, _ in exact) == 832


def test_mp4_clips_are_consecutive(mixkit_root):
    sample = sample_training_clip(item(mixkit_root, "Cats/cat-on-sofa.mp4"), TINY_FILM, torch.Generator())
    assert frame_numbers(sample.frames) == list(range(sample.plan.start, sample.plan.start + 9))


def test_samples_are_reproducible(plain_root):
    video = item(plain_root, "clips/landscape.mkv")
    first = sample_training_clip(video, TINY_SHOT, torch.Generator().manual_seed(3))
    again = sample_training_clip(video, TINY_SHOT, torch.Generator().manual_seed(3))
    assert first.plan == again.plan
    assert torch.equal(first.frames, again.frames) and torch.equal(first.condition, again.condition)
    plans = {sample_training_clip(video, TINY_SHOT, torch.Generator().manual_seed(s)).plan for s in range(6)}
    assert len(plans) > 1
    dataset = ClipDataset([video], TINY_SHOT, seed=5)
    assert dataset[0].plan == dataset[0].plan
    epoch_plans = set()
    for epoch in range(6):
        dataset.set_epoch(epoch)
        epoch_plans.add(dataset[0].plan)
    assert len(epoch_plans) > 1


def test_film_uses_five_motion_frames_with_probability_0_9():
    generator = torch.Generator().manual_seed(0)
    plans = [draw_clip_plan(200, 48, 80, TINY_FILM, generator) for _ in range(4000)]
    share = sum(plan.motion_count == 5 for plan in plans) / len(plans)
    assert abs(share - 0.9) < 0.02
    assert {plan.motion_count for plan in plans} == {1, 5} and all(plan.anchor_index is None for plan in plans)
    paper = replace(TINY_FILM, motion_probability=0.95)
    share = sum(draw_clip_plan(200, 48, 80, paper, generator).motion_count == 5 for _ in range(4000)) / 4000
    assert abs(share - 0.95) < 0.02
    assert {draw_clip_plan(200, 48, 80, TINY_SHOT, generator).motion_count for _ in range(200)} == {1}


def test_clip_start_is_uniform_over_the_authors_range():
    generator = torch.Generator().manual_seed(1)
    starts = [draw_clip_plan(20, 48, 80, TINY_FILM, generator).start for _ in range(1000)]
    # 20 frames, 9 per clip, 5 kept spare at the end: starts 0..6, each about 1/7 of the time.
    assert set(starts) == set(range(7))
    assert max(starts.count(s) for s in range(7)) < 1.4 * min(starts.count(s) for s in range(7))


def test_shot_anchor_inside_or_outside_the_clip():
    generator = torch.Generator().manual_seed(2)
    for _ in range(300):
        plan = draw_clip_plan(20, 48, 80, TINY_SHOT, generator)
        assert plan.anchor_index in plan.frame_indices
    outside = replace(TINY_SHOT, padding_anchor="outside")
    before = after = 0
    for _ in range(300):
        plan = draw_clip_plan(20, 48, 80, outside, generator)
        assert 0 <= plan.anchor_index < 20 and not plan.start <= plan.anchor_index < plan.start + 9
        before += plan.anchor_index < plan.start
        after += plan.anchor_index >= plan.start + 9
    assert before > 0 and after > 0


def test_outside_anchor_falls_back_inside_when_the_video_is_one_clip_long(caplog):
    outside = replace(TINY_SHOT, padding_anchor="outside")
    with caplog.at_level(logging.WARNING, logger="svi_model.erft.dataset"):
        plan = draw_clip_plan(9, 48, 80, outside, torch.Generator())
    assert plan.anchor_index in plan.frame_indices and "anchoring inside" in caplog.text


@pytest.mark.parametrize("probability, motion", [(1.0, 5), (0.0, 1)])
def test_film_condition_is_condition_video_of_the_motion_frames(plain_root, probability, motion):
    settings = replace(TINY_FILM, motion_probability=probability)
    sample = sample_training_clip(item(plain_root, "clips/landscape.mkv"), settings, torch.Generator())
    assert sample.plan.motion_count == motion
    assert torch.equal(sample.condition, condition_video(sample.frames[:motion], 9, "zeros"))
    assert torch.equal(sample.image_encoder_frame, sample.frames[0])


@pytest.mark.parametrize("anchor", ["inside", "outside"])
def test_shot_condition_pads_with_the_anchor_frame(plain_root, anchor):
    source = synthetic_frames(20)
    settings = replace(TINY_SHOT, padding_anchor=anchor)
    for seed in range(4):
        sample = sample_training_clip(
            item(plain_root, "clips/landscape.mkv"), settings, torch.Generator().manual_seed(seed)
        )
        plan = sample.plan
        reference = torch.from_numpy(expected_frame(source[plan.anchor_index], plan.crop))
        assert torch.equal(sample.condition, condition_video(sample.frames[:1], 9, "reference", reference))
        assert (plan.anchor_index in plan.frame_indices) == (anchor == "inside")


def test_short_video_repeats_its_last_frame(plain_root):
    sample = sample_training_clip(item(plain_root, "clips/short.mkv"), TINY_FILM, torch.Generator())
    assert sample.plan.start == 0 and sample.plan.repeated == 3
    assert frame_numbers(sample.frames) == [0, 1, 2, 3, 4, 5, 5, 5, 5]


def test_unreadable_video_is_replaced_by_another(plain_root, bad_video, caplog):
    with pytest.raises(VideoReadError, match=f"cannot read video {bad_video}"):
        sample_training_clip(VideoItem(bad_video, "x", "bad"), TINY_FILM, torch.Generator())
    dataset = ClipDataset([VideoItem(bad_video, "x", "bad"), item(plain_root, "clips/landscape.mkv")], TINY_FILM)
    with caplog.at_level(logging.WARNING, logger="svi_model.erft.dataset"):
        sample = dataset[0]
    assert sample.source.name == "landscape.mkv" and "corrupt.mp4" in caplog.text
    with pytest.raises(DatasetError, match="3 videos in a row could not be read"):
        ClipDataset([VideoItem(bad_video, "x", "bad")], TINY_FILM, max_attempts=3)[0]


# ---- the latent cache -----------------------------------------------------------------------------------------------


def test_latent_cache_round_trip_and_resume(sampler, plain_root, bad_video, tmp_path):
    items = read_video_index(plain_root)[:2] + [VideoItem(bad_video, "broken", "bad")]
    build = build_latent_cache(items, sampler, tmp_path, TINY_SHOT, samples_per_video=2, seed=11, progress=False)
    assert (build.written, build.reused) == (4, 0)
    assert [s["source"] for s in build.skipped] == [str(bad_video)]

    cache = LatentCacheDataset(tmp_path)
    assert len(cache) == 4 and cache.settings == TINY_SHOT
    by_source = {}
    for encoded in cache:
        info = encoded.info
        by_source.setdefault(info["source"], []).append(info["start"])
        video = next(i for i in items if str(i.path) == info["source"])
        sample = sample_training_clip(video, TINY_SHOT, torch.Generator().manual_seed(info["seed"]))
        assert info["crop"] == list(sample.plan.crop) and info["anchor_index"] == sample.plan.anchor_index
        assert encoded.caption == video.caption
        assert encoded.latents.shape == (16, 3, 4, 6) and encoded.latents.dtype == torch.float32
        assert torch.equal(encoded.latents, sampler.encode(unit_range(sample.frames)))
        assert torch.equal(encoded.condition_latents, sampler.encode(sample.condition))
        text = sampler.text_embeddings(video.caption)[0]
        assert encoded.text_embeddings.shape == text.shape == (512, 32)
        assert torch.equal(encoded.text_embeddings, text.to(torch.bfloat16))
        clip_tokens = sampler.image_embeddings(sample.frames[0])[0]
        assert torch.equal(encoded.clip_tokens, clip_tokens.to(torch.bfloat16))
    assert len(by_source) == 2

    files = sorted((tmp_path / "samples").iterdir())
    stamps = [f.stat().st_mtime_ns for f in files]
    again = build_latent_cache(items, sampler, tmp_path, TINY_SHOT, samples_per_video=2, seed=11, progress=False)
    assert (again.written, again.reused) == (0, 4)
    assert [f.stat().st_mtime_ns for f in sorted((tmp_path / "samples").iterdir())] == stamps
    more = build_latent_cache(items, sampler, tmp_path, TINY_SHOT, samples_per_video=3, seed=11, progress=False)
    assert (more.written, more.reused) == (2, 4) and len(LatentCacheDataset(tmp_path)) == 6
    with pytest.raises(DatasetError, match="use another folder"):
        build_latent_cache(items, sampler, tmp_path, TINY_FILM, seed=11, progress=False)

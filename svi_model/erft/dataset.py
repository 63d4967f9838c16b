"""Training clips for Error-Recycling Fine-Tuning: the dataset index and clip sampling (decoding: `video_files`).

Two dataset layouts are read (`read_video_index` tells them apart):
* MixKit, the authors' layout: `root/<category>/<category>.csv` with the columns
  `Video Title, Video Description, Video URL, Download URL, Filename`, the videos beside it; caption = description.
* plain: `root/metadata.csv` with the columns `video, caption` (video paths relative to the CSV).

A training clip follows the authors' `train_svi.py`: `num_frames` consecutive native frames from a uniform random
start, one random crop at the target aspect for the whole clip (its limiting side drawn from [L − L//14, L]), each
frame resized to height × width with PIL's bilinear filter (what torchvision's resize of a PIL image runs), and the
condition video built by `condition_video`, the function inference uses. All randomness comes from a
`torch.Generator`, so a sample is reproducible from its seed.

Raw mode: `ClipDataset` yields a fresh `TrainingSample` per access, to be encoded on the fly with
`latent_cache.encode_sample`. Cached mode: `latent_cache.build_latent_cache` once, then `LatentCacheDataset`.
"""

import csv
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ..conditioning import Padding, condition_video
from ..modes import MODES
from ..seeds import derived_seed
from ..video_files import VideoReadError, probe_video, read_frames

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv")  # what the authors' loader picks up
MIXKIT_COLUMNS = ("Filename", "Video Description")  # the two of the five MixKit columns that are used
PLAIN_INDEX = "metadata.csv"
PLAIN_COLUMNS = ("video", "caption")
# The crop's limiting side is drawn from [L − L//14, L]: a mild zoom jitter, never a change of aspect.
CROP_JITTER = 14
# Container frame counts can exceed what decodes; the authors keep the clip this many frames off the end.
END_MARGIN = 5

MissingCaption = Literal["error", "skip", "category"]
# Training clips are conditioned on decoded frames, so they exist for the modes that chain pixels.
PIXEL_CHAINED_MODES = tuple(name for name, fields in MODES.items() if fields["chaining"] == "pixels")


class DatasetError(ValueError):
    """A dataset folder, index file or row is unusable; the message names the file (and row) and what to fix."""


@dataclass(frozen=True)
class VideoItem:
    """One training video: its file, its caption, and its category (the MixKit folder; the root's name if plain)."""

    path: Path
    caption: str
    category: str


# ---- the index ------------------------------------------------------------------------------------------------------


def read_video_index(root: str | Path, missing_caption: MissingCaption = "error") -> list[VideoItem]:
    """Every video of the dataset at `root`: MixKit sorted by category then file name; plain in the CSV's order.

    `missing_caption` decides what a video without a caption becomes (an empty description, a video no CSV row
    lists, a category folder without its CSV): "error" raises DatasetError naming the CSV and row; "skip" leaves
    the video out with a logged warning; "category" gives it the authors' fallback caption
    "A video from <category> category" (their loader does this silently).
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist or is not a folder")
    if (root / PLAIN_INDEX).is_file():
        items = _plain_index(root / PLAIN_INDEX, missing_caption)
    else:
        items = _mixkit_index(root, missing_caption)
    if not items:
        raise DatasetError(
            f"no videos found under {root}. Expected either {PLAIN_INDEX} (columns {', '.join(PLAIN_COLUMNS)}) or "
            f"one folder per category holding <category>.csv (columns {', '.join(MIXKIT_COLUMNS)}) and the videos "
            f"({', '.join(VIDEO_EXTENSIONS)})"
        )
    return items


def _csv_rows(path: Path, required: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) of every data row; DatasetError if a required column is absent."""
    # utf-8-sig: spreadsheet exports start with a byte-order mark that would otherwise stick to the first column.
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = [column for column in required if column not in (reader.fieldnames or [])]
        if missing:
            raise DatasetError(
                f"{path} lacks the column(s) {', '.join(missing)} (it has: {', '.join(reader.fieldnames or [])}); "
                f"the header must name {', '.join(required)}"
            )
        return [(reader.line_num, row) for row in reader]


def _captioned(path: Path, caption: str, category: str, problem: str, policy: MissingCaption) -> VideoItem | None:
    """The item of a video, its missing caption (`problem` says where it should be) handled by `policy`."""
    if caption:
        return VideoItem(path, caption, category)
    if policy == "error":
        raise DatasetError(f"{problem}: give every video a caption (or pass missing_caption='skip' or 'category')")
    if policy == "skip":
        log.warning("skipping %s: %s", path, problem)
        return None
    if policy == "category":
        return VideoItem(path, f"A video from {category} category", category)
    raise ValueError(f"missing_caption must be 'error', 'skip' or 'category', not {policy!r}")


def _plain_index(index: Path, policy: MissingCaption) -> list[VideoItem]:
    items = []
    for line, row in _csv_rows(index, PLAIN_COLUMNS):
        video = (row["video"] or "").strip()
        path = index.parent / video
        if not video or not path.is_file():
            raise DatasetError(f"{index} line {line}: video file {video!r} does not exist in {index.parent}")
        problem = f"{index} line {line} ({video}) has an empty caption"
        items.append(_captioned(path, (row["caption"] or "").strip(), index.parent.name, problem, policy))
    return [item for item in items if item is not None]


def _mixkit_index(root: Path, policy: MissingCaption) -> list[VideoItem]:
    items = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        table = folder / f"{folder.name}.csv"
        captions: dict[str, tuple[str, str]] = {}  # file name → (caption, where an empty one is)
        for line, row in _csv_rows(table, MIXKIT_COLUMNS) if table.is_file() else []:
            name = (row["Filename"] or "").strip()
            if not name or not (folder / name).is_file():
                raise DatasetError(f"{table} line {line}: video file {name!r} does not exist in {folder}")
            where = f"{table} line {line} ({name}) has an empty Video Description"
            captions[name] = ((row["Video Description"] or "").strip(), where)
        for path in sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS):
            unlisted = f"video {path} has no caption: " + (
                f"{table.name} does not list it" if table.is_file() else f"there is no {table.name} beside it"
            )
            caption, problem = captions.get(path.name, ("", unlisted))
            items.append(_captioned(path, caption, folder.name, problem, policy))
    return [item for item in items if item is not None]


# ---- what a clip is, and its random draws ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ClipSettings:
    """How training clips are cut and conditioned. Defaults: SVI-Film as released (Wan's 81 frames at 480×832);
    `for_mode` gives another mode's.

    motion_frames: m when motion frames are used (the mode's: Film 5, Shot 1); with m > 1 a clip uses m motion
        frames with `motion_probability` (released 0.9, the paper's Table 9 says 0.95) and the first frame alone
        otherwise.
    padding: the mode's, "zeros" (Film, Tom) or "reference" (Shot, Talk, Dance: every padding frame is one anchor
        frame).
    padding_anchor: the reference padding frame is a random frame "inside" the clip (the authors' code, the
        released Shot LoRA) or "outside" it (their later advice: an anchor the clip cannot simply copy).
    """

    num_frames: int = 81
    height: int = 480
    width: int = 832
    motion_frames: int = MODES["film"]["motion_frames"]
    motion_probability: float = 0.9
    padding: Padding = MODES["film"]["padding"]
    padding_anchor: Literal["inside", "outside"] = "inside"

    def __post_init__(self):
        if self.num_frames % 4 != 1:
            raise ValueError(f"num_frames must be 4k+1 (Wan's VAE packs 1 + 4k frames), got {self.num_frames}")
        if self.height % 16 or self.width % 16:
            raise ValueError(f"height and width must be multiples of 16, got {self.height}×{self.width}")
        if not 0 < self.motion_frames < self.num_frames:
            raise ValueError(f"motion_frames must be in [1, {self.num_frames - 1}], got {self.motion_frames}")
        if self.padding not in ("zeros", "reference") or self.padding_anchor not in ("inside", "outside"):
            raise ValueError(f"unknown padding {self.padding!r} or padding_anchor {self.padding_anchor!r}")

    @classmethod
    def for_mode(cls, mode: str, **changes) -> "ClipSettings":
        """The clips of an inference mode (`svi_model.modes.MODES`): its motion frames and padding, then `changes`.

        e.g. `ClipSettings.for_mode("shot", num_frames=33)`. ValueError for a mode that chains latents (Pro) or is
        unknown.
        """
        if mode not in PIXEL_CHAINED_MODES:
            raise ValueError(
                f"no training clips for mode {mode!r}: the trainable modes are those that chain pixels, "
                f"{', '.join(PIXEL_CHAINED_MODES)}"
            )
        fields = MODES[mode]
        return cls(**{"motion_frames": fields["motion_frames"], "padding": fields["padding"], **changes})


@dataclass(frozen=True)
class ClipPlan:
    """The random choices behind one clip, in the source's native frame indices and pixels.

    start: native index of clip frame 0. repeated: trailing clip frames that repeat the video's last frame
    because the video is shorter than a clip. crop: (left, top, right, bottom). motion_count: m.
    anchor_index: native index of the reference-padding frame (None with zero padding).
    """

    start: int
    num_frames: int
    repeated: int
    crop: tuple[int, int, int, int]
    motion_count: int
    anchor_index: int | None

    @property
    def frame_indices(self) -> list[int]:
        """Native frame index of each clip frame."""
        last = self.start + self.num_frames - self.repeated - 1
        return [min(self.start + i, last) for i in range(self.num_frames)]


def _randint(generator: torch.Generator, low: int, high: int) -> int:
    """Uniform integer in [low, high], both ends included."""
    return int(torch.randint(low, high + 1, (1,), generator=generator))


def draw_crop(
    height: int, width: int, target_height: int, target_width: int, generator: torch.Generator
) -> tuple[int, int, int, int]:
    """A random crop box (left, top, right, bottom) of a height×width frame at the target aspect.

    L is the side that limits a crop of the target aspect (the width of a frame narrower than the target, else
    the height); that side is drawn from [L − L//14, L], the other follows from the aspect, and the position is
    uniform. Integer arithmetic: the authors' float product can land a pixel short at exactly the target aspect.
    """
    if width * target_height <= height * target_width:
        crop_width = _randint(generator, width - width // CROP_JITTER, width)
        crop_height = crop_width * target_height // target_width
    else:
        crop_height = _randint(generator, height - height // CROP_JITTER, height)
        crop_width = crop_height * target_width // target_height
    left = _randint(generator, 0, width - crop_width)
    top = _randint(generator, 0, height - crop_height)
    return left, top, left + crop_width, top + crop_height


def draw_clip_plan(
    frame_count: int, height: int, width: int, settings: ClipSettings, generator: torch.Generator
) -> ClipPlan:
    """Draw start, crop, m and anchor for a video of `frame_count` native frames of height×width.

    A video shorter than a clip is not skipped (as in the authors' loader): the clip takes all its frames and
    repeats the last one. Draw order: start, crop, m (only when motion_frames > 1), anchor (reference padding).
    """
    count = settings.num_frames
    if frame_count >= count:
        start, repeated = _randint(generator, 0, max(0, frame_count - count - END_MARGIN)), 0
    else:
        start, repeated = 0, count - frame_count
    crop = draw_crop(height, width, settings.height, settings.width, generator)
    many = settings.motion_frames > 1 and float(torch.rand((), generator=generator)) < settings.motion_probability
    motion = settings.motion_frames if many else 1
    plan = ClipPlan(start, count, repeated, crop, motion, None)
    if settings.padding == "zeros":
        return plan
    outside = start + max(0, frame_count - start - count)  # native frames before and after the clip
    if settings.padding_anchor == "outside" and outside == 0:
        log.warning("a %d-frame video has no frame outside a %d-frame clip: anchoring inside", frame_count, count)
    if settings.padding_anchor == "outside" and outside > 0:
        pick = _randint(generator, 0, outside - 1)
        anchor = pick if pick < start else pick + count
    else:
        anchor = plan.frame_indices[_randint(generator, 0, count - 1)]
    return ClipPlan(start, count, repeated, crop, motion, anchor)


# ---- one training sample --------------------------------------------------------------------------------------------


@dataclass
class TrainingSample:
    """One clip, ready for the frozen encoders.

    frames: uint8 `[F, H, W, 3]`. condition: float32 `[3, F, H, W]` in [-1, 1], `condition_video` of the first
    m frames (and the anchor frame with reference padding).
    image_encoder_frame: uint8 `[H, W, 3]`, the frame whose CLIP image-encoder tokens the clip sees: the first
    motion frame, as at test time.
    """

    frames: torch.Tensor
    caption: str
    condition: torch.Tensor
    image_encoder_frame: torch.Tensor
    plan: ClipPlan
    source: Path


def sample_training_clip(item: VideoItem, settings: ClipSettings, generator: torch.Generator) -> TrainingSample:
    """Cut, crop and condition one random clip of `item`.

    Raises VideoReadError if the video cannot be read. It stays a plain ValueError, not a DatasetError: it is about
    one video file, not the dataset, and both callers (`ClipDataset`, `build_latent_cache`) catch it to skip that
    video; what they raise when no video is left is a DatasetError.
    """
    info = probe_video(item.path)
    plan = draw_clip_plan(info.frame_count, info.height, info.width, settings, generator)
    wanted = set(plan.frame_indices) | ({plan.anchor_index} if plan.anchor_index is not None else set())
    decoded = read_frames(item.path, wanted, info, plan.crop, (settings.height, settings.width))
    frames = torch.from_numpy(np.stack([decoded[i] for i in plan.frame_indices]))
    anchor = torch.from_numpy(decoded[plan.anchor_index]) if plan.anchor_index is not None else None
    condition = condition_video(frames[: plan.motion_count], settings.num_frames, settings.padding, anchor)
    return TrainingSample(frames, item.caption, condition, frames[0].clone(), plan, item.path)


class ClipDataset(torch.utils.data.Dataset):
    """Raw mode: item `index` is a fresh random clip of video `index`, reproducible from (seed, epoch, index).

    Call `set_epoch` each epoch (with non-persistent DataLoader workers) to draw new clips, as the authors' loader
    does on every access. A video that cannot be read is replaced by another random one with a logged warning
    (the authors' behaviour); after `max_attempts` failures in a row DatasetError is raised. Items are
    `TrainingSample`s: use `DataLoader(..., batch_size=None)` (batch 1, as trained).
    """

    def __init__(
        self, items: list[VideoItem], settings: ClipSettings = ClipSettings(), seed: int = 0, max_attempts: int = 10
    ):
        if not items:
            raise DatasetError("ClipDataset needs at least one video")
        self.items, self.settings, self.seed, self.max_attempts = list(items), settings, seed, max_attempts
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> TrainingSample:
        generator = torch.Generator().manual_seed(derived_seed(self.seed, self.epoch, index))
        failures = []
        for _ in range(self.max_attempts):
            try:
                return sample_training_clip(self.items[index], self.settings, generator)
            except VideoReadError as error:
                log.warning("%s; using another random video instead", error)
                failures.append(str(error))
                index = _randint(generator, 0, len(self.items) - 1)
        raise DatasetError(f"{self.max_attempts} videos in a row could not be read; the last: {failures[-1]}")

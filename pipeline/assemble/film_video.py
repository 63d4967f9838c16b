"""The film's video: the stored lossless clips (`svi_model.video_files`) cut by the stitching rule and encoded as
H.264 through the ffmpeg that moviepy ships; chapters joined with a crossfade.

The film is written by moviepy from a frame function that reads the stored clips
one at a time, so a 50-clip film never has to fit in memory.
"""

import bisect
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from moviepy import VideoClip, VideoFileClip, concatenate_videoclips, vfx

from svi_model.atomic_files import atomic_path
from svi_model.modes import FilmSettings
from svi_model.video_files import ffmpeg_writing, probe_video, read_clip


@dataclass(frozen=True)
class StoredFrames:
    """The frames `kept` of the stored clip at `path` (which holds `clip_frames` frames), read when needed."""

    path: Path
    clip_frames: int
    kept: range

    def __len__(self) -> int:
        return len(self.kept)

    def load(self) -> np.ndarray:
        """The kept frames, uint8 `[len(kept), H, W, 3]`."""
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path} is missing: render the clip again (`svi film` with the same run)")
        frames = read_clip(self.path)
        if len(frames) != self.clip_frames:
            raise ValueError(
                f"{self.path} holds {len(frames)} frames where the request makes {self.clip_frames}: it was made "
                "with other settings; render it again with this request"
            )
        return frames[self.kept.start : self.kept.stop].numpy()


FilmPart = torch.Tensor | StoredFrames
"""A run of film frames: uint8 `[n, H, W, 3]` in memory, or a stored clip's kept frames."""


def stitched_clips(settings: FilmSettings, clips: Sequence[Path]) -> list[StoredFrames]:
    """The film made of the stored clips `clips` (in order), each cut by the settings' stitching rule."""
    return [
        StoredFrames(
            Path(path), settings.num_frames, range(*settings.kept_frames(k, len(clips)).indices(settings.num_frames))
        )
        for k, path in enumerate(clips)
    ]


class FilmFrames:
    """The film's frames by index, read from its parts only when asked for; one part is held at a time, so reading
    in order loads each stored clip once. `spans[k]` are the film frames part k fills."""

    def __init__(self, parts: Sequence[FilmPart]):
        if not parts:
            raise ValueError("a film needs at least one clip")
        self.parts = list(parts)
        self.spans: list[range] = []
        for part in self.parts:
            start = self.spans[-1].stop if self.spans else 0
            self.spans.append(range(start, start + len(part)))
        self._ends = [span.stop for span in self.spans]
        self._held: tuple[int, np.ndarray] | None = None
        self._size: tuple[int, int] | None = None

    def __len__(self) -> int:
        return self._ends[-1]

    def part_frames(self, k: int) -> np.ndarray:
        """Part `k`'s frames, uint8 `[n, H, W, 3]`."""
        if self._held is None or self._held[0] != k:
            part = self.parts[k]
            frames = part.numpy() if isinstance(part, torch.Tensor) else part.load()
            size = frames.shape[1:3]
            if self._size is not None and size != self._size:
                name = part.path if isinstance(part, StoredFrames) else f"film part {k}"
                raise ValueError(f"{name} is {size[1]}x{size[0]} where the film is {self._size[1]}x{self._size[0]}")
            self._held, self._size = (k, frames), size
        return self._held[1]

    def __getitem__(self, index: int) -> np.ndarray:
        """Film frame `index`, uint8 `[H, W, 3]`."""
        if not 0 <= index < len(self):
            raise IndexError(f"film frame {index} is outside 0..{len(self) - 1}")
        k = bisect.bisect_right(self._ends, index)
        return self.part_frames(k)[index - self.spans[k].start]


def _write_h264(clip: VideoClip, path: str | os.PathLike, fps: float, preset: str, progress: bool, frames: int) -> None:
    """Encode a moviepy clip of `frames` frames as H.264 yuv420p MP4 (CRF 18, no audio), atomically: the file is
    kept only once it holds every frame (`ffmpeg_writing`)."""
    width, height = clip.size
    if width % 2 or height % 2:
        raise ValueError(f"H.264 in yuv420p needs even sides, the film is {width}x{height}")
    with atomic_path(path) as tmp, ffmpeg_writing(tmp, frames, Path(path)):
        clip.write_videofile(
            str(tmp),
            fps=fps,
            codec="libx264",
            preset=preset,
            audio=False,
            # moviepy 2.2 ignores `pixel_format` for libx264 and appends `-pix_fmt yuva420p` (its issue #2539), which
            # libx264 lacks, so ffmpeg falls back to yuv420p (the tests check it); ours states the intent.
            ffmpeg_params=["-crf", "18", "-pix_fmt", "yuv420p"],
            logger="bar" if progress and sys.stderr.isatty() else None,
        )


def write_film(
    parts: Sequence[FilmPart], path: str | os.PathLike, fps: float = 16, preset: str = "medium", progress: bool = True
) -> int:
    """Encode the parts, one after another, as one H.264 yuv420p MP4, atomically. Returns the frame count.

    `progress` shows moviepy's bar when stderr is a terminal. SVI's sizes are multiples of 16, so nothing is cropped.
    """
    frames = FilmFrames(parts)
    # moviepy writes int(duration·fps) frames at t = i/fps: half a frame more keeps float rounding from dropping
    # the last one, and round() maps each t back to its exact index.
    clip = VideoClip(lambda t: frames[round(t * fps)], duration=(len(frames) + 0.5) / fps)
    _write_h264(clip, path, fps, preset, progress, len(frames))
    return len(frames)


def join_chapters(
    films: Sequence[Path], out: Path, crossfade_s: float = 1.0, preset: str = "medium", progress: bool = True
) -> Path:
    """Join chapter films into one, each fading into the next over `crossfade_s` seconds; returns `out`.

    Chapters of different sizes are centred on black in a frame as large as the largest. The result has
    `sum(frames) − (chapters − 1)·round(crossfade_s·fps)` frames at the first chapter's fps. Chapters are decoded
    from H.264, so each is encoded twice.
    """
    if not films:
        raise ValueError("joining chapters needs at least one film")
    chapters = [VideoFileClip(str(film), audio=False) for film in films]
    try:
        shortest = min(chapters, key=lambda chapter: chapter.duration)
        if len(chapters) > 1 and not 0 < crossfade_s < shortest.duration:
            raise ValueError(
                f"the crossfade ({crossfade_s} s) must be positive and shorter than every chapter "
                f"({shortest.filename} lasts {shortest.duration:.2f} s)"
            )
        # Whole frames throughout: each chapter lasts exactly its frames, the overlap is a whole number of frames,
        # and the joined film's length is set to the frame count so float rounding cannot drop its last frame.
        fps = chapters[0].fps
        overlap = round(crossfade_s * fps)
        # Counted from the container: moviepy derives a frame count from a duration rounded to 10 ms.
        counts = [probe_video(film).frame_count for film in films]
        timed = [chapter.with_duration(count / fps) for chapter, count in zip(chapters, counts, strict=True)]
        faded = [timed[0], *(chapter.with_effects([vfx.CrossFadeIn(overlap / fps)]) for chapter in timed[1:])]
        joined = concatenate_videoclips(faded, method="compose", padding=-overlap / fps, bg_color=(0, 0, 0))
        frames = sum(counts) - (len(chapters) - 1) * overlap
        _write_h264(joined.with_duration((frames + 0.5) / fps), out, fps, preset, progress, frames)
    finally:
        for chapter in chapters:
            chapter.close()
    return out

"""Video files: probing and decoding any video (PyAV), and the lossless clip files (FFV1 in Matroska, through
imageio-ffmpeg's ffmpeg).

Clips are stored losslessly because the next clip is conditioned on their exact uint8 bytes and a resumed run must
see what an uninterrupted one saw. Other videos (training sources, finished films) are only read: their header
gives the frame count and size (`probe_video`), and `read_frames` decodes just the frames asked for.
"""

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import av
import imageio_ffmpeg
import numpy as np
import torch
from PIL import Image

from .atomic_files import atomic_path


class VideoReadError(ValueError):
    """A video cannot be opened or decoded, or stops before the frames asked for."""


@dataclass(frozen=True)
class VideoInfo:
    """What a video's container says: native frame count and frame size."""

    frame_count: int
    height: int
    width: int


def _unreadable(path: Path, error: Exception) -> VideoReadError:
    return VideoReadError(f"cannot read video {path} ({type(error).__name__}: {error}); re-download or remove it")


def probe_video(path: Path) -> VideoInfo:
    """Frame count and size from the container, without decoding (MKV keeps no count: its packets are counted)."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoReadError(f"{path} has no video stream")
            stream = container.streams.video[0]
            count = stream.frames or sum(1 for packet in container.demux(stream) if packet.size)
            info = VideoInfo(count, stream.codec_context.height, stream.codec_context.width)
    except (av.FFmpegError, OSError) as error:
        raise _unreadable(path, error) from error
    if info.frame_count == 0 or info.height == 0:
        raise VideoReadError(f"{path} holds no frames")
    return info


def read_frames(
    path: Path, wanted: set[int], info: VideoInfo, crop: tuple[int, int, int, int], size: tuple[int, int]
) -> dict[int, np.ndarray]:
    """Decode the frames `wanted` of `path`, each cropped to `crop` and resized to `size` (height, width).

    Returns {native index: uint8 [height, width, 3]}. Decodes sequentially from the first frame and stops after
    the last wanted one; each wanted frame is cropped and resized as it arrives, so 81 native 4K frames are never
    held at once.
    """
    last, frames = max(wanted), {}
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for index, frame in enumerate(container.decode(stream)):
                if index in wanted:
                    if (frame.height, frame.width) != (info.height, info.width):
                        raise VideoReadError(f"{path} changes size mid-stream at frame {index}")
                    image = Image.fromarray(frame.to_ndarray(format="rgb24")).crop(crop)
                    frames[index] = np.array(image.resize(size[::-1], Image.Resampling.BILINEAR))
                if index >= last:
                    break
    except (av.FFmpegError, OSError) as error:
        raise _unreadable(path, error) from error
    if len(frames) < len(wanted):
        raise VideoReadError(
            f"{path} decodes to fewer frames than its header's {info.frame_count}: frame {min(wanted - set(frames))} "
            "is missing; re-encode the video"
        )
    return frames


class VideoWriteError(OSError):
    """ffmpeg stopped before a video was complete (killed, or it could not write); nothing was kept."""


# Below this much free space, a video that came out short is taken for a full disk (ffmpeg only says "broken pipe").
DISK_FULL_BYTES = 64 * 2**20


def _frames_written(path: Path) -> int:
    try:
        return probe_video(path).frame_count
    except VideoReadError:
        return 0


def _incomplete(written: Path, frames: int, destination: Path, why: str | None) -> OSError:
    """The error for a video at `written` that came out short: ENOSPC naming `destination` when the disk is (nearly)
    full, else a VideoWriteError saying how far ffmpeg got."""
    folder = os.statvfs(written.parent)
    if folder.f_bavail * folder.f_frsize < DISK_FULL_BYTES:
        return OSError(errno.ENOSPC, f"no space left on the disk to write {destination}", str(destination))
    because = f"; {why}" if why else ""
    return VideoWriteError(
        f"ffmpeg stopped before {destination} was complete ({_frames_written(written)} of {frames} frames{because}); "
        "it was not kept: run the same command again"
    )


@contextmanager
def ffmpeg_writing(written: Path, frames: int, destination: Path) -> Iterator[None]:
    """Around ffmpeg writing a video of `frames` frames at `written` (through imageio-ffmpeg or moviepy), to be put
    at `destination`: raise unless the file came out whole. An ffmpeg that is killed, or cannot write its last
    bytes, may exit without its caller raising anything (or with pages of its log), leaving a short file that would
    otherwise be kept as complete. A full disk is raised as OSError ENOSPC naming `destination`; any other shortfall
    as `VideoWriteError`."""
    try:
        yield
    except (VideoWriteError, FileNotFoundError):  # a missing input is not ffmpeg's failure
        raise
    except OSError as error:  # the callers' IOError once ffmpeg is gone: its first line says why
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise _incomplete(written, frames, destination, str(error).splitlines()[0]) from None
    if _frames_written(written) != frames:
        raise _incomplete(written, frames, destination, None)


def write_clip(frames: torch.Tensor, path: str | os.PathLike, fps: float = 16) -> None:
    """Store uint8 frames `[F, H, W, 3]` losslessly (FFV1 .mkv), atomically; raises VideoWriteError (or OSError
    ENOSPC) unless every frame reached the file."""
    height, width = frames.shape[1:3]
    with atomic_path(path) as tmp, ffmpeg_writing(tmp, len(frames), Path(path)):
        writer = imageio_ffmpeg.write_frames(
            str(tmp),
            (width, height),
            fps=fps,
            pix_fmt_in="rgb24",
            macro_block_size=1,
            ffmpeg_log_level="error",
            codec="ffv1",
            pix_fmt_out="bgr0",
        )
        writer.send(None)
        for frame in frames.numpy():
            writer.send(np.ascontiguousarray(frame))
        writer.close()


def read_clip(path: str | os.PathLike) -> torch.Tensor:
    """Read a stored clip back as uint8 `[F, H, W, 3]`, bit-exact."""
    reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
    width, height = next(reader)["size"]
    frames = [np.frombuffer(buffer, np.uint8).reshape(height, width, 3) for buffer in reader]
    return torch.from_numpy(np.stack(frames))

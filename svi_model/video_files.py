"""Video files: probing and decoding any video (PyAV), and the lossless clip files (FFV1 in Matroska, through
imageio-ffmpeg's ffmpeg).

Clips are stored losslessly because the next clip is conditioned on their exact uint8 bytes and a resumed run must
see what an uninterrupted one saw. Other videos (training sources, finished films) are only read: their header
gives the frame count and size (`probe_video`), and `read_frames` decodes just the frames asked for.
"""

import os
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


def write_clip(frames: torch.Tensor, path: str | os.PathLike, fps: float = 16) -> None:
    """Store uint8 frames `[F, H, W, 3]` losslessly (FFV1 .mkv), atomically."""
    height, width = frames.shape[1:3]
    with atomic_path(path) as tmp:
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

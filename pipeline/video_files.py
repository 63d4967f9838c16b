"""Video files: lossless clips (FFV1 in Matroska) and the H.264 film, through the ffmpeg that moviepy ships.

Clips are stored losslessly because the next clip is conditioned on their exact uint8 bytes and a resumed run must
see what an uninterrupted one saw. The film streams frames from the stored clips one clip at a time, so a 50-clip
film never has to fit in memory.
"""

import os
from collections.abc import Iterable

import imageio_ffmpeg
import numpy as np
import torch

from svi_model.atomic_files import atomic_path


def _write_frames(frames: Iterable[np.ndarray], size: tuple[int, int], path, fps: float, codec_args: dict) -> None:
    writer = imageio_ffmpeg.write_frames(
        str(path), size, fps=fps, pix_fmt_in="rgb24", macro_block_size=1, ffmpeg_log_level="error", **codec_args
    )
    writer.send(None)
    for frame in frames:
        writer.send(np.ascontiguousarray(frame))
    writer.close()


def write_clip(frames: torch.Tensor, path: str | os.PathLike, fps: float = 16) -> None:
    """Store uint8 frames `[F, H, W, 3]` losslessly (FFV1 .mkv), atomically."""
    height, width = frames.shape[1:3]
    with atomic_path(path) as tmp:
        _write_frames(frames.numpy(), (width, height), tmp, fps, dict(codec="ffv1", pix_fmt_out="bgr0"))


def read_clip(path: str | os.PathLike) -> torch.Tensor:
    """Read a stored clip back as uint8 `[F, H, W, 3]`, bit-exact."""
    reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
    width, height = next(reader)["size"]
    frames = [np.frombuffer(buffer, np.uint8).reshape(height, width, 3) for buffer in reader]
    return torch.from_numpy(np.stack(frames))


def write_film(
    frame_chunks: Iterable[torch.Tensor], path: str | os.PathLike, fps: float = 16, preset: str = "medium"
) -> int:
    """Encode chunks of uint8 frames `[n, H, W, 3]` as one H.264 yuv420p MP4, atomically. Returns the frame count.

    H.264 with yuv420p needs even sides; SVI's sizes are multiples of 16, so nothing is cropped.
    """
    chunks = iter(frame_chunks)
    first = next(chunks)
    height, width = first.shape[1:3]
    count = 0

    def frames():
        nonlocal count
        for chunk in (first, *chunks):
            for frame in chunk.numpy():
                count += 1
                yield frame

    with atomic_path(path) as tmp:
        _write_frames(
            frames(),
            (width, height),
            tmp,
            fps,
            dict(codec="libx264", pix_fmt_out="yuv420p", output_params=["-preset", preset, "-crf", "18"]),
        )
    return count

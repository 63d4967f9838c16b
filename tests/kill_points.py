"""Run `svi` in a process that SIGKILLs itself at a chosen moment, and log the moments it passed.

The moments are named as they happen, in the order the run reaches them (paths relative to `base`, a temporary
file named as the file it will become):
- `render K`: clip K's render starts (the model is loaded);
- `forward K N`: the DiT's N-th call while clip K renders (a denoising step, mid-render);
- `frame PATH N`: the N-th frame is handed to ffmpeg for the video PATH (mid-write: a partial file exists);
- `rename PATH`: a finished file is about to be renamed to PATH (it is written, not yet in place);
  `renamed PATH` follows once it is.
Each line of the log is `PID MOMENT`. A process is started through `start_run` from a forkserver that imported
torch, diffusers and the CLI once, so a run costs its work, not ~8 s of imports.
"""

import multiprocessing
import os
import re
import signal
from pathlib import Path

import imageio_ffmpeg
from diffusers import WanTransformer3DModel
from moviepy.video.io.ffmpeg_writer import FFMPEG_VideoWriter

import flows.cli
import flows.generate  # noqa: F401  (imported here, once, by the forkserver)
from svi_model.atomic_files import PARTIAL
from svi_model.chain import FilmRenderer


class Moments:
    """Names moments, appends them to a log, and SIGKILLs this process at the `nth` moment matching `kill_at`."""

    def __init__(self, log: Path, base: Path, kill_at: str | None, nth: int):
        self.log, self.base, self.kill_at, self.left = log, base, kill_at and re.compile(kill_at), nth
        self.clip = -1

    def __call__(self, moment: str) -> None:
        with open(self.log, "a", encoding="utf-8") as log:
            log.write(f"{os.getpid()} {moment}\n")
        if self.kill_at and self.kill_at.fullmatch(moment):
            self.left -= 1
            if self.left == 0:
                os.kill(os.getpid(), signal.SIGKILL)

    def name(self, path: str | os.PathLike) -> str:
        """`path` relative to the base, a temporary name (`.NAME.partial-XXXX.SUFFIX`) as the file it becomes."""
        path = Path(os.path.abspath(path))
        if PARTIAL in path.name:
            stem = path.name[1:].split(f".{PARTIAL}")[0]
            path = path.with_name(stem + path.suffix)
        return path.relative_to(self.base).as_posix()


class CountingWriter:
    """imageio-ffmpeg's frame generator, naming each frame sent to it."""

    def __init__(self, writer, name: str, moments: Moments):
        self.writer, self.name, self.moments, self.frames = writer, name, moments, 0

    def send(self, frame):
        if frame is not None:
            self.frames += 1
            self.moments(f"frame {self.name} {self.frames}")
        return self.writer.send(frame)

    def close(self):
        self.writer.close()


def _instrument(moments: Moments) -> None:
    """Name every moment of the run (see the module notes); these patches live only in the killed process."""
    real_replace, real_write_frames = os.replace, imageio_ffmpeg.write_frames
    real_render, real_forward = FilmRenderer.render_clip, WanTransformer3DModel.forward
    real_write_frame = FFMPEG_VideoWriter.write_frame
    forwards = {"count": 0}

    def replace(src, dst, *args, **kwargs):
        if PARTIAL not in Path(src).name:
            return real_replace(src, dst, *args, **kwargs)
        moments(f"rename {moments.name(dst)}")
        real_replace(src, dst, *args, **kwargs)
        moments(f"renamed {moments.name(dst)}")

    def write_frames(path, *args, **kwargs):
        return CountingWriter(real_write_frames(path, *args, **kwargs), moments.name(path), moments)

    def render_clip(self, k, *args, **kwargs):
        moments.clip, forwards["count"] = k, 0
        moments(f"render {k}")
        return real_render(self, k, *args, **kwargs)

    def forward(self, *args, **kwargs):
        forwards["count"] += 1
        moments(f"forward {moments.clip} {forwards['count']}")
        return real_forward(self, *args, **kwargs)

    def write_frame(self, frame):
        self.frames_sent = getattr(self, "frames_sent", 0) + 1
        moments(f"frame {moments.name(self.filename)} {self.frames_sent}")
        return real_write_frame(self, frame)

    os.replace, imageio_ffmpeg.write_frames = replace, write_frames
    FilmRenderer.render_clip, WanTransformer3DModel.forward = render_clip, forward
    FFMPEG_VideoWriter.write_frame = write_frame


def _run(args: list[str], cache: str, log: str, base: str, kill_at: str | None, nth: int) -> None:
    os.environ["SVI_CACHE_DIR"] = cache
    _instrument(Moments(Path(log), Path(base), kill_at, nth))
    raise SystemExit(flows.cli.main(args))


def start_run(
    args: list[str], cache: Path, log: Path, base: Path, kill_at: str | None = None, nth: int = 1
) -> multiprocessing.Process:
    """Start `svi ARGS` (clip store `cache`) in a new process that kills itself at the `nth` moment matching the
    regular expression `kill_at` (never, when None); join it and read its `exitcode` (-9 when it was killed)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    process = context.Process(target=_run, args=(args, str(cache), str(log), str(base), kill_at, nth))
    process.start()
    return process

"""What the machine does to a run: ffmpeg killed while it writes, a disk that fills, the GPU's memory running out, a
clip store on another file system, a run folder that cannot be written. Each ends in one `error:` line (exit 1 for
the machine, 2 for the input), keeps what was finished, and never keeps a short file as a result."""

import errno
import os
import resource
import signal
import struct
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import flows.film  # noqa: F401  (Prefect sets up its log handlers on import: on the real stderr, not a captured one)
from flows.cli import main
from pipeline.assemble.film_video import FilmFrames, write_film
from pipeline.retrieve import load_reference
from pipeline.synthesize import ClipStore
from svi_model import video_files
from svi_model.atomic_files import PARTIAL
from svi_model.chain import FilmRenderer
from svi_model.video_files import VideoWriteError, read_clip, write_clip

SMALL = ["--clips", "1", "--num-frames", "9", "--steps", "2", "--max-width", "128"]


def generate_args(model_dir: Path, picture: Path, out: Path) -> list[str]:
    """`svi generate` of 3 tiny clips from `picture` into `out`."""
    prompts = out.with_name("story.txt")
    prompts.write_text("a red ball rests on the grass\nthe ball rolls away\nthe ball stops\n")
    return ["generate", "--images", str(picture), "--prompts", str(prompts), "--model", str(model_dir),
            "--num-frames", "9", "--steps", "2", "--device", "cpu", "--out", str(out)]  # fmt: skip


def noise_frames(count: int, seed: int = 0) -> torch.Tensor:
    """uint8 `[count, 64, 64, 3]` of noise: nothing compresses it, so every frame costs ffmpeg ~12 KB to write."""
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (count, 64, 64, 3), dtype=np.uint8))


def kill_child_ffmpeg() -> int:
    """SIGKILL every ffmpeg this process started; returns how many."""
    killed = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            pid, rest = stat.read_text().split(" ", 1)
        except OSError:
            continue
        name, fields = rest.rsplit(")", 1)
        if "ffmpeg" in name and int(fields.split()[1]) == os.getpid():
            os.kill(int(pid), signal.SIGKILL)
            killed += 1
    return killed


def leftovers(folder: Path) -> list[Path]:
    return [path for path in folder.rglob("*") if PARTIAL in path.name]


def test_ffmpeg_killed_while_it_writes_the_film_keeps_the_earlier_film(tmp_path, monkeypatch):
    film = tmp_path / "film.mp4"
    film.write_bytes(b"the earlier film")
    real_frame = FilmFrames.__getitem__

    def frame_killing_ffmpeg_at_20(self, index):
        if index == 20:
            assert kill_child_ffmpeg() == 1
        return real_frame(self, index)

    monkeypatch.setattr(FilmFrames, "__getitem__", frame_killing_ffmpeg_at_20)
    with pytest.raises(VideoWriteError, match=f"ffmpeg stopped before {film} was complete"):
        write_film([noise_frames(40)], film, progress=False)
    assert film.read_bytes() == b"the earlier film" and not leftovers(tmp_path)


def test_ffmpeg_killed_while_it_writes_a_clip_keeps_nothing(tmp_path, monkeypatch):
    real_writer = video_files.imageio_ffmpeg.write_frames

    def writer_killed_after_5_frames(*args, **kwargs):
        writer = real_writer(*args, **kwargs)
        sent = 0

        class Killing:
            def send(self, frame):
                nonlocal sent
                if sent == 6:  # the first send starts ffmpeg; frames follow
                    kill_child_ffmpeg()
                sent += 1
                return writer.send(frame)

            def close(self):
                return writer.close()

        return Killing()

    monkeypatch.setattr(video_files.imageio_ffmpeg, "write_frames", writer_killed_after_5_frames)
    clip = tmp_path / "clip.mkv"
    with pytest.raises(VideoWriteError, match=f"ffmpeg stopped before {clip} was complete"):
        write_clip(noise_frames(17), clip)
    assert not clip.exists() and not leftovers(tmp_path)


@contextmanager
def files_capped_at(size: int):
    """Writes by this process and the programs it starts fail past `size` bytes a file (EFBIG): a disk filling up,
    as ffmpeg meets it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed, for ffmpeg too
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def test_a_disk_that_fills_while_a_clip_is_written_is_named_and_keeps_nothing(tmp_path, monkeypatch):
    clip = tmp_path / "clip.mkv"
    real_statvfs = os.statvfs

    def full_disk(path):
        found = real_statvfs(path)
        return os.statvfs_result((*found[:4], 0, *found[5:]))  # f_bavail: no block left for this user

    monkeypatch.setattr(os, "statvfs", full_disk)
    with files_capped_at(40_000), pytest.raises(OSError) as raised:
        write_clip(noise_frames(17), clip)
    assert raised.value.errno == errno.ENOSPC and str(clip) in str(raised.value)
    assert not clip.exists() and not leftovers(tmp_path)
    monkeypatch.undo()
    with files_capped_at(40_000), pytest.raises(VideoWriteError, match=r"\(\d of 17 frames"):
        write_clip(noise_frames(17), clip)  # the same short file on a disk with room: ffmpeg's failure, not the disk's


def test_a_full_disk_during_a_film_is_one_line_exit_1_and_keeps_finished_clips(
    model_dir, picture, tmp_path, capsys, monkeypatch, seeds
):
    monkeypatch.setenv("SVI_CACHE_DIR", str(tmp_path / "cache"))
    args = generate_args(model_dir, picture, tmp_path / "film.mp4")
    real_write = ClipStore.put
    written = []

    def disk_full_at_the_third_clip(self, key, frames, *rest):
        if len(written) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.clip(key)))
        written.append(key)
        return real_write(self, key, frames, *rest)

    monkeypatch.setattr(ClipStore, "put", disk_full_at_the_third_clip)
    assert main(args) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert error[-1].startswith("error: No space left on device") and "free some space" in error[-1]
    assert not any("Traceback" in line for line in error)
    monkeypatch.setattr(ClipStore, "put", real_write)
    seeds.clear()
    assert main(args) == 0
    assert len(seeds) == 1  # clips 0 and 1 were kept: only clip 2 is rendered


def test_the_gpu_running_out_of_memory_names_the_memory_mode_to_try(
    model_dir, picture, tmp_path, capsys, monkeypatch, seeds
):
    monkeypatch.setenv("SVI_CACHE_DIR", str(tmp_path / "cache"))
    args = generate_args(model_dir, picture, tmp_path / "film.mp4")
    real_render = FilmRenderer.render_clip

    def out_of_memory_at_clip_1(self, clip, *rest, **kwargs):
        if clip == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 23.6 GiB total)")
        return real_render(self, clip, *rest, **kwargs)

    monkeypatch.setattr(FilmRenderer, "render_clip", out_of_memory_at_clip_1)
    assert main(args) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: the GPU ran out of memory rendering clip 1 with --offload none")
    assert "--offload model" in error and "--vae-tiling" in error and "finished clips are kept" in error
    monkeypatch.setattr(FilmRenderer, "render_clip", real_render)
    seeds.clear()
    assert main(args) == 0
    assert len(seeds) == 2  # clip 0 was kept


def test_a_clip_store_on_another_file_system_copies_clips_into_the_run_folder(
    model_dir, picture, tmp_path, monkeypatch
):
    """Hard links cannot cross file systems (EXDEV): the store on /dev/shm (tmpfs), the run folder under tmp_path."""
    store = Path("/dev/shm") / f"svi-store-{os.getpid()}"
    assert os.stat("/dev/shm").st_dev != os.stat(tmp_path).st_dev
    monkeypatch.setenv("SVI_CACHE_DIR", str(store))
    try:
        assert main(generate_args(model_dir, picture, tmp_path / "film.mp4")) == 0
        run_clip = tmp_path / "film.clips" / "clips" / "clip_0002.mkv"
        stored = next((store / "clips").glob("*/clip.mkv"))
        assert run_clip.stat().st_nlink == 1 and stored.stat().st_dev != run_clip.stat().st_dev
        assert len(read_clip(run_clip)) == 9 and (tmp_path / "film.mp4").is_file()
    finally:
        import shutil

        shutil.rmtree(store, ignore_errors=True)


def test_a_run_folder_under_a_file_is_one_line_before_anything_starts(tmp_path, picture, capsys):
    (tmp_path / "taken").write_text("a file, not a folder")
    run = tmp_path / "taken" / "run"
    assert main(["film", "--run-dir", str(run), *SMALL, "--images", str(picture)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error == [
        f"error: run folder {run} cannot be made: {tmp_path / 'taken'} is a file; choose another --run-dir"
    ]


def test_a_run_folder_on_a_read_only_file_system_is_one_line(tmp_path, picture, capsys, monkeypatch):
    """The file system's answer (EROFS) is simulated: mounting a read-only one needs privileges CI may not have."""
    import tempfile

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    run = tmp_path / "run"
    assert main(["film", "--run-dir", str(run), *SMALL, "--images", str(picture)]) == 2
    error = capsys.readouterr().err
    assert f"run folder {run} cannot be written: {tmp_path} is on a read-only file system" in error
    assert not run.exists()


def test_a_16_bit_greyscale_picture_keeps_its_tones(tmp_path):
    path = tmp_path / "scan.png"
    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (32, 1))
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode.startswith("I;16")
    frame = load_reference(path, 64).numpy()
    assert frame[0, 0].tolist() == [0, 0, 0] and frame[0, -1].tolist() == [255, 255, 255]
    assert abs(float(frame.mean()) - 127.5) < 4  # PIL's own RGB conversion makes it nearly all white


def png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header says `width`×`height` and whose data is a few bytes: a decompression bomb's shape."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")
    )


def test_a_decompression_bomb_is_named_and_never_decoded(tmp_path, capsys):
    bomb = tmp_path / "bomb.png"
    png_header_only(bomb, 40_000, 40_000)
    assert bomb.stat().st_size < 100
    assert main(["film", "--run-dir", str(tmp_path / "run"), *SMALL, "--images", str(bomb)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and f"{bomb} has too many pixels to be opened safely" in error[0]
    assert not (tmp_path / "run").exists()

"""Seals: what a finished clip and its state were when they were stored, kept in the state file's safetensors
metadata. The state is written last, so a sealed entry is complete; before a clip is reused (from the clip store,
or from a run folder by `svi assemble`) the seal is checked, and a damaged clip or state is never trusted.

A seal holds the clip file's SHA-256, size and frame count, and a digest of the state's tensors. Checking costs one
SHA-256 of the clip (about 40 ms for an 81-frame 480p clip) and nothing else; entries stored before seals existed
are checked by decoding the clip's packets and reading the state, then sealed.
"""

from pathlib import Path

from safetensors import SafetensorError, safe_open

from svi_model.chain import ChainState
from svi_model.video_files import VideoReadError, probe_video

from ..hashing import file_sha256, tensor_digest
from ..run_folder import load_state, save_state

SEAL_KEYS = ("clip_sha256", "clip_bytes", "clip_frames", "state_digest")


def save_sealed_state(state: ChainState, path: Path, clip: Path, frames: int) -> None:
    """Store `state` at `path` (atomically) sealed with what `clip` (of `frames` frames) is now."""
    seal = {
        "clip_sha256": file_sha256(clip),
        "clip_bytes": str(clip.stat().st_size),
        "clip_frames": str(frames),
        "state_digest": tensor_digest(state.tensors()),
    }
    save_state(state, path, metadata=seal)


def read_seal(path: Path) -> dict[str, str] | None:
    """The seal in the state file at `path`; None when it has none (stored before seals). Raises SafetensorError or
    OSError when the file is not a readable safetensors file."""
    with safe_open(str(path), framework="pt") as state:
        metadata = state.metadata() or {}
    return metadata if all(key in metadata for key in SEAL_KEYS) else None


def clip_damage(clip: Path, state_path: Path, frames: int) -> str | None:
    """Why the clip at `clip` with the state at `state_path` cannot be reused (None: both are as stored).

    `frames` is the frame count the request makes. An unsealed pair that decodes to `frames` frames with a readable
    state is sealed now (a clip stored before seals existed).
    """
    if not clip.is_file() or not state_path.is_file():
        return "its clip or state file is missing"
    try:
        seal = read_seal(state_path)
        state = load_state(state_path)
    except (SafetensorError, OSError, ValueError) as error:
        return f"its state file is unreadable ({error})"
    if seal is None:
        try:
            count = probe_video(clip).frame_count
        except VideoReadError as error:
            return f"its clip is unreadable ({error})"
        if count != frames:
            return f"its clip holds {count} frames where {frames} were made"
        save_sealed_state(state, state_path, clip, frames)
        return None
    if clip.stat().st_size != int(seal["clip_bytes"]):
        return f"its clip is {clip.stat().st_size} bytes where {seal['clip_bytes']} were stored"
    if file_sha256(clip) != seal["clip_sha256"]:
        return "its clip's content changed since it was stored (SHA-256 differs)"
    if int(seal["clip_frames"]) != frames:
        return f"it holds {seal['clip_frames']} frames where the request makes {frames}"
    if tensor_digest(state.tensors()) != seal["state_digest"]:
        return "its state's tensors changed since they were stored"
    return None

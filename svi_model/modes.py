"""The SVI modes as settings: how clips are conditioned, chained, prompted and stitched.

| mode | chaining | m              | padding        | prompts                       | stitch  | released LoRA          |
|------|----------|----------------|----------------|-------------------------------|---------|------------------------|
| shot | pixels   | 1              | reference      | the first prompt for all      | tail, m | svi-shot               |
| film | pixels   | 5              | zeros          | stream, `prompts[(k//r) % L]` | tail, m | svi-film-opt-10212025  |
| tom  | pixels   | 1              | zeros          | stream                        | tail, m | svi-tom                |
| svi2 | pixels   | 1              | reference      | stream                        | head, 1 | SVI 2.0 high + low     |
| pro  | latents  | 1 latent frame | anchor + zeros | stream                        | head, 4 | SVI 2.0 Pro high + low |

m: motion frames, the frames of the previous clip that condition the next.

Stitching: the frames two consecutive clips share are kept once.
- tail (SVI 1.x, the authors' `test_svi.py`): clip k+1 regenerates the m frames it is conditioned on, so every clip
  but the last drops its last m frames: `N·(F−m) + m` frames in all.
- head (SVI 2.0, `inference.py`: `video_frames[1:]`; 2.0 Pro, `inference_svi_2.0_pro.py`:
  `video_frames[num_overlap_frame:]`): every clip but the first drops its first `overlap_frames` decoded frames:
  `F + (N−1)·(F−o)`. SVI 2.0 starts each clip from the previous one's last frame (o = 1: 81 + 80·(N−1)). Pro's
  clip starts with the anchor latent (1 decoded frame) and the previous clip's last latent (4 frames); the
  released script's default drops 4 (81 + 77·(N−1)), which keeps the last of the previous latent's frames twice;
  the authors' README runs it with `--num_overlap_frame 5` (81 + 76·(N−1)): set `overlap_frames=5` for that.
Stitching only picks frames: it is not part of what a clip is (`clip_fields`), so it never re-renders a clip.
"""

from typing import Literal

from pydantic import BaseModel, Field, model_validator

from .conditioning import TEMPORAL_COMPRESSION, Padding
from .seeds import derived_seed

Chaining = Literal["pixels", "latents"]
PromptMode = Literal["first", "stream"]
Stitch = Literal["tail", "head"]
# Fields that say which frames of the clips the film keeps, not what a clip is.
STITCHING_FIELDS = frozenset({"stitch", "overlap_frames"})
# Fields added after clips were first keyed: left out of a clip's identity while unset, so those clips still match.
ABSENT_WHILE_UNSET = frozenset({"guidance_scale_2", "shift", "high_noise_steps"})


class FilmSettings(BaseModel):
    """How a long video is made. Defaults are the paper's: 81 frames (5 s at 16 fps), 50 steps, CFG 5, seed 42."""

    chaining: Chaining = "pixels"
    motion_frames: int = Field(1, ge=1, description="m: frames of the previous clip that condition the next")
    padding: Padding = "zeros"
    reference_count: int | None = Field(None, ge=1, description="with reference padding: k references, then zeros")
    prompt_mode: PromptMode = "stream"
    prompt_repeat: int = Field(1, ge=1, description="clips per prompt of the stream before moving on")
    num_frames: int = Field(81, description="frames per clip, 4k+1")
    steps: int = Field(50, ge=1)
    guidance_scale: float = Field(5.0, ge=1.0)
    guidance_scale_2: float | None = Field(None, ge=1.0, description="two experts: the low-noise one's guidance")
    shift: float | None = Field(None, gt=0.0, description="the schedule's shift (default: SVI's 5)")
    high_noise_steps: int | None = Field(
        None, ge=0, description="two experts: steps the high-noise one takes (default: down to the boundary)"
    )
    seed: int = Field(42, ge=0, description="clip k uses seed·k (a retake of it another seed: `seed_for`)")
    stitch: Stitch = Field("tail", description="which clip drops the frames two clips share: the earlier, the later")
    overlap_frames: int | None = Field(None, ge=1, description="frames each continuation shares (default: m)")

    @model_validator(mode="after")
    def _frames_fit(self) -> "FilmSettings":
        if self.num_frames < 5 or (self.num_frames - 1) % TEMPORAL_COMPRESSION:
            raise ValueError(f"frames per clip must be 4k+1 and at least 5 (e.g. 81, 33), got {self.num_frames}")
        if self.motion_frames >= self.num_frames:
            raise ValueError(
                f"motion frames ({self.motion_frames}) must be fewer than frames per clip ({self.num_frames})"
            )
        if self.chaining == "latents" and self.num_frames < 9:
            raise ValueError("latent chaining needs at least 9 frames per clip (anchor + previous latent + new)")
        if self.high_noise_steps is not None and self.high_noise_steps > self.steps:
            raise ValueError(f"high-noise steps ({self.high_noise_steps}) must not exceed the steps ({self.steps})")
        if self.overlap >= self.num_frames:
            raise ValueError(f"overlap frames ({self.overlap}) must be fewer than frames per clip ({self.num_frames})")
        return self

    @property
    def overlap(self) -> int:
        """Frames each continuation shares with the clip before: `overlap_frames`, else m."""
        return self.motion_frames if self.overlap_frames is None else self.overlap_frames

    def kept_frames(self, clip: int, num_clips: int) -> slice:
        """The frames of clip `clip` that go into the film (see the module docstring for the rule)."""
        if self.stitch == "head":
            return slice(0 if clip == 0 else self.overlap, self.num_frames)
        return slice(0, self.num_frames if clip == num_clips - 1 else self.num_frames - self.overlap)

    def clip_fields(self) -> dict:
        """The settings that decide a clip's pixels (JSON-ready): all but the stitching, which only picks frames."""
        unset = {name for name in ABSENT_WHILE_UNSET if getattr(self, name) is None}
        return self.model_dump(mode="json", exclude=STITCHING_FIELDS | unset)

    def film_length(self, num_clips: int) -> int:
        """Frames in a film of `num_clips` clips."""
        return num_clips * (self.num_frames - self.overlap) + self.overlap

    def entry_for(self, clip: int, entries: int) -> int:
        """Which of the stream's `entries` clip `clip` takes its prompt from: the first, or `(clip // repeat) % L`."""
        return 0 if self.prompt_mode == "first" else (clip // self.prompt_repeat) % entries

    def prompt_for(self, clip: int, prompts: list[str]) -> str:
        """The prompt of clip `clip` (`entry_for`)."""
        return prompts[self.entry_for(clip, len(prompts))]

    def seed_for(self, clip: int, attempt: int = 0) -> int:
        """Clip k's noise seed. Attempts are re-renders of a clip that failed a per-clip check.

        Attempt 0 is base·k, as the authors do (identical noise in every clip accumulates artifacts), so films and
        anything keyed by it stay as they were. Attempt a ≥ 1 draws a seed from (base, k, a): each retake gets
        different noise, and the same retake the same noise in any run.
        """
        if attempt < 0:
            raise ValueError(f"attempt must be 0 (the first render) or more, got {attempt}")
        if attempt == 0:
            return self.seed * clip
        return derived_seed(self.seed, clip, "retake", attempt)


# name → the FilmSettings fields that make the mode; everything else keeps FilmSettings' defaults.
MODES: dict[str, dict] = {
    "shot": dict(chaining="pixels", motion_frames=1, padding="reference", prompt_mode="first"),
    "film": dict(chaining="pixels", motion_frames=5, padding="zeros", prompt_mode="stream"),
    "tom": dict(chaining="pixels", motion_frames=1, padding="zeros", prompt_mode="stream"),
    "svi2": dict(chaining="pixels", motion_frames=1, padding="reference", prompt_mode="stream", stitch="head"),
    "pro": dict(
        chaining="latents", motion_frames=1, padding="zeros", prompt_mode="stream", stitch="head", overlap_frames=4
    ),
}
MODE_NAMES = tuple(MODES)


def mode_settings(name: str, **overrides) -> FilmSettings:
    """The settings of a named mode, with any field overridden (e.g. `mode_settings("film", steps=8)`)."""
    if name not in MODES:
        raise ValueError(f"unknown mode {name!r}: choose one of {', '.join(MODE_NAMES)}")
    return FilmSettings(**{**MODES[name], **overrides})

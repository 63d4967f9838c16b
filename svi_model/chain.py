"""A long video: clips chained one by one, each conditioned on the end of the one before.

Pixel chaining (SVI 1.x: Shot, Film, Tom) conditions clip k+1 on the decoded uint8 pixels of clip k's last m
frames (decode → uint8 → encode, as the released LoRAs were trained). Latent chaining (SVI 2.0 Pro) hands over
clip k's last latent frame and never re-encodes. Either way, what clip k+1 needs from clip k is a `ChainState`;
store it and rendering can restart at any clip and continue exactly as if it had never stopped.
"""

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from .clip_overrides import NO_OVERRIDES, ClipOverrides, entry_overrides
from .conditioning import condition_video, latent_frame_count, pro_condition_latents
from .modes import FilmSettings
from .sampler import ClipCondition, ClipOutput, ClipSampler, StepCallback


@dataclass
class ChainState:
    """What the next clip needs from the previous one.

    tail_frames: uint8 `[m, H, W, 3]`, the last m decoded frames (pixel chaining).
    last_latent: float32 `[16, 1, h, w]`, the last latent frame (latent chaining).
    """

    tail_frames: torch.Tensor | None = None
    last_latent: torch.Tensor | None = None

    def tensors(self) -> dict[str, torch.Tensor]:
        """The state's tensors by field name, the unused one left out (what is stored, hashed and keyed)."""
        return {name: value for name, value in vars(self).items() if value is not None}


ClipCallback = Callable[[int, ClipOutput, ChainState], None]


class FilmRenderer:
    """Renders the clips of one film from a reference image and a prompt stream.

    Args:
        sampler: the loaded model.
        reference: uint8 `[H, W, 3]`, the first frame at the film's size (sides multiples of 16).
        prompts: the prompt stream; which prompt clip k uses is the settings' rule.
        overrides: beside each entry of the stream, the settings it sets for its clips (None: none).
    """

    def __init__(
        self,
        sampler: ClipSampler,
        settings: FilmSettings,
        reference: torch.Tensor,
        prompts: list[str],
        overrides: list[ClipOverrides | None] | None = None,
    ):
        if not prompts or not all(p.strip() for p in prompts):
            raise ValueError("the prompt stream is empty or has an empty prompt: give at least one non-empty prompt")
        height, width = reference.shape[:2]
        if reference.dtype != torch.uint8 or reference.ndim != 3 or height % 16 or width % 16:
            raise ValueError(f"the reference must be uint8 [H, W, 3] with sides multiples of 16, got {reference.shape}")
        self.sampler = sampler
        self.settings = settings
        self.reference = reference
        self.prompts = list(prompts)
        self.overrides = list(overrides or [])

    def condition(self, clip: int, state: ChainState | None) -> ClipCondition:
        """Clip `clip`'s condition from the previous clip's state (None for clip 0)."""
        s = self.settings
        if s.chaining == "latents":
            return ClipCondition(
                latents=pro_condition_latents(
                    self.anchor_latent(), None if state is None else state.last_latent, latent_frame_count(s.num_frames)
                ),
                # The anchor is latent frame 0 of the condition, so its CLIP tokens go with it.
                image_encoder_frame=self.reference,
            )
        motion = self.reference[None] if state is None else state.tail_frames
        video = condition_video(motion, s.num_frames, s.padding, self.reference, s.reference_count)
        return ClipCondition(latents=self.sampler.encode(video), image_encoder_frame=motion[0])

    def anchor_latent(self) -> torch.Tensor:
        """The reference image's normalised latent `[16, 1, h, w]`, encoded once per film (the sampler keeps it,
        so a renderer made per clip, as the synthesize stage makes them, does not encode it again)."""
        return self.sampler.reference_latent(self.reference)

    def state_after(self, output: ClipOutput) -> ChainState:
        """What the clip after `output` needs."""
        if self.settings.chaining == "latents":
            return ChainState(last_latent=output.latents[:, -1:].clone())
        return ChainState(tail_frames=output.frames[-self.settings.motion_frames :].clone())

    def clips(
        self,
        num_clips: int,
        start: int = 0,
        state: ChainState | None = None,
        on_step: StepCallback | None = None,
    ) -> Iterator[tuple[int, ClipOutput, ChainState]]:
        """Yield `(k, clip, state after it)` for k = start … num_clips−1.

        Starting past clip 0 needs the state stored after clip start−1; the result is then identical, frame for
        frame, to a run that never stopped (per-clip seeds depend only on k).
        """
        if num_clips < 1:
            raise ValueError(f"a film needs at least one clip, got {num_clips}")
        if not 0 <= start < num_clips:
            raise ValueError(f"start clip {start} is outside 0..{num_clips - 1}")
        if start > 0 and state is None:
            raise ValueError(f"resuming at clip {start} needs the state stored after clip {start - 1}")
        for k in range(start, num_clips):
            output, state = self.render_clip(k, state if k > 0 else None, on_step)
            yield k, output, state

    def overrides_for(self, clip: int) -> ClipOverrides:
        """What the stream entry clip `clip` takes its prompt from sets for it."""
        return entry_overrides(self.settings, self.overrides, clip, len(self.prompts)) or NO_OVERRIDES

    def render_clip(
        self, clip: int, state: ChainState | None, on_step: StepCallback | None = None, attempt: int = 0
    ) -> tuple[ClipOutput, ChainState]:
        """Render clip `clip` from the state after the clip before it (None for clip 0); return it and its state.

        attempt: 0 for the clip as the film is defined; 1, 2, … re-render it with other seeds (`seed_for`) after it
        failed a per-clip check.
        """
        overrides = self.overrides_for(clip)
        s = overrides.settings(self.settings)
        output = self.sampler.render(
            s.prompt_for(clip, self.prompts),
            overrides.seed_for(self.settings, clip, attempt),
            self.condition(clip, state),
            steps=s.steps,
            guidance_scale=s.guidance_scale,
            on_step=on_step,
            guidance_scale_2=s.guidance_scale_2,
            shift=s.shift,
            high_noise_steps=s.high_noise_steps,
            negative_prompt=overrides.negative_prompt,
        )
        return output, self.state_after(output)


def stitch(settings: FilmSettings, clips: list[torch.Tensor]) -> torch.Tensor:
    """Join the clips' uint8 frames `[F, H, W, 3]` into the film `[film_length, H, W, 3]` by the overlap rule."""
    n = len(clips)
    return torch.cat([frames[settings.kept_frames(k, n)] for k, frames in enumerate(clips)])


def render_film(
    renderer: FilmRenderer,
    num_clips: int,
    on_clip: ClipCallback | None = None,
    on_step: StepCallback | None = None,
) -> torch.Tensor:
    """Render a whole film in memory and return its stitched frames; `on_clip` sees each clip as it finishes."""
    frames = []
    for k, output, state in renderer.clips(num_clips, on_step=on_step):
        if on_clip is not None:
            on_clip(k, output, state)
        frames.append(output.frames)
    return stitch(renderer.settings, frames)

"""What one clip of a film may set for itself, beside its prompt: its seed, steps, guidance and negative prompt.

An entry of a prompt stream carries them (`storyline.yaml`: a prompt, or a mapping with the prompt and any of these
keys); every clip that takes its prompt from that entry renders with them. LoRA strengths are not among them: the
SVI LoRA is fused into the weights, so a strength of its own would need a second copy of the model.
"""

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field

from .modes import FilmSettings
from .seeds import derived_seed


class ClipOverrides(BaseModel):
    """Settings one entry of the prompt stream sets for its clips; unset ones are the film's."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int | None = Field(None, ge=0, description="the clip's noise seed (instead of the film's seed·k)")
    steps: int | None = Field(None, ge=1, description="sampling steps")
    guidance_scale: float | None = Field(None, ge=1.0, description="classifier-free guidance (CFG)")
    guidance_scale_2: float | None = Field(None, ge=1.0, description="two experts: the low-noise one's guidance")
    negative_prompt: str | None = Field(None, min_length=1, description="what the clip should not show")

    def given(self) -> dict:
        """The overrides that are set (JSON-ready)."""
        return self.model_dump(mode="json", exclude_none=True)

    def settings(self, film: FilmSettings) -> FilmSettings:
        """The film's settings with this clip's steps and guidance."""
        names = {"steps", "guidance_scale", "guidance_scale_2"}
        return film.model_copy(update={name: value for name, value in self.given().items() if name in names})

    def seed_for(self, film: FilmSettings, clip: int, attempt: int = 0) -> int:
        """The clip's seed: this entry's (retakes drawn from it as `FilmSettings.seed_for` does), else the film's."""
        if self.seed is None:
            return film.seed_for(clip, attempt)
        return self.seed if attempt == 0 else derived_seed(self.seed, clip, "retake", attempt)


NO_OVERRIDES = ClipOverrides()


def entry_overrides(
    film: FilmSettings, overrides: Sequence[ClipOverrides | None], clip: int, entries: int
) -> ClipOverrides | None:
    """What the entry (of the stream's `entries`) clip `clip` takes its prompt from sets for it; `overrides` holds
    one item per entry, or fewer (the rest set nothing). None: nothing."""
    entry = film.entry_for(clip, entries)
    return overrides[entry] if entry < len(overrides) else None

"""What one film is made from: `FilmRequest` (a form in the Prefect UI, `request.yaml` in the run folder) and the
profiles that fill in everything it leaves open.

Profiles:
- `demo` (default): offline and on the CPU. Bundled pictures matched by keyword, the template storyline, and the
  small bundled model (until the trained one ships: tiny random weights, built offline in a second; the film's
  pictures are then noise, and the run says so). Short clips (33 frames, 8 steps) at 416 px wide.
- `wan`: real weights from local folders: Wan2.1-I2V-14B-480P (`model`), an SVI LoRA (`lora`), Qwen2.5-VL
  (`qwen_model`) or an OpenAI-compatible server (`openai_base_url`) for the storyline, Bing for pictures; the
  paper's settings (81 frames, 50 steps, CFG 5) at 832 px wide on the GPU.
"""

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from svi_model.recipes import FilmSettings, preset

from .cache_folder import tiny_model_folder
from .engines import EngineSpec
from .keywords import Keywords
from .retrieve import RetrieveRequest, Source
from .run_folder import RunFolder
from .storyline import StorylineRequest

Profile = Literal["demo", "wan"]


class FilmRequest(BaseModel):
    """One film: keywords (or your own pictures) → storyline → clips → film.mp4 in `run_dir`."""

    model_config = ConfigDict(protected_namespaces=())

    keywords: Keywords = Field(default_factory=lambda: ["red ball"], description="what the film is about")
    images: list[Path] = Field(default_factory=list, description="your own pictures (skip retrieval)")
    prompts_file: Path | None = Field(None, description="your own prompt stream (skip the storyline)")
    clips: int = Field(3, ge=1, le=1000, description="clips of ~5 s each; one prompt per clip")
    mode: Literal["film", "shot", "tom", "pro"] = Field("film", description="SVI variant")
    profile: Profile = Field("demo", description="demo: offline CPU defaults; wan: real weights on a GPU")
    run_dir: Path = Field(Path("runs/film"), description="where everything this film makes is kept")
    model: Path | None = Field(None, description="wan: local Wan2.1-I2V-14B-480P folder")
    lora: Path | None = Field(None, description="wan: SVI LoRA .safetensors for the mode")
    lora_scale: float = Field(1.0, ge=0.0, le=2.0)
    device: str | None = Field(None, description="cuda, cuda:1 or cpu (default: the profile's)")
    source: Source | None = Field(None, description="where pictures come from (default: bundled / bing)")
    site: str | None = Field(None, description="source greedy: the site to collect pictures from")
    urls: list[str] = Field(default_factory=list, description="source urls: picture addresses")
    image_folder: Path | None = Field(None, description="source folder: a folder of your pictures to choose from")
    filters: dict[str, str] = Field(
        default_factory=dict, description="search filters, e.g. {'license': 'commercial,modify'} (bing)"
    )
    max_images: int = Field(8, ge=1, le=100, description="most accepted pictures kept to choose from")
    min_side: int = Field(256, ge=16, description="shortest side a picture may have, px")
    storyline_backend: Literal["template", "qwen", "openai"] | None = Field(None, description="default: profile's")
    qwen_model: Path | None = Field(None, description="local Qwen2.5-VL-3B/7B-Instruct folder")
    openai_base_url: str | None = Field(None, description="OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1")
    openai_model: str | None = None
    style: str | None = Field(None, description="e.g. 'cinematic, golden hour'")
    genre: str | None = Field(None, description="e.g. 'nature documentary'")
    steps: int | None = Field(None, ge=1)
    cfg: float | None = Field(None, ge=1.0)
    seed: int = Field(42, ge=0, description="clip k uses seed·k")
    frames: int | None = Field(None, description="frames per clip, 4k+1")
    fps: float = Field(16.0, gt=0)
    overwrite: bool = Field(False, description="run_dir holds another film: delete it and start afresh")
    width: int | None = Field(None, ge=64, le=1920, description="film width at most (default 416 demo, 832 wan)")
    chapters: int = Field(1, ge=1, le=50, description="chapters from the best pictures (with images: one per picture)")
    crossfade_s: float = Field(1.0, gt=0.0, le=5.0, description="chapters fade into each other over this long")

    @model_validator(mode="after")
    def _needs(self) -> "FilmRequest":
        if self.profile == "wan" and self.model is None:
            raise ValueError("profile 'wan' needs model: the local Wan2.1-I2V-14B-480P folder (see README)")
        # The stages' own requests are checked now, so bad input fails before any flow run starts.
        if not self.images:
            self.retrieve_request()
        if self.prompts_file is None:
            self.storyline_request()
        return self

    def chapter_count(self) -> int:
        """Chapters of the film: one per picture given, else `chapters` (each from its own retrieved picture)."""
        return len(self.images) or self.chapters

    def chapter_dir(self, index: int) -> Path:
        """The run folder of chapter `index`: `chapters/NN` inside this film's."""
        return RunFolder(self.run_dir).chapter(index).root

    def changes_from(self, stored: "FilmRequest") -> list[str]:
        """The fields in which this request makes another film than `stored` (more or fewer clips do not)."""
        ignored = {"clips", "overwrite"}
        mine, theirs = self.model_dump(mode="json"), stored.model_dump(mode="json")
        return [name for name in mine if name not in ignored and mine[name] != theirs.get(name)]

    def chapter(self, index: int, picture: Path) -> "FilmRequest":
        """Chapter `index` as a film of its own, from `picture`, in `chapter_dir(index)`."""
        return self.model_copy(update={"images": [picture], "chapters": 1, "run_dir": self.chapter_dir(index)})

    def settings(self) -> FilmSettings:
        """The clip settings: the mode's preset, the profile's defaults, then the request's own values."""
        demo = self.profile == "demo"
        overrides = {
            "num_frames": self.frames or (33 if demo else 81),
            "steps": self.steps or (8 if demo else 50),
            "seed": self.seed,
        }
        if self.cfg is not None:
            overrides["guidance_scale"] = self.cfg
        return preset(self.mode, **overrides)

    def engine(self) -> EngineSpec:
        if self.profile == "demo":
            model = self.model or tiny_model_folder()
            return EngineSpec(model=model, lora=self.lora, lora_scale=self.lora_scale, device=self.device or "cpu")
        fields = dict(model=self.model, lora=self.lora, lora_scale=self.lora_scale)
        return EngineSpec(**fields, **({"device": self.device} if self.device else {}))

    def max_width(self) -> int:
        """The reference's width cap; its sides are then rounded down to multiples of 16."""
        return self.width or (416 if self.profile == "demo" else 832)

    def retrieve_request(self) -> RetrieveRequest:
        source = self.source or ("bundled" if self.profile == "demo" else "bing")
        return RetrieveRequest(
            keywords=self.keywords,
            source=source,
            site=self.site,
            urls=self.urls,
            folder=self.image_folder,
            filters=self.filters,
            max_images=self.max_images,
            min_side=self.min_side,
        )

    def storyline_request(self) -> StorylineRequest:
        """The storyline backend: the request's, else the template (demo), an OpenAI server if given, else Qwen."""
        if self.storyline_backend:
            backend = self.storyline_backend
        elif self.profile == "demo":
            backend = "template"
        else:
            backend = "openai" if self.openai_base_url else "qwen"
        return StorylineRequest(
            backend=backend,
            clips=self.clips,
            keywords=self.keywords,
            style=self.style,
            genre=self.genre,
            qwen_model=self.qwen_model,
            device=self.device,
            openai_base_url=self.openai_base_url,
            openai_model=self.openai_model,
        )

    def uses_random_weights(self) -> bool:
        """True when the demo renders with tiny random weights (no model folder given)."""
        return self.profile == "demo" and self.model is None


def read_run_request(run: RunFolder) -> FilmRequest:
    """The request stored in the run folder (JSON, or YAML after a hand edit)."""
    if not run.request.is_file():
        raise FileNotFoundError(
            f"{run.root} is not a run folder (it has no request.yaml): make one with `svi film --run-dir {run.root}`"
        )
    try:
        return FilmRequest(**yaml.safe_load(run.request.read_text(encoding="utf-8")))
    except (yaml.YAMLError, TypeError) as err:
        raise ValueError(f"{run.request} is not a film request ({err}): run `svi film` again to rewrite it") from err
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise ValueError(f"{run.request} is not a valid film request: {problems}") from err

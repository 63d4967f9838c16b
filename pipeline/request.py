"""What one film is made from: `FilmRequest` (the `svi film` flags, a form in the Prefect UI, `request.json` in the
run folder, the manifest's `request`), in four groups, and the profiles that fill in what it leaves open.

Every setting has one name everywhere: the field here is the CLI flag (`num_frames` → `--num-frames`), the form
field, the key of a batch file and of the manifest, and, where a stage takes it, the stage's own field. Names are
unique across the groups, so a flat mapping (`{"clips": 3, "steps": 8}`, a batch file, the CLI) is read into the
groups by name.

Profiles (`PROFILES`): the values a field left unset (None) takes.
- `demo` (default): offline and on the CPU. Bundled pictures matched by keyword, the template storyline, and the
  small demo model trained here on the toy world (`svi_model.demo_model`, shipped in `assets/demo_model/` with
  its SVI LoRA; where that folder is missing, tiny random weights, and the run says so). The demo model's own
  clips: 33 frames at 112×64, 20 steps, no guidance.
- `wan`: real weights from local folders: Wan2.1-I2V-14B-480P (`model`), an SVI LoRA (`lora`), Qwen2.5-VL
  (`qwen_model`) or an OpenAI-compatible server (`openai_base_url`) for the storyline, Bing for pictures; the
  paper's settings (81 frames, 50 steps, CFG 5) at 832 px wide on the GPU.
"""

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from svi_model import demo_model
from svi_model.atomic_files import write_text_atomic
from svi_model.conditioning import Padding
from svi_model.modes import MODE_NAMES, FilmSettings, PromptMode, Stitch, mode_settings
from svi_model.speeds import SPEED_NAMES, SPEEDS

from .cache_folder import tiny_model_folder
from .keywords import Keywords
from .retrieve import RetrieveRequest
from .retrieve.request import SourceName
from .run_folder import RunFolder, clear_run
from .storyline import PromptStream, StorylineRequest, read_prompt_stream
from .storyline.request import BackendName, StorylineMode
from .synthesize import ClipJob, EngineSpec
from .synthesize.checks import CheckName
from .synthesize.engines import Dtype, Offload
from .synthesize.speed_options import SAME_OUTPUT_LEVERS, SpeedOptions

# The demo's clips are the demo model's own: 33 frames at 112×64, its padding, 20 steps without guidance (it was
# never trained on an empty prompt, so there is nothing to guide away from).
_DEMO_CLIPS = dict(num_frames=33, padding=demo_model.PADDING, steps=20, guidance_scale=1.0, max_width=112)
PROFILES: dict[str, dict[str, Any]] = {
    "demo": dict(source="bundled", backend="template", device="cpu", **_DEMO_CLIPS),
    "wan": dict(source="bing", backend="qwen", num_frames=81, steps=50, max_width=832),
}
Profile = Literal[tuple(PROFILES)]
Mode = Literal[MODE_NAMES]
Speed = Literal[SPEED_NAMES]


def _none_dropped(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _none_dropped(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [_none_dropped(item) for item in value]
    return value


def _run_form_schema(schema: dict[str, Any], model: type) -> None:
    """The Prefect run form's view of a request model: an unset `X | None` field is an empty input of type X (the
    form shows `Property is type "None"` for pydantic's `anyOf [X, null]` with `default: null`; empty still means
    None), and a group is a titled section. Validation is pydantic's, unchanged."""
    for name, field in schema.get("properties", {}).items():
        if "$ref" in field:
            field.setdefault("title", name.replace("_", " ").title())
        options = field.get("anyOf", [])
        if len(options) == 2 and {"type": "null"} in options:
            kept = options[0] if options[1] == {"type": "null"} else options[1]
            del field["anyOf"]
            field.update(kept)
            if "default" in field and field["default"] is None:
                del field["default"]
        if isinstance(field.get("default"), dict):
            field["default"] = _none_dropped(field["default"])


_GROUP = ConfigDict(extra="forbid", protected_namespaces=(), json_schema_extra=_run_form_schema)


class RetrieveOptions(BaseModel):
    """Where the film's pictures come from."""

    model_config = _GROUP

    images: list[Path] = Field(default_factory=list, description="your own pictures (skip retrieval); a chapter each")
    source: SourceName | None = Field(None, description="where pictures come from (default: the profile's)")
    site: str | None = Field(None, description="source greedy: the site to collect pictures from")
    urls: list[str] = Field(default_factory=list, description="source urls: picture addresses")
    folder: Path | None = Field(None, description="source folder: a folder of your pictures to choose from")
    filters: dict[str, str] = Field(
        default_factory=dict, description="search filters, e.g. license=commercial,modify (bing)"
    )
    max_images: int = Field(8, ge=1, le=100, description="most accepted pictures kept to choose from")
    min_side: int = Field(256, ge=16, description="shortest side a picture may have, px")


class StorylineOptions(BaseModel):
    """Where the prompt stream comes from."""

    model_config = _GROUP

    prompts: Path | None = Field(None, description="your own prompt stream file (skip the storyline)")
    prompt: list[str] = Field(default_factory=list, description="your own prompts, one per clip (instead of a file)")
    backend: BackendName | None = Field(None, description="storyline backend (default: the profile's)")
    qwen_model: Path | None = Field(None, description="local Qwen2.5-VL-3B/7B-Instruct folder")
    openai_base_url: str | None = Field(None, description="OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1")
    openai_model: str | None = Field(None, description="the model name the server serves")
    style: str | None = Field(None, description="e.g. 'cinematic, golden hour'")
    genre: str | None = Field(None, description="e.g. 'nature documentary'")
    storyline_mode: StorylineMode = Field(
        "plan", description="plan: every prompt up front; follow: each next prompt written from the clip before it"
    )
    follow_frames: int = Field(4, ge=1, le=32, description="follow: last frames of the clip before that are shown")


class RenderOptions(SpeedOptions):
    """How the clips are rendered: the SVI mode and its settings, the model, the hardware and its speed levers, the
    checks. Settings left unset take the mode's value (`svi_model.modes`), then the profile's."""

    model_config = _GROUP

    mode: Mode = Field("film", description="SVI mode")
    speed: Speed = Field("quality", description="a named sampling recipe (lightning: 6 steps for distill LoRAs)")
    model: Path | None = Field(None, description="local Wan2.1-I2V-14B-480P folder (demo: the tiny model)")
    lora: Path | None = Field(None, description="SVI LoRA .safetensors for the mode (two experts: the high-noise one)")
    lora_scale: float = Field(1.0, ge=0.0, le=2.0, description="LoRA strength alpha")
    lora_2: Path | None = Field(None, description="two experts (Wan2.2): the low-noise expert's SVI LoRA")
    lora_scale_2: float = Field(1.0, ge=0.0, le=2.0, description="the low-noise LoRA's strength")
    stacked_loras: list[str] = Field(
        default_factory=list,
        description="LoRAs on top of the SVI LoRA (e.g. a distill LoRA), each FILE[:HIGH[:LOW]]: its strength on the "
        "high-noise expert, then on the low-noise one (0: not there)",
    )
    fuse_lora: bool = Field(True, description="merge the LoRA into the weights (false: keep it as an adapter)")
    device: str | None = Field(None, description="cuda, cuda:1 or cpu (default: the profile's, else cuda if any)")
    dtype: Dtype = Field("auto", description="DiT and T5 dtype")
    offload: Offload = Field("none", description="for smaller GPUs")
    vae_tiling: bool = Field(False, description="less VAE memory (slightly changes the output)")
    boundary: float | None = Field(
        None, gt=0.0, lt=1.0, description="two-expert models (Wan2.2): where the low-noise expert takes over (0.875)"
    )
    num_frames: int | None = Field(None, description="frames per clip, 4k+1")
    steps: int | None = Field(None, ge=1, description="sampling steps")
    guidance_scale: float | None = Field(None, ge=1.0, description="classifier-free guidance (CFG)")
    guidance_scale_2: float | None = Field(
        None, ge=1.0, description="two experts (Wan2.2): the low-noise expert's guidance (default: guidance_scale)"
    )
    seed: int = Field(42, ge=0, description="clip k uses seed·k")
    motion_frames: int | None = Field(None, ge=1, description="m: frames of the previous clip that condition the next")
    padding: Padding | None = Field(None, description="what fills the condition after them")
    reference_count: int | None = Field(None, ge=1, description="reference padding: k references, then zeros")
    prompt_mode: PromptMode | None = Field(None, description="one prompt for all, or the stream")
    prompt_repeat: int | None = Field(None, ge=1, description="clips per prompt of the stream")
    shift: float | None = Field(None, gt=0.0, description="the noise schedule's shift (default: SVI's 5)")
    high_noise_steps: int | None = Field(
        None, ge=0, description="two experts: steps the high-noise one takes (default: down to the boundary)"
    )
    stitch: Stitch | None = Field(None, description="which of two clips drops the frames they share: tail or head")
    overlap_frames: int | None = Field(None, ge=1, description="frames two consecutive clips share (default: m)")
    fps: float = Field(16.0, gt=0, description="frames per second of the film")
    max_width: int | None = Field(None, ge=64, le=1920, description="film width at most (sides: multiples of 16)")
    checks: list[CheckName] = Field(default_factory=list, description="per-clip checks a clip must pass")
    max_attempts: int = Field(3, ge=1, le=20, description="renders a clip may take to pass its checks")


class OutputOptions(BaseModel):
    """Where the film goes, and how it is cut into chapters."""

    model_config = _GROUP

    run_dir: Path = Field(Path("runs/film"), description="where everything this film makes is kept")
    overwrite: bool = Field(False, description="run_dir holds another film: delete it and start afresh")
    chapters: int = Field(1, ge=1, le=50, description="chapters from the best pictures (with images: one each)")
    crossfade_s: float = Field(1.0, gt=0.0, le=5.0, description="chapters fade into each other over this long")
    fan_out: bool = Field(False, description="chapters 2… as runs on the work pool's free workers (svi deploy)")


GROUPS: dict[str, type[BaseModel]] = {
    "retrieve": RetrieveOptions,
    "storyline": StorylineOptions,
    "render": RenderOptions,
    "output": OutputOptions,
}


class FilmRequest(BaseModel):
    """One film: keywords (or your own pictures) → storyline → clips → film.mp4 in `output.run_dir`."""

    model_config = _GROUP

    keywords: Keywords = Field(default_factory=lambda: ["red ball"], description="what the film is about")
    clips: int = Field(3, ge=1, le=1000, description="clips of ~5 s each; one prompt per clip")
    profile: Profile = Field("demo", description="demo: offline CPU defaults; wan: real weights on a GPU")
    retrieve: RetrieveOptions = Field(default_factory=RetrieveOptions)
    storyline: StorylineOptions = Field(default_factory=StorylineOptions)
    render: RenderOptions = Field(default_factory=RenderOptions)
    output: OutputOptions = Field(default_factory=OutputOptions)

    @model_validator(mode="before")
    @classmethod
    def _flat_names_into_groups(cls, data: Any) -> Any:
        """Read a flat mapping's group fields into their groups (names are unique across groups)."""
        if not isinstance(data, dict):
            return data
        data = {name: (dict(value) if name in GROUPS else value) for name, value in data.items()}
        for group, options in GROUPS.items():
            for name in options.model_fields:
                if name in data:
                    data.setdefault(group, {})
                    if isinstance(data[group], dict):
                        data[group][name] = data.pop(name)
        return data

    @model_validator(mode="after")
    def _profile_defaults_and_checks(self) -> "FilmRequest":
        # A speed recipe's settings take the place of the profile's (a request's own values win over both).
        recipe = SPEEDS[self.render.speed]
        defaults = {name: value for name, value in PROFILES[self.profile].items() if name not in recipe}
        if self.storyline.openai_base_url:  # a server given is the storyline's, unless a backend is named
            defaults["backend"] = "openai"
        for group in GROUPS:
            options = getattr(self, group)
            unset = {name: defaults[name] for name in options.model_fields if name in defaults}
            unset = {name: value for name, value in unset.items() if getattr(options, name) is None}
            if unset:
                setattr(self, group, options.model_copy(update=unset))
        if self.profile == "wan" and self.render.model is None:
            raise ValueError(
                "profile 'wan' needs model: the local Wan2.1-I2V-14B-480P or Wan2.2-I2V-A14B folder (see README)"
            )
        # The stages' own requests are checked now, so bad input fails before any flow run starts.
        self.settings()
        self.engine()
        if not self.retrieve.images:
            self.retrieve_request()
        if not self.own_prompts():
            self.storyline_request()
        if self.follows():
            self._check_follow()
        return self

    def follows(self) -> bool:
        """Each prompt after the first is written from the clip before it (`storyline_mode` follow)."""
        return self.storyline.storyline_mode == "follow"

    def _check_follow(self) -> None:
        mode, repeat = self.settings().prompt_mode, self.settings().prompt_repeat
        if self.own_prompts() or mode != "stream" or repeat != 1:
            problem = (
                "it cannot take your own prompts (prompts/prompt); drop one or the other"
                if self.own_prompts()
                else f"it needs prompt_mode 'stream' and prompt_repeat 1 (this request has {mode!r} and {repeat})"
            )
            raise ValueError(f"storyline_mode 'follow' writes each prompt from the clip before it: {problem}")

    def flat(self) -> dict[str, Any]:
        """Every setting by its one name (JSON-ready): the groups' fields beside the top-level ones."""
        dumped = self.model_dump(mode="json")
        flat = {name: value for name, value in dumped.items() if name not in GROUPS}
        for group in GROUPS:
            flat.update(dumped[group])
        return flat

    def own_prompts(self) -> bool:
        """The user gave the prompt stream (a file or the prompts themselves): no storyline is written."""
        return self.storyline.prompts is not None or bool(self.storyline.prompt)

    def form_defaults(self) -> dict[str, Any]:
        """The request as the Prefect run form starts from it: unset (None) fields left out, so the form shows
        them empty (a null in a choice field would be refused when the form is sent)."""
        return _none_dropped(self.model_dump(mode="json"))

    def own_prompt_stream(self) -> PromptStream:
        """The prompt stream the user gave (the prompts themselves, or those in their file), with the overrides its
        entries set."""
        if self.storyline.prompt:
            return list(self.storyline.prompt), [None] * len(self.storyline.prompt)
        return read_prompt_stream(self.storyline.prompts)

    def chapter_count(self) -> int:
        """Chapters of the film: one per picture given, else `chapters` (each from its own retrieved picture)."""
        return len(self.retrieve.images) or self.output.chapters

    def chapter_dir(self, index: int) -> Path:
        """The run folder of chapter `index`: `chapters/NN` inside this film's."""
        return RunFolder(self.output.run_dir).chapter(index).root

    def changes_from(self, stored: "FilmRequest") -> list[str]:
        """The settings in which this request makes another film than `stored` (more or fewer clips do not)."""
        ignored = {"clips", "overwrite", "run_dir", *SAME_OUTPUT_LEVERS}  # (run_dir: relative, absolute or moved)
        mine, theirs = self.flat(), stored.flat()
        return [name for name in mine if name not in ignored and mine[name] != theirs.get(name)]

    def chapter(self, index: int, picture: Path) -> "FilmRequest":
        """Chapter `index` as a film of its own, from `picture`, in `chapter_dir(index)`."""
        return self.model_copy(
            update={
                "retrieve": self.retrieve.model_copy(update={"images": [picture]}),
                "output": self.output.model_copy(update={"chapters": 1, "run_dir": self.chapter_dir(index)}),
            }
        )

    def settings(self) -> FilmSettings:
        """The clip settings: the mode's, then the speed recipe's, then the request's own (profile defaults filled)."""
        fields = set(FilmSettings.model_fields) & set(RenderOptions.model_fields) - {"mode"}
        overrides = {name: getattr(self.render, name) for name in fields if getattr(self.render, name) is not None}
        return mode_settings(self.render.mode, **{**SPEEDS[self.render.speed], **overrides})

    def engine(self) -> EngineSpec:
        """The model and how it is placed. Unless given a model, the demo renders the shipped demo model with its
        SVI LoRA (or, where that folder is missing, the tiny random one)."""
        render = self.render
        # The engine's settings are the render fields of the same name (model and device are resolved here).
        shared = set(EngineSpec.model_fields) & set(RenderOptions.model_fields) - {"model", "device"}
        fields = render.model_dump(include=shared)
        model = render.model
        if model is None and self.profile == "demo":
            shipped = demo_model.demo_model_folder()
            model = shipped or tiny_model_folder()
            if shipped is not None and render.lora is None:
                fields["lora"] = shipped / demo_model.LORA_FILE
        return EngineSpec(model=model, **fields, **({"device": render.device} if render.device else {}))

    def clip_job(self, stream: PromptStream) -> ClipJob:
        """What decides every clip of this film's run folder, given its prompt stream (and its entries' overrides)."""
        render = self.render
        prompts, overrides = stream
        return ClipJob(
            settings=self.settings(),
            prompts=prompts,
            overrides=overrides,
            engine=self.engine(),
            fps=render.fps,
            checks=tuple(render.checks),
            max_attempts=render.max_attempts,
        )

    def retrieve_request(self) -> RetrieveRequest:
        return RetrieveRequest(keywords=self.keywords, **self.retrieve.model_dump(exclude={"images"}))

    def storyline_request(self) -> StorylineRequest:
        fields = self.storyline.model_dump(exclude={"prompts", "prompt"})
        return StorylineRequest(clips=self.clips, keywords=self.keywords, device=self.render.device, **fields)

    def uses_random_weights(self) -> bool:
        """True when the demo renders with tiny random weights (no model folder given, none shipped)."""
        return self.profile == "demo" and self.render.model is None and demo_model.demo_model_folder() is None


def save_run_request(request: FilmRequest, run: RunFolder) -> None:
    """Store the full request (every default filled in) as the run folder's `request.json`."""
    write_text_atomic(run.request, json.dumps(request.model_dump(mode="json"), indent=2))


def read_run_request(run: RunFolder) -> FilmRequest:
    """The request stored in the run folder (JSON; YAML after a hand edit reads too)."""
    if not run.request.is_file():
        raise FileNotFoundError(
            f"{run.root} is not a run folder (it has no {run.request.name}): make one with "
            f"`svi film --run-dir {run.root}`"
        )
    try:
        return FilmRequest(**yaml.safe_load(run.request.read_text(encoding="utf-8")))
    except (yaml.YAMLError, TypeError) as err:
        raise ValueError(f"{run.request} is not a film request ({err}): run `svi film` again to rewrite it") from err
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise ValueError(f"{run.request} is not a valid film request: {problems}") from err


class OtherFilmInRunFolder(ValueError):
    """The run folder holds a different film; nothing in it was touched."""


def start_run(request: FilmRequest, on_overwrite: Callable[[str], None] | None = None) -> RunFolder:
    """The request's run folder with the request stored; a folder holding another film is refused untouched unless
    `output.overwrite`, which deletes that film first (`on_overwrite(message)` is told)."""
    run = RunFolder(request.output.run_dir)
    changed = request.changes_from(read_run_request(run)) if run.request.is_file() else []
    if changed and not request.output.overwrite:
        raise OtherFilmInRunFolder(
            f"{run.root} holds another film (different {', '.join(changed)}): choose another --run-dir, "
            "or pass --overwrite to delete it and start afresh"
        )
    if changed:
        if on_overwrite is not None:
            on_overwrite(f"overwrite: deleting the film in {run.root} (different {', '.join(changed)})")
        clear_run(run)
    run.root.mkdir(parents=True, exist_ok=True)
    save_run_request(request, run)
    return run

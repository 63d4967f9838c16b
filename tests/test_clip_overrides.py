"""Per-clip overrides: an entry of the prompt stream may set seed, steps, guidance and negative prompt for its clips.
They go into that clip's key (so the clips before it are reused and the ones after it, which start from it, are made
again), reach the sampler, and are recorded in the manifest and kept through storyline.yaml's rewrites."""

import json

import pytest
import torch
import yaml

from flows.cli import main
from flows.film import film
from pipeline.request import FilmRequest
from pipeline.storyline import Storyline, read_prompt_stream, read_storyline, save_storyline
from svi_model.clip_overrides import ClipOverrides
from svi_model.sampler import ClipSampler
from svi_model.video_files import read_clip

PROMPTS = [
    "a red ball rests on the grass",
    "the ball rolls to the left",
    "the ball bounces over a stone",
    "the ball comes to rest by a tree",
]


@pytest.fixture
def sampled(monkeypatch):
    """(prompt, seed, steps, negative prompt) of every clip the sampler renders."""
    calls = []
    real = ClipSampler.render

    def recording(self, prompt, seed, condition, **kwargs):
        calls.append((prompt, seed, kwargs["steps"], kwargs.get("negative_prompt")))
        return real(self, prompt, seed, condition, **kwargs)

    monkeypatch.setattr(ClipSampler, "render", recording)
    return calls


def generate(model_dir, picture, entries, out) -> int:
    prompts = out.with_suffix(".yaml")
    prompts.write_text(yaml.safe_dump({"prompts": entries}))
    return main(
        [
            "generate",
            "--images",
            str(picture),
            "--prompts",
            str(prompts),
            "--model",
            str(model_dir),
            "--clips",
            "4",
            "--num-frames",
            "9",
            "--steps",
            "2",
            "--device",
            "cpu",
            "--out",
            str(out),
        ]  # fmt: skip
    )


def clips_of(out) -> list[torch.Tensor]:
    return [read_clip(out.with_suffix(".clips") / "clips" / f"clip_{k:04d}.mkv") for k in range(4)]


def test_an_override_changes_its_clip_and_the_ones_after_it_only(model_dir, picture, tmp_path, monkeypatch, sampled):
    monkeypatch.setenv("SVI_CACHE_DIR", str(tmp_path / "cache"))
    assert generate(model_dir, picture, PROMPTS, tmp_path / "plain.mp4") == 0
    assert [seed for _, seed, _, _ in sampled] == [0, 42, 84, 126]  # the film's seed·k
    sampled.clear()

    entries = [*PROMPTS[:2], {"prompt": PROMPTS[2], "seed": 7, "steps": 1, "negative_prompt": "blurry"}, PROMPTS[3]]
    assert generate(model_dir, picture, entries, tmp_path / "override.mp4") == 0
    # Clips 0 and 1 come from the clip store; clip 2 renders with its overrides, clip 3 with the film's settings.
    assert sampled == [(PROMPTS[2], 7, 1, "blurry"), (PROMPTS[3], 126, 2, None)]
    plain, overridden = clips_of(tmp_path / "plain.mp4"), clips_of(tmp_path / "override.mp4")
    assert [torch.equal(a, b) for a, b in zip(plain, overridden, strict=True)] == [True, True, False, False]
    manifest = json.loads((tmp_path / "override.clips" / "manifest.json").read_text())
    assert [clip.get("overrides") for clip in manifest["clips"]] == [
        None,
        None,
        {"seed": 7, "steps": 1, "negative_prompt": "blurry"},
        None,
    ]


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"prompt": PROMPTS[2], "seed": -1}, "entry 3: seed: Input should be greater than or equal to 0"),
        ({"prompt": PROMPTS[2], "cfg": 3}, "entry 3: cfg: Extra inputs are not permitted"),
        ({"seed": 3}, "entry 3 is a mapping without `prompt:`"),
    ],
)
def test_a_bad_override_is_refused_up_front_naming_its_entry(model_dir, picture, tmp_path, capsys, entry, message):
    out = tmp_path / "film.mp4"
    assert generate(model_dir, picture, [*PROMPTS[:2], entry, PROMPTS[3]], out) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error: ") and message in error[0], error
    assert not out.exists() and not out.with_suffix(".clips").exists()


def test_storyline_yaml_keeps_overrides_when_follow_mode_rewrites_it(tmp_path):
    path = tmp_path / "storyline.yaml"
    overrides = [None, ClipOverrides(seed=7, guidance_scale=3.5)]
    save_storyline(Storyline(prompts=PROMPTS[:2], backend="openai", model="m", overrides=overrides), path)
    assert yaml.safe_load(path.read_text())["prompts"][1] == {"prompt": PROMPTS[1], "seed": 7, "guidance_scale": 3.5}
    assert read_prompt_stream(path) == (PROMPTS[:2], overrides)

    save_storyline(read_storyline(path).with_followed(1, PROMPTS[2]).with_followed(2, PROMPTS[3]), path)
    assert read_prompt_stream(path) == ([PROMPTS[0], PROMPTS[2], PROMPTS[3]], [*overrides, None])


@pytest.mark.usefixtures("prefect_server")
def test_an_override_edited_into_storyline_yaml_is_rendered_by_the_film_flow(tmp_path, monkeypatch, sampled):
    monkeypatch.setenv("SVI_CACHE_DIR", str(tmp_path / "cache"))
    request = FilmRequest(clips=3, num_frames=9, steps=2, max_width=128, run_dir=tmp_path / "run")
    film(request)
    storyline_yaml = tmp_path / "run" / "storyline.yaml"
    written = yaml.safe_load(storyline_yaml.read_text())
    written["prompts"][1] = {"prompt": written["prompts"][1], "seed": 7}
    storyline_yaml.write_text(yaml.safe_dump(written))
    sampled.clear()
    film(request)
    assert [(seed, steps) for _, seed, steps, _ in sampled] == [(7, 2), (84, 2)]
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert [clip.get("overrides") for clip in manifest["clips"]] == [None, {"seed": 7}, None]

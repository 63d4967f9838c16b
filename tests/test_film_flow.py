"""The `film` flow on a real (throwaway) Prefect server: keywords → film offline, Retry of a failed run, edits.

Clips are short and small (9 frames, 2 steps, 128 px wide) so that every run takes seconds on the CPU; the model
is the demo's tiny one.
"""

import json
import threading

import numpy as np
import pytest
import yaml
from PIL import Image
from prefect.client.orchestration import get_client
from prefect.concurrency.sync import concurrency
from prefect.flow_engine import run_flow
from prefect.states import AwaitingRetry
from prefect.utilities.callables import parameter_schema

from flows import gpu_slot
from flows.batch import batch
from flows.cli import main
from flows.film import film
from pipeline.assemble import srt_timestamp
from pipeline.request import FilmRequest
from pipeline.run_folder import RunFolder
from svi_model.chain import FilmRenderer
from svi_model.video_files import read_clip

pytestmark = pytest.mark.usefixtures("prefect_server")


class InjectedFault(RuntimeError):
    pass


@pytest.fixture
def rendered(monkeypatch):
    """Records k for every clip the model renders; `rendered.fail_at = k` makes clip k fail once."""

    class Record(list):
        fail_at: int | None = None

    record = Record()
    real = FilmRenderer.render_clip

    def counting(self, k, *args, **kwargs):
        if k == record.fail_at:
            record.fail_at = None
            raise InjectedFault(f"injected fault at clip {k}")
        record.append(k)
        return real(self, k, *args, **kwargs)

    monkeypatch.setattr(FilmRenderer, "render_clip", counting)
    return record


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """A clip store nobody has rendered into, so the run must make every clip itself."""
    monkeypatch.setenv("SVI_CACHE_DIR", str(tmp_path / "cache"))


def request_for(run_dir, clips=5, keywords=("red ball",), **fields) -> FilmRequest:
    return FilmRequest(
        keywords=list(keywords), clips=clips, num_frames=9, steps=2, max_width=128, run_dir=run_dir, **fields
    )


def film_frames(run_dir) -> list[np.ndarray]:
    run = RunFolder(run_dir)
    return [read_clip(run.clip(k)).numpy() for k in range(len(list(run.clips.glob("clip_*.mkv"))))]


def retry_in_place(flow_run_id) -> None:
    """What the UI's Retry button does: the failed run goes back to AwaitingRetry and runs again, same id."""
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(flow_run_id, AwaitingRetry(), force=True)
        flow_run = client.read_flow_run(flow_run_id)
    run_flow(film, flow_run=flow_run, parameters=flow_run.parameters)
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(flow_run_id).state.is_completed()


def test_keywords_to_film_offline(tmp_path, fresh_cache, rendered):
    run = RunFolder(tmp_path / "run")
    path = film(request_for(run.root, clips=3))

    assert path == run.film and path.stat().st_size > 0
    assert rendered == [0, 1, 2]
    for made in ("reference.png", "storyline.yaml", "film.srt", "storyboard.png", "manifest.json", "request.json"):
        assert (run.root / made).is_file(), made
    prompts = yaml.safe_load(run.storyline.read_text())["prompts"]
    assert len(prompts) == 3 and all("ball" in p for p in prompts)
    assert json.loads(run.request.read_text())["keywords"] == ["red ball"]


def test_retry_of_a_failed_run_resumes_and_matches_an_uninterrupted_run(tmp_path, monkeypatch, rendered):
    monkeypatch.setenv("SVI_CACHE_DIR", str(tmp_path / "cache-a"))
    faulty = request_for(tmp_path / "faulty")
    rendered.fail_at = 3
    state = film(faulty, return_state=True)
    assert state.is_failed() and "injected fault at clip 3" in str(state.message)
    assert rendered == [0, 1, 2]
    assert not RunFolder(faulty.output.run_dir).film.exists()

    retry_in_place(state.state_details.flow_run_id)
    assert rendered == [0, 1, 2, 3, 4], "the retry must not render clips 0-2 again"

    monkeypatch.setenv("SVI_CACHE_DIR", str(tmp_path / "cache-b"))
    rendered.clear()
    film(request_for(tmp_path / "straight"))
    assert rendered == [0, 1, 2, 3, 4]

    resumed, straight = film_frames(tmp_path / "faulty"), film_frames(tmp_path / "straight")
    assert len(resumed) == len(straight) == 5
    for k, (a, b) in enumerate(zip(resumed, straight, strict=True)):
        assert np.array_equal(a, b), f"clip {k} differs"


def test_editing_the_prompt_of_clip_3_renders_clips_3_and_4_only(tmp_path, fresh_cache, rendered):
    request = request_for(tmp_path / "run")
    film(request)
    assert rendered == [0, 1, 2, 3, 4]
    before = film_frames(request.output.run_dir)

    run = RunFolder(request.output.run_dir)
    storyline = yaml.safe_load(run.storyline.read_text())
    storyline["prompts"][3] = "the red ball bursts into confetti, which drifts slowly across the meadow"
    run.storyline.write_text(yaml.safe_dump(storyline))
    rendered.clear()
    film(request)

    assert rendered == [3, 4]
    after = film_frames(request.output.run_dir)
    assert all(np.array_equal(before[k], after[k]) for k in range(3))
    assert not np.array_equal(before[3], after[3])


SMALL = ["--clips", "2", "--num-frames", "9", "--steps", "2", "--max-width", "128"]


def test_command_line_prompts_then_film_then_assemble(tmp_path, fresh_cache, capsys):
    run = RunFolder(tmp_path / "run")
    common = ["--keywords", "sailboat", *SMALL, "--run-dir", str(run.root)]

    assert main(["prompts", *common]) == 0
    assert run.storyline.is_file() and not run.film.exists()
    assert main(["film", *common]) == 0
    assert run.film.is_file()
    run.film.unlink()
    assert main(["assemble", "--run-dir", str(run.root)]) == 0
    assert run.film.is_file()


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--clips", "0"], "clips"),
        (["--profile", "wan"], "model"),
        (["--chapters", "2", "--crossfade-s", "0"], "crossfade"),
        (["--images", "missing.png", "--clips", "1"], "missing.png"),
    ],
)
def test_command_line_bad_input_is_one_line_and_exit_2(tmp_path, fresh_cache, capsys, args, expected):
    assert main(["film", "--run-dir", str(tmp_path / "run"), *args]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error:") and expected in error


def test_batch_makes_every_film(tmp_path, fresh_cache):
    films = [
        {
            "keywords": ["red ball"],
            "clips": 1,
            "num_frames": 9,
            "steps": 2,
            "max_width": 128,
            "run_dir": str(tmp_path / "a"),
        },
        {
            "keywords": ["lighthouse"],
            "clips": 1,
            "num_frames": 9,
            "steps": 2,
            "max_width": 128,
            "run_dir": str(tmp_path / "b"),
        },
    ]
    listing = tmp_path / "films.yaml"
    listing.write_text(yaml.safe_dump(films))
    assert batch(listing) == [tmp_path / "a" / "film.mp4", tmp_path / "b" / "film.mp4"]
    assert all((tmp_path / name / "film.mp4").is_file() for name in "ab")


def test_two_chapters_from_the_two_best_pictures_joined_with_a_crossfade(tmp_path, fresh_cache, rendered):
    request = request_for(tmp_path / "run", clips=1, keywords=["red ball", "lighthouse"], chapters=2, crossfade_s=0.25)
    path = film(request)

    assert rendered == [0, 0]
    chapters = [RunFolder(request.chapter_dir(index)) for index in range(2)]
    assert all(chapter.film.is_file() and chapter.storyboard.is_file() for chapter in chapters)
    references = [read_clip(chapter.clip(0))[0].numpy() for chapter in chapters]
    assert not np.array_equal(*references), "each chapter starts from its own picture"
    frames = [len(read_clip(chapter.clip(0))) for chapter in chapters]
    joined = len(read_clip(path))
    fps = request.render.fps
    assert sum(frames) - joined == round(0.25 * fps), "the chapters overlap by the crossfade"

    run = RunFolder(request.output.run_dir)
    cues = run.subtitles.read_text().strip().split("\n\n")
    second = frames[0] - round(0.25 * fps)  # chapter 2 starts as chapter 1 begins to fade
    assert len(cues) == 2
    assert cues[0].splitlines()[1] == f"{srt_timestamp(0)} --> {srt_timestamp(second / fps)}"
    assert cues[1].splitlines()[1] == f"{srt_timestamp(second / fps)} --> {srt_timestamp(joined / fps)}"
    manifest = json.loads(run.manifest.read_text())
    assert [c["film_frames"] for c in manifest["chapters"]] == [[0, second], [second, joined]]
    assert manifest["film"]["frames"] == joined
    with Image.open(run.storyboard) as board:
        heights = [Image.open(chapter.storyboard).height for chapter in chapters]
        assert board.height == sum(heights), "the chapters' storyboards, one under the other"

    path.unlink()
    assert main(["assemble", "--run-dir", str(request.output.run_dir)]) == 0
    assert len(read_clip(path)) == joined


def test_served_film_deployment_has_the_request_form():
    """`svi serve` publishes these deployments; the UI builds the run form from the parameter schema."""
    assert film.to_deployment(name="svi-film").name == "svi-film"
    schema = parameter_schema(film).model_dump()
    definitions = schema["definitions"]
    request = definitions["FilmRequest"]["properties"]
    assert {"keywords", "clips", "profile", "retrieve", "storyline", "render", "output"} <= set(request)
    assert {"mode", "model", "lora"} <= set(definitions["RenderOptions"]["properties"])
    assert "run_dir" in definitions["OutputOptions"]["properties"]
    assert "backend" in definitions["StorylineOptions"]["properties"]
    assert request["clips"]["description"].startswith("clips of ~5 s")


def test_clearing_the_cache_keeps_the_film_and_the_next_run_renders_again(tmp_path, fresh_cache, rendered, capsys):
    request = request_for(tmp_path / "run", clips=1)
    film(request)
    assert main(["cache"]) == 0
    assert "stored clips" in capsys.readouterr().out

    assert main(["cache", "--clear"]) == 0
    assert "deleted stored clips: 2 files" in capsys.readouterr().out
    run = RunFolder(request.output.run_dir)
    assert run.film.is_file() and run.clip(0).is_file()

    rendered.clear()
    film(request)
    assert rendered == [0]


def test_a_run_folder_holding_another_film_is_refused_untouched_unless_overwrite(tmp_path, fresh_cache, capsys):
    run = RunFolder(tmp_path / "run")
    common = [*SMALL, "--run-dir", str(run.root)]
    assert main(["film", "--keywords", "red ball", *common]) == 0
    before = {path: path.read_bytes() for path in run.root.rglob("*") if path.is_file()}

    assert main(["film", "--keywords", "lighthouse", *common]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "holds another film (different keywords)" in error and "--overwrite" in error
    assert {path: path.read_bytes() for path in run.root.rglob("*") if path.is_file()} == before

    assert main(["film", "--keywords", "lighthouse", "--overwrite", *common]) == 0
    assert "lighthouse" in run.storyline.read_text().lower()


def test_more_clips_in_the_same_run_folder_extend_the_film(tmp_path, fresh_cache, rendered):
    film(request_for(tmp_path / "run", clips=2))
    rendered.clear()
    film(request_for(tmp_path / "run", clips=3))
    assert rendered == [2]


@pytest.mark.parametrize("served", [False, True])
def test_clips_hold_a_gpu_slot_only_when_served(tmp_path, fresh_cache, monkeypatch, served):
    """Served, each rendered clip holds a slot of the global limit `svi-gpu` (on a lease), given back after it.
    Here the only slot is held by another holder until the clip starts (or for 5 s): a served clip cannot start
    before that holder lets go, an unserved one starts while the slot is still held."""
    monkeypatch.setenv(gpu_slot.SWITCH, "1" if served else "0")
    gpu_slot.ensure_gpu_limit(1)
    taken, clip_started, events = threading.Event(), threading.Event(), []
    real_render = FilmRenderer.render_clip

    def rendering(self, *args, **kwargs):
        events.append("clip started")
        clip_started.set()
        return real_render(self, *args, **kwargs)

    monkeypatch.setattr(FilmRenderer, "render_clip", rendering)

    def hold_the_slot():
        with concurrency(gpu_slot.GPU_LIMIT, occupy=1, lease_duration=60, strict=True):
            taken.set()
            clip_started.wait(5 if served else 120)
            events.append("slot released")

    holder = threading.Thread(target=hold_the_slot)
    holder.start()
    assert taken.wait(30)
    film(request_for(tmp_path / "run", clips=1))
    holder.join()
    expected = ["slot released", "clip started"] if served else ["clip started", "slot released"]
    assert events == expected
    with get_client(sync_client=True) as client:
        assert client.read_global_concurrency_limit_by_name(gpu_slot.GPU_LIMIT).active_slots == 0

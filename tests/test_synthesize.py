"""The synthesize stage: clips into the run folder, reused by content key across runs and run folders."""

import threading
import time

import pytest
import torch

from pipeline.run_folder import RunFolder, load_reference_png, load_state, save_reference_png
from pipeline.synthesize import ClipJob, ClipStore, EngineSpec, loaded_sampler, run_clip_key, synthesize_clip
from svi_model.chain import FilmRenderer
from svi_model.modes import mode_settings
from svi_model.sampler import ClipSampler
from svi_model.tiny import save_tiny_model
from svi_model.video_files import read_clip

PROMPTS = ["a red ball on the grass", "the ball rolls", "the ball stops"]


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    return EngineSpec(model=save_tiny_model(tmp_path_factory.mktemp("m") / "tiny"), device="cpu")


@pytest.fixture
def render_calls(monkeypatch):
    calls = []
    real = ClipSampler.render
    monkeypatch.setattr(
        ClipSampler, "render", lambda self, prompt, *a, **k: calls.append(prompt) or real(self, prompt, *a, **k)
    )
    return calls


def new_run(path, reference) -> RunFolder:
    run = RunFolder(path)
    save_reference_png(reference, run.reference)
    return run


def render_all(run, prompts, engine, store, n=3):
    job = ClipJob(settings=mode_settings("film", num_frames=9, steps=2), prompts=prompts, engine=engine)
    return [synthesize_clip(run, k, job, store=store) for k in range(n)]


def test_clips_are_made_once_and_reused_across_run_folders(tmp_path, reference, engine, render_calls):
    store = ClipStore(tmp_path / "store")
    first = new_run(tmp_path / "a", reference)
    results = render_all(first, PROMPTS, engine, store)
    assert [r.reused for r in results] == [False] * 3 and len(render_calls) == 3
    second = new_run(tmp_path / "b", reference)
    again = render_all(second, PROMPTS, engine, store)
    assert [r.reused for r in again] == [True] * 3 and len(render_calls) == 3
    for k in range(3):
        assert torch.equal(read_clip(first.clip(k)), read_clip(second.clip(k)))
        assert torch.equal(load_state(first.state(k)).tail_frames, load_state(second.state(k)).tail_frames)


def test_changing_one_prompt_recomputes_that_clip_and_the_ones_after(tmp_path, reference, engine, render_calls):
    store = ClipStore(tmp_path / "store")
    render_all(new_run(tmp_path / "a", reference), PROMPTS, engine, store)
    render_calls.clear()
    edited = [PROMPTS[0], "the ball bounces high", PROMPTS[2]]
    results = render_all(new_run(tmp_path / "b", reference), edited, engine, store)
    assert [r.reused for r in results] == [True, False, False]
    assert render_calls == edited[1:]


def test_a_clip_needs_the_one_before(tmp_path, reference, engine):
    run = new_run(tmp_path / "a", reference)
    with pytest.raises(FileNotFoundError, match="clip 2 needs clip 1 first"):
        job = ClipJob(settings=mode_settings("film", num_frames=9, steps=2), prompts=PROMPTS, engine=engine)
        synthesize_clip(run, 2, job, store=ClipStore(tmp_path / "s"))


def test_placing_a_stored_clip_again_leaves_no_temporary_file(tmp_path, reference, engine):
    store = ClipStore(tmp_path / "store")
    run = new_run(tmp_path / "a", reference)
    key = render_all(run, PROMPTS, engine, store, n=1)[0].key
    before = run.clip(0).stat().st_ino
    store.materialise(key, run, 0)  # the run folder's clip already is the stored file (a hard link)
    assert sorted(p.name for p in run.clips.iterdir()) == ["clip_0000.mkv", "clip_0000.state.safetensors"]
    assert run.clip(0).stat().st_ino == before == store.clip(key).stat().st_ino


def test_two_runs_needing_the_same_clip_at_once_make_it_once(tmp_path, reference, engine, render_calls):
    store = ClipStore(tmp_path / "store")
    job = ClipJob(settings=mode_settings("film", num_frames=9, steps=2), prompts=PROMPTS, engine=engine)
    other, mine = new_run(tmp_path / "other", reference), new_run(tmp_path / "mine", reference)
    key = run_clip_key(mine, 0, job)
    holding = threading.Event()

    def other_run_making_it():
        with store.making(key):  # the other run has begun this clip and holds its entry
            holding.set()
            time.sleep(1.0)
            renderer = FilmRenderer(loaded_sampler(engine), job.settings, load_reference_png(other.reference), PROMPTS)
            output, state = renderer.render_clip(0, None)
            store.put(key, output.frames, state, job.fps)

    thread = threading.Thread(target=other_run_making_it)
    thread.start()
    holding.wait()
    result = synthesize_clip(mine, 0, job, store=store)  # waits for the other run, then takes its clip
    thread.join()
    assert result.reused and len(render_calls) == 1
    assert torch.equal(read_clip(mine.clip(0)), read_clip(store.clip(key)))

"""Error recycling: banks, grid mapping, injection, curation, checkpoints and the distributed warm-up.

Latents here are tiny (`[1, 5, 1, 1]` or so): every rule is about shapes and indices, not sizes. Hand-computed
values use float32 banks so that the comparisons are exact.
"""

import io
import logging
import socket
from dataclasses import replace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from svi_model.erft.augmentation import _hue_shifted, augment_condition_frames
from svi_model.erft.error_bank import ErrorBank, grid_of, grid_sigmas
from svi_model.erft.recycling import ErrorRecycler, PreparedStep, RecyclingSettings
from svi_model.schedule import shifted_sigmas

SHAPE = (1, 5, 1, 1)  # channels, latent frames, h, w
EXACT = RecyclingSettings(storage_dtype="float32")
ALWAYS = replace(EXACT, noise_probability=1.0, image_probability=1.0, video_probability=1.0, clean_probability=0.0)


def recycler(settings: RecyclingSettings = EXACT, shape=SHAPE, seed: int = 0) -> ErrorRecycler:
    return ErrorRecycler(settings, shape, shifted_sigmas(50), seed)


def frames_tensor(values, shape=SHAPE) -> torch.Tensor:
    """`[1, *shape]` whose latent frame t holds values[t]."""
    return torch.tensor(values, dtype=torch.float32).view(1, 1, -1, 1, 1).expand(1, *shape).clone()


# ---- grids ----------------------------------------------------------------------------------------------------------


def test_grids_are_the_50_test_time_sigmas():
    sigmas = grid_sigmas(50)
    expected = [5 * s / (1 + 4 * s) for s in torch.linspace(1, 0, 51, dtype=torch.float64)[:-1].tolist()]
    assert len(sigmas) == 50 and torch.allclose(sigmas, torch.tensor(expected, dtype=torch.float64))
    assert recycler().test_sigmas.tolist() == sigmas.tolist()  # the final 0 of shifted_sigmas is dropped


def test_grid_of_is_the_nearest_test_sigma():
    sigmas = grid_sigmas(50)
    assert grid_of(1.0, sigmas) == 0 and grid_of(1e-4, sigmas) == 49
    between = 0.3 * sigmas[10] + 0.7 * sigmas[11]
    assert grid_of(float(between), sigmas) == 11
    assert grid_of(float(0.7 * sigmas[10] + 0.3 * sigmas[11]), sigmas) == 10


def test_grid_of_matches_the_authors_timestep_mapping_for_every_training_step():
    """Their scheduler: 1000 shift-5 training timesteps in float32, grids = 50 test timesteps, argmin |t − t_n|."""

    def timesteps(n):
        sigma = torch.linspace(1.0, 0.0, n + 1)[:-1]
        return 5 * sigma / (1 + 4 * sigma) * 1000

    train, test = timesteps(1000), timesteps(50)
    theirs = [int((test - t).abs().argmin()) for t in train]
    ours = [grid_of(s, grid_sigmas(50)) for s in shifted_sigmas(1000)[:-1].tolist()]
    assert ours == theirs
    assert sorted(set(ours)) == list(range(50))


# ---- one bank -------------------------------------------------------------------------------------------------------


def test_full_grid_replaces_the_most_similar_error_and_keeps_its_cap():
    bank = ErrorBank("test", num_grids=2, per_grid=3, error_shape=(4,), dtype=torch.float32)
    stored = [torch.tensor([0.0, 0, 0, 0]), torch.tensor([5.0, 5, 5, 5]), torch.tensor([-3.0, 1, 0, 2])]
    assert [bank.store(error, 1) for error in stored] == [0, 1, 2]
    close_to_second = torch.tensor([4.0, 5, 6, 5])
    assert bank.store(close_to_second, 1) == 1
    assert bank.counts == [0, 3]
    rows = bank.state_dict()["errors.1"]
    assert torch.equal(rows, torch.stack([stored[0], close_to_second, stored[2]]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fast_distance_search_agrees_with_one_by_one_l2(monkeypatch, dtype):
    monkeypatch.setattr("svi_model.erft.error_bank.REFINED_CANDIDATES", 3)  # rank fast, then measure 3 of 10
    generator = torch.Generator().manual_seed(1)
    bank = ErrorBank("test", num_grids=1, per_grid=10, error_shape=(2, 12), dtype=dtype)
    for _ in range(10):
        bank.store(torch.randn(2, 12, generator=generator), 0)
    for _ in range(50):
        error = torch.randn(2, 12, generator=generator)
        rows = bank.state_dict()["errors.0"].float()
        stored_error = error.to(dtype).float()  # compared as stored, after the cast
        nearest = min(range(10), key=lambda row: float(torch.dist(rows[row], stored_error)))
        assert bank.store(error, 0) == nearest


def test_distances_stay_right_after_a_checkpoint_round_trip():
    generator = torch.Generator().manual_seed(2)
    bank = ErrorBank("test", num_grids=1, per_grid=4, error_shape=(8,), dtype=torch.float32)
    for _ in range(4):
        bank.store(torch.randn(8, generator=generator), 0)
    restored = ErrorBank("test", num_grids=1, per_grid=4, error_shape=(8,), dtype=torch.float32)
    restored.load_state_dict(bank.state_dict())
    for _ in range(10):
        error = torch.randn(8, generator=generator)
        assert restored.store(error, 0) == bank.store(error, 0)


def test_draw_is_uniform_within_a_grid_and_over_all_stored_errors():
    bank = ErrorBank("test", num_grids=3, per_grid=4, error_shape=(1,), dtype=torch.float32)
    for value in (1.0, 2.0):
        bank.store(torch.tensor([value]), 0)
    bank.store(torch.tensor([3.0]), 2)
    generator = torch.Generator().manual_seed(0)
    assert bank.draw(1, generator) is None
    from_grid = [float(bank.draw(0, generator)) for _ in range(4000)]
    assert abs(from_grid.count(1.0) / 4000 - 0.5) < 0.03
    from_all = [float(bank.draw(None, generator)) for _ in range(6000)]
    assert [round(from_all.count(v) / 6000, 1) for v in (1.0, 2.0, 3.0)] == [0.3, 0.3, 0.3]
    assert ErrorBank("empty", 2, 2, (1,)).draw(None, generator) is None


def test_budget_lowers_the_cap_and_says_so(caplog):
    error_bytes = 8 * 2  # 8 bf16 values
    with caplog.at_level(logging.WARNING):
        bank = ErrorBank("test", num_grids=5, per_grid=500, error_shape=(8,), budget_bytes=5 * 2 * error_bytes + 7)
    assert bank.capacity == 2 and "holds 2 errors per grid, not 500" in caplog.text
    for value in range(4):
        bank.store(torch.full((8,), float(value)), 0)
    assert bank.counts[0] == 2 and bank.nbytes == 2 * error_bytes and bank.max_nbytes == 5 * 2 * error_bytes
    assert bank.fill() == pytest.approx(2 / 10)
    with pytest.raises(ValueError, match="cannot hold one"):
        ErrorBank("test", num_grids=5, per_grid=500, error_shape=(8,), budget_bytes=5 * error_bytes - 1)
    settings = replace(EXACT, memory_budget_gb=(2 * 50 * 3 * 20 + 100) / 1e9)  # two banks, 3 float32 errors per grid
    assert [bank.capacity for bank in recycler(settings).banks.values()] == [3, 3]


def test_disk_backed_bank_round_trips(tmp_path):
    bank = ErrorBank("disk", num_grids=2, per_grid=2, error_shape=(3,), storage_dir=tmp_path)
    bank.store(torch.tensor([1.0, 2.0, 3.0]), 1)
    assert (tmp_path / "disk-grid001.bin").is_file() and not (tmp_path / "disk-grid000.bin").exists()
    restored = ErrorBank("disk2", num_grids=2, per_grid=2, error_shape=(3,), storage_dir=tmp_path)
    restored.load_state_dict(bank.state_dict())
    assert torch.equal(restored.draw(1, torch.Generator()), torch.tensor([1.0, 2.0, 3.0], dtype=torch.bfloat16))


# ---- curation and banking -------------------------------------------------------------------------------------------


def test_curated_errors_by_hand():
    rec = recycler(replace(EXACT, clean_probability=0.0))
    v_pred = frames_tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    v_target = frames_tensor([0.0, 4.0, 3.0, 2.0, -1.0])  # v̂ − v = [1, −2, 0, 2, 6]
    sigma = torch.tensor([0.25])
    grid = grid_of(0.25, grid_sigmas(50))
    prepared = PreparedStep(v_pred, v_pred, v_pred, clean=False, grid=torch.tensor([grid]))
    rec.recycle(v_pred, v_target, sigma, prepared, step=100)
    noise_error = rec.banks["noise"].draw(grid, rec.generator)
    video_error = rec.banks["video"].draw(grid, rec.generator)
    assert noise_error.flatten().tolist() == [0.75, -1.5, 0.0, 1.5, 4.5]  # (1 − σ)(v̂ − v)
    assert video_error.flatten().tolist() == [-0.25, 0.5, 0.0, -0.5, -1.5]  # −σ(v̂ − v)


def test_injection_by_hand():
    rec = recycler(ALWAYS)
    grid = grid_of(0.5, grid_sigmas(50))
    rec.banks["noise"].store(frames_tensor([10.0] * 5)[0], grid)
    rec.banks["video"].store(frames_tensor([1.0, 2.0, 3.0, 4.0, 5.0])[0], grid)
    latents, noise = frames_tensor([100.0] * 5), frames_tensor([-8.0] * 5)
    condition = frames_tensor([0.5] * 5)
    prepared = rec.prepare(latents, noise, condition, torch.tensor([0.5]))
    assert prepared.injected == {"noise": True, "image": True, "video": True} and not prepared.clean
    assert prepared.grid.tolist() == [grid]
    assert prepared.noise.flatten().tolist() == [2.0] * 5  # x̃_noi = noise + E_noi: the target's noise
    # noisy = (1 − σ)(x + E_vid) + σ(n + E_noi) = 0.5·[101..105] + 0.5·2
    assert prepared.noisy_latents.flatten().tolist() == [51.5, 52.0, 52.5, 53.0, 53.5]
    # E_img: a 3-frame window of the one stored video error, starting at frame 0, 1 or 2, on y's frames 0-2 only
    added = (prepared.condition_latents - condition).flatten().tolist()
    start = int(added[0]) - 1
    assert start in (0, 1, 2) and added == [start + 1.0, start + 2.0, start + 3.0, 0.0, 0.0]
    assert torch.equal(latents, frames_tensor([100.0] * 5)) and torch.equal(condition, frames_tensor([0.5] * 5))


def test_image_window_lands_anywhere_in_the_error():
    rec = recycler(replace(ALWAYS, use_noise_errors=False, use_video_errors=False))
    rec.banks["video"].store(frames_tensor([1.0, 2.0, 3.0, 4.0, 5.0])[0], 7)
    zeros = torch.zeros(1, *SHAPE)
    starts = {int(rec.prepare(zeros, zeros, zeros, torch.tensor([0.9])).condition_latents[0, 0, 0]) for _ in range(60)}
    assert starts == {1, 2, 3}


def test_empty_banks_and_clean_steps_inject_nothing():
    latents, noise, condition = frames_tensor([1.0] * 5), frames_tensor([3.0] * 5), frames_tensor([0.0] * 5)
    sigma = torch.tensor([0.25])
    full_but_clean = recycler(replace(EXACT, clean_probability=1.0))
    full_but_clean.banks["video"].store(frames_tensor([9.0] * 5)[0], 0)
    for rec in (recycler(ALWAYS), full_but_clean, recycler(RecyclingSettings(enabled=False))):
        prepared = rec.prepare(latents, noise, condition, sigma)
        assert not any(prepared.injected.values())
        assert prepared.noisy_latents.flatten().tolist() == [1.5] * 5 and prepared.noise is noise
        assert prepared.condition_latents is condition
    assert recycler(RecyclingSettings(enabled=False)).banks == {}


def test_injection_frequencies_with_a_fixed_seed():
    rec = recycler(RecyclingSettings.for_recipe("released", "film"), shape=(1, 3, 1, 1))
    for grid in range(50):
        for bank in rec.banks.values():
            bank.store(torch.ones(1, 3, 1, 1), grid)
    zeros = torch.zeros(1, 1, 3, 1, 1)
    sigma = torch.rand(10_000, generator=torch.Generator().manual_seed(0))
    steps = [rec.prepare(zeros, zeros, zeros, sigma[i : i + 1]) for i in range(10_000)]
    rate = {kind: sum(step.injected[kind] for step in steps) / 10_000 for kind in ("noise", "image", "video")}
    clean = sum(step.clean for step in steps) / 10_000
    both = sum(step.injected["image"] and step.injected["video"] for step in steps) / 10_000
    assert clean == pytest.approx(0.5, abs=0.02)
    assert rate["noise"] == pytest.approx(0.5 * 0.01, abs=0.003)
    assert rate["image"] == pytest.approx(0.5 * 0.9, abs=0.02) and rate["video"] == pytest.approx(0.45, abs=0.02)
    assert both == pytest.approx(0.5 * 0.81, abs=0.02)  # independent draws
    shot = recycler(RecyclingSettings.for_recipe("released", "shot"), shape=(1, 3, 1, 1))
    assert sum(shot.prepare(zeros, zeros, zeros, sigma[:1]).clean for _ in range(4000)) / 4000 == pytest.approx(
        0.2, abs=0.025
    )


def test_clean_steps_are_banked_with_probability_one_tenth():
    settings = replace(EXACT, errors_per_grid=10_000, image_window=1)
    rec = recycler(settings, shape=(1, 1, 1, 1))
    v = torch.ones(1, 1, 1, 1, 1)
    for clean, expected in ((False, 1.0), (True, 0.1)):
        before = sum(rec.banks["video"].counts)
        for _ in range(3000):
            rec.recycle(v, 0 * v, torch.tensor([0.5]), PreparedStep(v, v, v, clean, torch.tensor([3])), step=100)
        stored = sum(rec.banks["video"].counts) - before
        assert stored / 3000 == pytest.approx(expected, abs=0.02)
        assert rec.banks["noise"].counts == rec.banks["video"].counts


# ---- settings -------------------------------------------------------------------------------------------------------


def test_recipes_and_switches():
    film, shot = RecyclingSettings.for_recipe("released", "film"), RecyclingSettings.for_recipe("released", "shot")
    assert (film.clean_probability, shot.clean_probability, film.warmup_steps) == (0.5, 0.2, 50)
    assert (film.noise_probability, film.image_probability, film.video_probability) == (0.01, 0.9, 0.9)
    assert (film.errors_per_grid, film.clean_bank_probability, film.image_window) == (500, 0.1, 3)
    paper = RecyclingSettings.for_recipe("paper", "shot", errors_per_grid=10)
    assert (paper.warmup_steps, paper.clean_probability, paper.errors_per_grid) == (20, 0.2, 10)
    assert list(recycler(replace(EXACT, use_noise_errors=False)).banks) == ["video"]
    assert list(recycler(replace(EXACT, use_video_errors=False, use_image_errors=False)).banks) == ["noise"]
    with pytest.raises(ValueError, match="clean_probability"):
        RecyclingSettings(clean_probability=1.5)
    with pytest.raises(ValueError, match="image_window"):
        recycler(shape=(1, 2, 1, 1))


# ---- checkpoints ----------------------------------------------------------------------------------------------------


def run_steps(rec: ErrorRecycler, first: int, count: int) -> list[torch.Tensor]:
    """`count` deterministic training-like steps; what each prepared."""
    made = []
    for step in range(first, first + count):
        inputs = torch.Generator().manual_seed(step)
        latents, noise, condition = (torch.randn(2, *SHAPE, generator=inputs) for _ in range(3))
        sigma = torch.rand(2, generator=inputs)
        prepared = rec.prepare(latents, noise, condition, sigma)
        made += [prepared.noisy_latents, prepared.condition_latents, torch.tensor(prepared.clean)]
        rec.recycle(torch.randn(2, *SHAPE, generator=inputs), noise - latents, sigma, prepared, step)
    return made


@pytest.mark.parametrize("serialise", ["torch", "safetensors"])
def test_state_dict_resumes_exactly(serialise):
    settings = replace(RecyclingSettings(), errors_per_grid=2, image_probability=0.5, noise_probability=0.3)
    uninterrupted = recycler(settings, seed=5)
    run_steps(uninterrupted, 0, 60)  # some grids fill up and start replacing
    state = uninterrupted.state_dict()
    if serialise == "torch":
        buffer = io.BytesIO()
        torch.save(state, buffer)
        state = torch.load(io.BytesIO(buffer.getvalue()))
    else:
        state = load_safetensors(save_safetensors(state))
    resumed = recycler(settings, seed=5)
    resumed.load_state_dict(state)
    assert resumed.stats() == uninterrupted.stats()
    for a, b in zip(run_steps(uninterrupted, 60, 30), run_steps(resumed, 60, 30), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(resumed.state_dict()["video.counts"], uninterrupted.state_dict()["video.counts"])
    with pytest.raises(ValueError, match="match no bank"):
        recycler(replace(settings, use_noise_errors=False)).load_state_dict(state)


def test_stats_report_fill_and_size():
    rec = recycler(replace(EXACT, errors_per_grid=2))
    rec.banks["video"].store(torch.zeros(SHAPE), 0)
    stats = rec.stats()
    assert stats == {"noise_fill": 0.0, "video_fill": 1 / 100, "bank_gb": 5 * 4 / 1e9}


# ---- distributed warm-up --------------------------------------------------------------------------------------------


def _warmup_worker(rank: int, port: int, results: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        settings = replace(RecyclingSettings(), clean_probability=0.0, warmup_steps=2, image_window=1)  # bf16 over gloo
        rec = ErrorRecycler(settings, (1, 1, 1, 1), grid_sigmas(50), seed=0)
        for step in range(4):
            value = 10.0 * rank + step + 1  # v̂ − v of this rank and step; σ = 0.5 gives E_vid = −value / 2
            sigma = torch.tensor([0.5])
            prepared = PreparedStep(*(torch.zeros(1, 1, 1, 1, 1),) * 3, clean=False, grid=torch.tensor([rank]))
            rec.recycle(torch.full((1, 1, 1, 1, 1), value), torch.zeros(1, 1, 1, 1, 1), sigma, prepared, step)
        torch.save({"generator_differs": rec.generator.initial_seed(), **rec.state_dict()}, f"{results}/{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_warmup_banks_every_ranks_errors_then_only_its_own(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(_warmup_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    states = [torch.load(tmp_path / f"{rank}.pt") for rank in (0, 1)]
    for rank, state in enumerate(states):
        banked = {
            grid: sorted((-2 * state[f"video.errors.{grid}"].float()).flatten().tolist())
            for grid in (0, 1)
            if f"video.errors.{grid}" in state
        }
        own_after_warmup = [10.0 * rank + 3, 10.0 * rank + 4]
        expected = {0: [1.0, 2.0], 1: [11.0, 12.0]}  # warm-up steps 0 and 1 of both ranks
        expected[rank] = sorted(expected[rank] + own_after_warmup)
        assert banked == expected
        assert torch.equal(state["noise.counts"], state["video.counts"])
    assert states[0]["generator_differs"] != states[1]["generator_differs"]  # per-rank seeds


# ---- handcrafted augmentation ---------------------------------------------------------------------------------------


def test_augmentation_is_deterministic_per_generator_and_keeps_the_layout():
    frames = torch.randint(0, 256, (5, 16, 24, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    first = augment_condition_frames(frames, torch.Generator().manual_seed(3))
    again = augment_condition_frames(frames, torch.Generator().manual_seed(3))
    other = augment_condition_frames(frames, torch.Generator().manual_seed(4))
    assert first.dtype == torch.uint8 and first.shape == frames.shape
    assert torch.equal(first, again) and not torch.equal(first, other)
    changed = [not torch.equal(a, b) for a, b in zip(first, frames, strict=True)]
    assert any(changed)  # frames are degraded independently: some change, maybe not all
    with pytest.raises(ValueError, match="uint8"):
        augment_condition_frames(frames.float(), torch.Generator())


def test_hue_shift_by_hand():
    red = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1)
    assert torch.allclose(_hue_shifted(red, 1 / 3), torch.tensor([0.0, 1.0, 0.0]).view(3, 1, 1), atol=1e-6)
    image = torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(_hue_shifted(image, 0.0), image, atol=1e-6)
    assert torch.allclose(_hue_shifted(_hue_shifted(image, 0.1), -0.1), image, atol=1e-5)

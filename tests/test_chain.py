"""Chaining clips into a film: lengths, hand-over between clips, seeds, determinism and exact resume."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from svi_model.chain import ChainState, FilmRenderer, render_film, stitch
from svi_model.modes import FilmSettings, mode_settings

PROMPTS = ["a red ball on the grass", "the ball rolls to the right", "the ball stops"]


class CountingSampler:
    """The real sampler, with a record of each render call (prompt, seed, condition)."""

    def __init__(self, sampler):
        self.sampler, self.calls = sampler, []

    def render(self, prompt, seed, condition, **kwargs):
        self.calls.append((prompt, seed, condition))
        return self.sampler.render(prompt, seed, condition, **kwargs)

    def __getattr__(self, name):
        return getattr(self.sampler, name)


def settings_for(mode: str) -> FilmSettings:
    return mode_settings(mode, num_frames=13, steps=2)


@pytest.mark.parametrize(
    "mode, expected",
    [("shot", 3 * 12 + 1), ("tom", 3 * 12 + 1), ("film", 3 * 8 + 5), ("svi2", 13 + 2 * 12), ("pro", 13 + 2 * 9)],
)
def test_film_length_follows_the_stitching_rule(sampler, reference, mode, expected):
    settings = settings_for(mode)
    film = render_film(FilmRenderer(sampler, settings, reference, PROMPTS), 3)
    assert film.shape == (expected, 32, 48, 3) and film.dtype == torch.uint8
    assert settings.film_length(3) == expected


def test_stitch_keeps_all_but_the_overlap_of_every_clip_but_the_last():
    settings = FilmSettings(motion_frames=5, num_frames=13)
    clips = [torch.full((13, 1, 1, 3), k, dtype=torch.uint8) for k in range(3)]
    film = stitch(settings, clips)[:, 0, 0, 0].tolist()
    assert film == [0] * 8 + [1] * 8 + [2] * 13


def test_pro_stitch_drops_the_first_4_decoded_frames_of_continuations_as_the_released_script():
    settings = mode_settings("pro", num_frames=13)
    clips = [torch.full((13, 1, 1, 3), k, dtype=torch.uint8) for k in range(3)]
    film = stitch(settings, clips)[:, 0, 0, 0].tolist()
    assert film == [0] * 13 + [1] * 9 + [2] * 9
    assert mode_settings("pro").film_length(3) == 81 + 77 * 2  # inference_svi_2.0_pro.py, num_overlap_frame=4
    assert mode_settings("pro", overlap_frames=5).film_length(3) == 81 + 76 * 2  # the authors' README command


def test_svi2_stitch_drops_the_first_frame_of_continuations():
    settings = mode_settings("svi2", num_frames=13)
    clips = [torch.arange(13, dtype=torch.uint8).view(13, 1, 1, 1).expand(13, 1, 1, 3) + 20 * k for k in range(3)]
    film = stitch(settings, clips)[:, 0, 0, 0].tolist()
    assert film == list(range(13)) + list(range(21, 33)) + list(range(41, 53))
    assert mode_settings("svi2").film_length(10) == 81 + 80 * 9  # inference.py: video_frames[1:]


def test_stitching_is_not_part_of_what_a_clip_is():
    pro = mode_settings("pro")
    assert pro.clip_fields() == mode_settings("pro", overlap_frames=5, stitch="tail").clip_fields()
    assert "stitch" not in pro.clip_fields() and "overlap_frames" not in pro.clip_fields()


@pytest.mark.parametrize("mode", ["film", "shot", "tom", "svi2"])
def test_next_clip_is_conditioned_on_the_last_m_decoded_frames(sampler, reference, mode):
    counting = CountingSampler(sampler)
    settings = settings_for(mode)
    outputs = [out for _, out, _ in FilmRenderer(counting, settings, reference, PROMPTS).clips(3)]
    m = settings.motion_frames
    for k in (1, 2):
        condition = counting.calls[k][2]
        assert torch.equal(condition.image_encoder_frame, outputs[k - 1].frames[-m])
        tail = outputs[k - 1].frames[-m:]
        video = torch.cat([tail.permute(3, 0, 1, 2).float() / 127.5 - 1, torch.zeros(3, 13 - m, 32, 48)], dim=1)
        if settings.padding == "reference":
            video[:, m:] = reference.permute(2, 0, 1).float()[:, None] / 127.5 - 1
        torch.testing.assert_close(condition.latents, sampler.encode(video))


def test_pro_hands_over_the_last_latent(sampler, reference):
    counting = CountingSampler(sampler)
    outputs = [out for _, out, _ in FilmRenderer(counting, settings_for("pro"), reference, PROMPTS).clips(3)]
    anchor = sampler.encode(reference.permute(2, 0, 1)[:, None].float() / 127.5 - 1)
    for k in (1, 2):
        latents = counting.calls[k][2].latents
        assert torch.equal(latents[:, 1], outputs[k - 1].latents[:, -1])
        torch.testing.assert_close(latents[:, :1], anchor)
        assert not latents[:, 2:].any()
        assert torch.equal(counting.calls[k][2].image_encoder_frame, reference)


def test_seeds_and_prompts_per_clip(sampler, reference):
    counting = CountingSampler(sampler)
    settings = mode_settings("film", num_frames=13, steps=1, seed=42, prompt_repeat=2)
    list(FilmRenderer(counting, settings, reference, PROMPTS[:2]).clips(5))
    assert [seed for _, seed, _ in counting.calls] == [0, 42, 84, 126, 168]
    assert [prompt for prompt, _, _ in counting.calls] == [PROMPTS[0]] * 2 + [PROMPTS[1]] * 2 + [PROMPTS[0]]
    shot = CountingSampler(sampler)
    list(FilmRenderer(shot, mode_settings("shot", num_frames=13, steps=1), reference, PROMPTS).clips(3))
    assert [prompt for prompt, _, _ in shot.calls] == [PROMPTS[0]] * 3


def test_retakes_get_their_own_deterministic_seeds():
    settings = mode_settings("film", seed=42)
    assert [settings.seed_for(k, attempt=0) for k in range(4)] == [0, 42, 84, 126]
    retakes = [settings.seed_for(3, attempt) for attempt in (1, 2)]
    assert len({settings.seed_for(3), *retakes}) == 3
    assert retakes == [mode_settings("film", seed=42).seed_for(3, attempt) for attempt in (1, 2)]
    assert settings.seed_for(2, 1) != retakes[0] != mode_settings("film", seed=7).seed_for(3, 1)
    with pytest.raises(ValueError, match="attempt must be 0"):
        settings.seed_for(1, -1)


def test_same_seed_same_film_other_seed_other_film(sampler, reference):
    def film(seed):
        settings = mode_settings("film", num_frames=13, steps=2, seed=seed)
        return render_film(FilmRenderer(sampler, settings, reference, PROMPTS), 3)

    first = film(42)
    assert torch.equal(first, film(42))
    assert not torch.equal(first, film(7))


@pytest.mark.parametrize("mode", ["film", "pro"])
def test_resume_at_clip_k_equals_the_uninterrupted_run(sampler, reference, mode, tmp_path):
    settings = settings_for(mode)
    full = list(FilmRenderer(sampler, settings, reference, PROMPTS).clips(4))
    # The state after clip 1 goes through a file, as a stored run would keep it.
    stored = {name: value for name, value in vars(full[1][2]).items() if value is not None}
    save_file(stored, str(tmp_path / "state.safetensors"))
    state = ChainState(**load_file(str(tmp_path / "state.safetensors")))
    counting = CountingSampler(sampler)
    resumed = list(FilmRenderer(counting, settings, reference, PROMPTS).clips(4, start=2, state=state))
    assert [k for k, _, _ in resumed] == [2, 3] and len(counting.calls) == 2
    for (_, a, _), (_, b, _) in zip(full[2:], resumed, strict=True):
        assert torch.equal(a.frames, b.frames)
        assert torch.equal(a.latents, b.latents)


def test_bad_chain_requests(sampler, reference):
    settings = settings_for("film")
    with pytest.raises(ValueError, match="prompt stream is empty"):
        FilmRenderer(sampler, settings, reference, [])
    with pytest.raises(ValueError, match="empty prompt"):
        FilmRenderer(sampler, settings, reference, ["fine", "  "])
    renderer = FilmRenderer(sampler, settings, reference, PROMPTS)
    with pytest.raises(ValueError, match="at least one clip"):
        list(renderer.clips(0))
    with pytest.raises(ValueError, match="needs the state"):
        list(renderer.clips(3, start=1))
    with pytest.raises(ValueError, match="multiples of 16"):
        FilmRenderer(sampler, settings, reference[:30], PROMPTS)


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(num_frames=80), "4k\\+1"),
        (dict(num_frames=1), "4k\\+1"),
        (dict(num_frames=13, motion_frames=13), "fewer than frames per clip"),
        (dict(num_frames=81, motion_frames=90), "fewer than frames per clip"),
    ],
)
def test_bad_settings(fields, message):
    with pytest.raises(ValueError, match=message):
        FilmSettings(**fields)


def test_unknown_mode():
    with pytest.raises(ValueError, match="unknown mode 'blockbuster'"):
        mode_settings("blockbuster")


def test_text_embeddings_are_cached_for_the_most_recent_prompts_only(sampler, monkeypatch):
    from svi_model import sampler as sampler_module

    monkeypatch.setattr(sampler_module, "TEXT_CACHE_SIZE", 2)
    monkeypatch.setattr(sampler, "_text_cache", type(sampler._text_cache)())
    first = sampler.text_embeddings("a red ball")
    sampler.text_embeddings("a blue ball")
    assert sampler.text_embeddings("a red ball") is first  # used again: now the most recent
    sampler.text_embeddings("a green ball")
    assert list(sampler._text_cache) == ["a red ball", "a green ball"]


class VideoAsLatents:
    """A stand-in sampler whose `encode` hands the condition video back, so the test sees what would be encoded."""

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        return video


def test_svi2_conditions_on_the_last_frame_then_the_anchor_everywhere(reference):
    """inference.py (SVI 2.0): vae_input = [input_image, anchor × (F−1)]; clip 0's input image is the anchor."""
    settings = mode_settings("svi2", num_frames=13)
    renderer = FilmRenderer(VideoAsLatents(), settings, reference, PROMPTS)
    anchor = reference.permute(2, 0, 1).float() / 127.5 - 1
    first = renderer.condition(0, None).latents
    assert torch.equal(first, anchor[:, None].expand(3, 13, *anchor.shape[1:]))
    tail = torch.randint(0, 256, (1, 32, 48, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
    later = renderer.condition(1, ChainState(tail_frames=tail))
    assert torch.equal(later.latents[:, 0], tail[0].permute(2, 0, 1).float() / 127.5 - 1)
    assert torch.equal(later.latents[:, 1:], anchor[:, None].expand(3, 12, *anchor.shape[1:]))
    assert torch.equal(later.image_encoder_frame, tail[0])


def test_a_prompt_longer_than_the_text_encoder_reads_is_named(sampler, caplog):
    long_prompt = "a red ball rolls across the grass " * 120
    with caplog.at_level("WARNING", logger="svi_model.sampler"):
        sampler.text_embeddings(long_prompt)
    assert "tokens long: the text encoder reads the first 512" in caplog.text and "'a red ball rolls" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="svi_model.sampler"):
        sampler.text_embeddings("a red ball")
    assert caplog.text == ""

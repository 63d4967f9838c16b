"""SVI's conditioning against expectations built by hand here, not by the code under test."""

import numpy as np
import pytest
import torch

from svi_model.chain import ChainState, FilmRenderer
from svi_model.conditioning import clip_pixels, condition_video, first_frame_mask, pro_condition_latents, to_uint8
from svi_model.modes import mode_settings


def as_unit(frames: torch.Tensor) -> np.ndarray:
    """uint8 [n, H, W, 3] → [3, n, H, W] in [-1, 1], by the textbook formula 2·x/255 − 1."""
    return (2.0 * frames.numpy().astype(np.float64) / 255.0 - 1.0).transpose(3, 0, 1, 2)


def frames(n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 256, (n, 16, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_film_condition_is_five_motion_frames_then_zeros():
    motion = frames(5, 0)
    video = condition_video(motion, 81, "zeros").numpy()
    assert video.shape == (3, 81, 16, 32)
    np.testing.assert_allclose(video[:, :5], as_unit(motion), atol=1e-6)
    assert not video[:, 5:].any()


def test_shot_condition_pads_with_the_reference_everywhere():
    motion, ref = frames(1, 1), frames(1, 2)[0]
    video = condition_video(motion, 81, "reference", ref).numpy()
    np.testing.assert_allclose(video[:, :1], as_unit(motion), atol=1e-6)
    for i in range(1, 81):
        np.testing.assert_allclose(video[:, i], as_unit(ref[None])[:, 0], atol=1e-6)


def test_k_references_then_zeros():
    motion, ref = frames(1, 3), frames(1, 4)[0]
    video = condition_video(motion, 17, "reference", ref, reference_count=3).numpy()
    for i in range(1, 4):
        np.testing.assert_allclose(video[:, i], as_unit(ref[None])[:, 0], atol=1e-6)
    assert not video[:, 4:].any()


@pytest.mark.parametrize("m", [0, 81])
def test_motion_frames_must_leave_room_for_padding(m):
    with pytest.raises(ValueError, match="motion frames"):
        condition_video(frames(81, 0)[:m], 81, "zeros")


def test_mask_marks_latent_frame_zero_only():
    mask = first_frame_mask(21, 6, 8)
    assert mask.shape == (4, 21, 6, 8)
    assert (mask[:, 0] == 1).all()
    assert (mask[:, 1:] == 0).all()


def test_mask_matches_diffusers_single_image_mask(tiny_pipe):
    """diffusers' own I2V mask for one conditioning image is the same first-frame mask."""
    image = torch.zeros(1, 3, 32, 48)
    _, condition = tiny_pipe.prepare_latents(image, 1, 16, 32, 48, 13, torch.float32, torch.device("cpu"))
    assert torch.equal(condition[0, :4], first_frame_mask(4, 4, 6))


def test_clip_sees_the_whole_frame_resized_not_a_centre_crop():
    frame = torch.zeros(32, 64, 3, dtype=torch.uint8)
    frame[:, :16] = torch.tensor([255, 0, 0], dtype=torch.uint8)
    frame[:, 16:48] = torch.tensor([0, 255, 0], dtype=torch.uint8)
    frame[:, 48:] = torch.tensor([0, 0, 255], dtype=torch.uint8)
    pixels = clip_pixels(frame, 32, mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5])
    assert pixels.shape == (1, 3, 32, 32)
    # After the whole-frame resize the left quarter is still red and the right quarter blue; a centre crop
    # would have kept green only.
    assert pixels[0, 0, :, :6].mean() > 0.9 and pixels[0, 2, :, -6:].mean() > 0.9
    assert pixels[0, 1, :, 12:20].mean() > 0.9


def test_clip_pixels_of_a_frame_already_at_size_are_its_normalised_values():
    frame = frames(1, 5)[0, :, :16]
    pixels = clip_pixels(frame, 16, mean=[0.4, 0.5, 0.6], std=[0.2, 0.25, 0.3])
    expected = (frame.numpy().astype(np.float64) / 255.0 - [0.4, 0.5, 0.6]) / [0.2, 0.25, 0.3]
    np.testing.assert_allclose(pixels[0].numpy().transpose(1, 2, 0), expected, atol=1e-5)


def test_uint8_conversion_truncates():
    video = torch.tensor([-1.0, -0.99, 0.0, 0.999, 1.0, 1.5]).view(1, 6, 1, 1).repeat(3, 1, 1, 1)
    out = to_uint8(video)[:, 0, 0, 0].tolist()
    # (x + 1)·127.5 → 0, 1.275, 127.5, 254.87, 255, 318.75 → truncated and clipped
    assert out == [0, 1, 127, 254, 255, 255]


def test_pro_condition_is_anchor_previous_latent_then_zeros():
    anchor, previous = torch.randn(16, 1, 4, 6), torch.randn(16, 1, 4, 6)
    latents = pro_condition_latents(anchor, previous, 21)
    assert latents.shape == (16, 21, 4, 6)
    assert torch.equal(latents[:, 0], anchor[:, 0]) and torch.equal(latents[:, 1], previous[:, 0])
    assert not latents[:, 2:].any()
    first = pro_condition_latents(anchor, None, 21)
    assert torch.equal(first[:, 0], anchor[:, 0]) and not first[:, 1:].any()


class RecordingSampler:
    """Stands in front of the real sampler and records what reaches the VAE encoder."""

    def __init__(self, sampler):
        self.sampler, self.encoded = sampler, []

    def encode(self, video):
        self.encoded.append(video.clone())
        return self.sampler.encode(video)


@pytest.mark.parametrize("mode", ["film", "shot"])
def test_continuation_condition_comes_from_the_previous_clips_last_frames(sampler, reference, mode):
    settings = mode_settings(mode, num_frames=13)
    recorder = RecordingSampler(sampler)
    renderer = FilmRenderer(recorder, settings, reference, ["a prompt"])
    previous = torch.randint(0, 256, (13, 32, 48, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(9))
    m = settings.motion_frames
    condition = renderer.condition(1, ChainState(tail_frames=previous[-m:]))
    video = recorder.encoded[-1].numpy()
    np.testing.assert_allclose(video[:, :m], as_unit(previous[-m:]), atol=1e-6)
    pad = as_unit(reference[None])[:, 0] if mode == "shot" else 0.0
    for i in range(m, 13):
        np.testing.assert_allclose(video[:, i], np.broadcast_to(pad, video[:, i].shape), atol=1e-6)
    assert torch.equal(condition.image_encoder_frame, previous[-m])
    first = renderer.condition(0, None)
    assert torch.equal(first.image_encoder_frame, reference)
    np.testing.assert_allclose(recorder.encoded[-1].numpy()[:, 0], as_unit(reference[None])[:, 0], atol=1e-6)


def test_transformer_input_is_noise_then_mask_then_condition_latents(sampler, reference):
    """The 36 input channels at the first step: 16 seeded noise, 4 mask, 16 normalised condition latents."""
    vae = sampler.pipe.vae
    video = torch.from_numpy(as_unit(reference[None])).float()
    video = torch.cat([video, torch.zeros(3, 12, 32, 48)], dim=1)
    raw = vae.encode(video[None]).latent_dist.mode()[0]
    mean = torch.tensor(vae.config.latents_mean).view(16, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(16, 1, 1, 1)
    expected_condition = (raw - mean) / std
    expected_noise = torch.randn((1, 16, 4, 4, 6), generator=torch.Generator().manual_seed(123))

    seen = []
    hook = sampler.pipe.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["hidden_states"].clone()), with_kwargs=True
    )
    try:
        settings = mode_settings("film", num_frames=13, steps=1, guidance_scale=1.0)
        renderer = FilmRenderer(sampler, settings, reference, ["p"])
        sampler.render("p", 123, renderer.condition(0, None), steps=1, guidance_scale=1.0)
    finally:
        hook.remove()
    x = seen[0][0]
    assert x.shape == (36, 4, 4, 6)
    torch.testing.assert_close(x[:16], expected_noise[0])
    assert (x[16:20, 0] == 1).all() and (x[16:20, 1:] == 0).all()
    torch.testing.assert_close(x[20:], expected_condition, atol=1e-5, rtol=1e-5)

import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from svi_model.schedule import SVIFlowMatchScheduler, shifted_sigmas


def reference_sigmas(n: int, shift: float) -> list[float]:
    """The authors' formula, written out longhand: N warped linspace sigmas, then 0."""
    out = []
    for k in range(n):
        s = 1.0 - k / n
        out.append(shift * s / (1.0 + (shift - 1.0) * s))
    return out + [0.0]


def test_shifted_sigmas_follow_the_reference_formula():
    expected = torch.tensor(reference_sigmas(50, 5.0), dtype=torch.float64)
    got = shifted_sigmas(50, 5.0)
    assert got.shape == (51,)
    assert torch.allclose(got, expected, atol=1e-12)
    assert got[0] == 1.0 and got[-1] == 0.0


def test_scheduler_samples_on_the_reference_schedule():
    scheduler = SVIFlowMatchScheduler()
    scheduler.set_timesteps(50)
    expected = torch.tensor(reference_sigmas(50, 5.0), dtype=torch.float32)
    assert torch.allclose(scheduler.sigmas, expected, atol=1e-6)
    assert torch.allclose(scheduler.timesteps, 1000 * expected[:-1], atol=1e-3)
    assert scheduler.sigmas[-1] == 0.0


def test_euler_step_moves_along_the_velocity_by_the_sigma_gap():
    scheduler = SVIFlowMatchScheduler()
    scheduler.set_timesteps(4)
    x = torch.randn(1, 2, 3)
    v = torch.randn(1, 2, 3)
    sigmas = reference_sigmas(4, 5.0)
    stepped = scheduler.step(v, scheduler.timesteps[0], x, return_dict=False)[0]
    assert torch.allclose(stepped, x + (sigmas[1] - sigmas[0]) * v, atol=1e-6)


def test_diffusers_default_schedule_differs_which_is_why_we_override_it():
    stock = FlowMatchEulerDiscreteScheduler(shift=5.0)
    stock.set_timesteps(50)
    gap = (stock.sigmas - torch.tensor(reference_sigmas(50, 5.0), dtype=torch.float32)).abs().max()
    assert gap > 0.05

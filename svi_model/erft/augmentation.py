"""Handcrafted degradation of the condition frames: the paper's Table 6 ablation, instead of recycled errors.

The authors' `use_first_aug` path degrades every motion frame on its own, with torchvision's
`RandomApply(ColorJitter(0.3, 0.3, 0.3, hue=0.1), p=0.7)`, `RandomApply(GaussianBlur(3), p=0.5)` (σ drawn from
[0.1, 2]) and `RandomApply(RandomAdjustSharpness(2), p=0.5)` (which applies itself with p 0.5: 0.25 in all). The
same operations and probabilities are written here in torch (torchvision is not a dependency), in float on [0, 1]
and rounded once at the end, where torchvision on PIL images rounds after each operation: results differ from
torchvision's by a grey level or so. Their code also hands [-1, 1] floats to `ToPILImage`, which expects [0, 1]
and wraps the negative half; that is a bug of theirs, not reproduced here.
"""

import torch
import torch.nn.functional as F

JITTER = 0.3  # brightness, contrast and saturation factors drawn from [1 − 0.3, 1 + 0.3]
HUE_JITTER = 0.1  # hue shift drawn from [−0.1, 0.1] of a turn
JITTER_PROBABILITY = 0.7
BLUR_PROBABILITY = 0.5
BLUR_SIGMA = (0.1, 2.0)
SHARPNESS_PROBABILITY = 0.25
SHARPNESS_FACTOR = 2.0
LUMA = (0.299, 0.587, 0.114)  # ITU-R 601 grey, as PIL's "L" mode and torchvision use


def augment_condition_frames(frames: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Colour-jitter, blur and sharpen each frame independently at random: uint8 `[F, H, W, 3]` → the same.

    frames: the motion frames in the project's frame layout (what `conditioning.condition_video` takes), so the
    degraded frames go through the same conditioning and VAE encode as clean ones. The draws come from
    `generator` only: the same generator state gives the same frames.
    """
    if frames.dtype != torch.uint8 or frames.dim() != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 [F, H, W, 3], got {frames.dtype} {list(frames.shape)}")
    images = frames.permute(0, 3, 1, 2).float() / 255.0
    degraded = torch.stack([_degraded(image, generator) for image in images])
    return (degraded * 255.0).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def _degraded(image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One frame `[3, H, W]` in [0, 1] through the random chain."""
    if _uniform(generator) < JITTER_PROBABILITY:
        image = _colour_jittered(image, generator)
    if _uniform(generator) < BLUR_PROBABILITY:
        image = _blurred(image, _uniform(generator, *BLUR_SIGMA))
    if _uniform(generator) < SHARPNESS_PROBABILITY:
        image = _sharpened(image, SHARPNESS_FACTOR)
    return image


def _uniform(generator: torch.Generator, low: float = 0.0, high: float = 1.0) -> float:
    return low + (high - low) * float(torch.rand(1, generator=generator, dtype=torch.float64))


def _grey(image: torch.Tensor) -> torch.Tensor:
    """`[3, H, W]` → its luma `[1, H, W]`."""
    return sum(weight * channel for weight, channel in zip(LUMA, image, strict=True)).unsqueeze(0)


def _colour_jittered(image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Brightness, contrast, saturation and hue changed by random amounts, in a random order (as ColorJitter)."""
    order = torch.randperm(4, generator=generator).tolist()
    factors = [_uniform(generator, 1 - JITTER, 1 + JITTER) for _ in range(3)]
    shift = _uniform(generator, -HUE_JITTER, HUE_JITTER)
    for operation in order:
        if operation == 0:
            image = (image * factors[0]).clamp(0, 1)
        elif operation == 1:
            image = (factors[1] * image + (1 - factors[1]) * _grey(image).mean()).clamp(0, 1)
        elif operation == 2:
            image = (factors[2] * image + (1 - factors[2]) * _grey(image)).clamp(0, 1)
        else:
            image = _hue_shifted(image, shift)
    return image


def _hue_shifted(image: torch.Tensor, shift: float) -> torch.Tensor:
    """`[3, H, W]` with its HSV hue turned by `shift` (a fraction of the colour circle)."""
    red, green, blue = image
    value, _ = image.max(dim=0)
    chroma = value - image.min(dim=0).values
    safe_chroma = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    saturation = torch.where(value > 0, chroma / torch.where(value > 0, value, torch.ones_like(value)), 0.0)
    # The hue sector follows the largest channel: red first, then green, then blue, as the usual HSV definition.
    hue = torch.where(
        value == red,
        ((green - blue) / safe_chroma) % 6,
        torch.where(value == green, (blue - red) / safe_chroma + 2, (red - green) / safe_chroma + 4),
    )
    hue = torch.where(chroma > 0, hue / 6, 0.0)
    hue = (hue + shift) % 1.0
    # Back to RGB: each channel is value minus a chroma share that depends on its distance to the hue.
    channels = []
    for offset in (5.0, 3.0, 1.0):
        k = (offset + hue * 6) % 6
        channels.append(value - value * saturation * (torch.minimum(k, 4 - k).clamp(0, 1)))
    return torch.stack(channels)


def _blurred(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """`[3, H, W]` through a 3×3 Gaussian of standard deviation `sigma`, borders reflected (as GaussianBlur)."""
    taps = torch.exp(-torch.tensor([1.0, 0.0, 1.0]) / (2 * sigma**2))
    taps = taps / taps.sum()
    padded = F.pad(image[None], (1, 1, 1, 1), mode="reflect")
    horizontal = F.conv2d(padded, taps.view(1, 1, 1, 3).expand(3, 1, 1, 3), groups=3)
    return F.conv2d(horizontal, taps.view(1, 1, 3, 1).expand(3, 1, 3, 1), groups=3)[0]


def _sharpened(image: torch.Tensor, factor: float) -> torch.Tensor:
    """`[3, H, W]` pushed away from its smoothed self by `factor` (as adjust_sharpness; borders unchanged)."""
    kernel = torch.ones(3, 3)
    kernel[1, 1] = 5.0
    kernel = (kernel / kernel.sum()).expand(3, 1, 3, 3)
    smoothed = image.clone()
    smoothed[:, 1:-1, 1:-1] = F.conv2d(image[None], kernel, groups=3)[0]
    return (factor * image + (1 - factor) * smoothed).clamp(0, 1)

"""SVI's conditioning of one clip: the condition video, the mask, the CLIP pixels and the 2.0-Pro latents.

Pure tensor functions with no model inside, shared by inference and by error-recycling training (the authors build
the training condition with the same function as the test-time one). Frames travel as uint8 `[n, H, W, 3]`, the
layout of decoded video; the VAE sees floats in [-1, 1] laid out `[3, n, H, W]`.
"""

from typing import Literal

import torch
import torch.nn.functional as F

Padding = Literal["zeros", "reference"]

# Wan's VAE compresses time 4x after a first frame that stands alone.
TEMPORAL_COMPRESSION = 4


def latent_frame_count(num_frames: int) -> int:
    """Latent frames of a clip: frame 0 alone, then groups of 4 (81 → 21)."""
    return (num_frames - 1) // TEMPORAL_COMPRESSION + 1


def unit_range(frames: torch.Tensor) -> torch.Tensor:
    """uint8 frames `[n, H, W, 3]` → float32 `[3, n, H, W]` in [-1, 1]."""
    return frames.permute(3, 0, 1, 2).float() / 127.5 - 1.0


def to_uint8(video: torch.Tensor) -> torch.Tensor:
    """Decoded video `[3, n, H, W]` in [-1, 1] → uint8 `[n, H, W, 3]`.

    Truncates, as the authors do (`clip((x+1)·127.5, 0, 255)` then a cast); these exact bytes condition the next
    clip, so rounding instead would feed the model values it never saw.
    """
    return ((video.float() + 1.0) * 127.5).clamp(0, 255).to(torch.uint8).permute(1, 2, 3, 0).contiguous()


def condition_video(
    motion_frames: torch.Tensor,
    num_frames: int,
    padding: Padding = "zeros",
    reference: torch.Tensor | None = None,
    reference_count: int | None = None,
) -> torch.Tensor:
    """The pixel condition `[m motion frames] + [num_frames − m padding frames]`, float32 `[3, num_frames, H, W]`.

    Args:
        motion_frames: uint8 `[m, H, W, 3]`, the last m frames of the previous clip (clip 0: the reference).
        padding: "zeros" (SVI-Film, Tom: mid-grey 0 in [-1, 1]) or "reference" (SVI-Shot: the reference image).
        reference: uint8 `[H, W, 3]`, the user's image; needed for "reference" padding.
        reference_count: with "reference" padding, only the first k padding frames are the reference and the
            rest zeros; None pads with the reference all the way.
    """
    m = motion_frames.shape[0]
    if not 0 < m < num_frames:
        raise ValueError(f"motion frames must be between 1 and {num_frames - 1}, got {m}")
    pad = torch.zeros(3, num_frames - m, *motion_frames.shape[1:3])
    if padding == "reference":
        if reference is None:
            raise ValueError("reference padding needs the reference image")
        count = pad.shape[1] if reference_count is None else min(reference_count, pad.shape[1])
        pad[:, :count] = unit_range(reference[None])
    elif padding != "zeros":
        raise ValueError(f"unknown padding {padding!r}: use 'zeros' or 'reference'")
    return torch.cat([unit_range(motion_frames), pad], dim=1)


def first_frame_mask(num_latent_frames: int, latent_height: int, latent_width: int) -> torch.Tensor:
    """The 4-channel mask `[4, T, h, w]`: 1 on latent frame 0, 0 elsewhere.

    Released SVI models were trained with the mask on latent frame 0 only, even when 5 motion frames spill into
    latent frame 1 (the authors' `ref_pad_cfg` option that marks them too was never used by a released model).
    The 4 channels are the 4 pixel frames folded into each latent frame.
    """
    mask = torch.zeros(TEMPORAL_COMPRESSION, num_latent_frames, latent_height, latent_width)
    mask[:, 0] = 1.0
    return mask


def clip_pixels(frame: torch.Tensor, size: int, mean: list[float], std: list[float]) -> torch.Tensor:
    """The CLIP input for one frame, the authors' way: float32 `[1, 3, size, size]`.

    The whole frame (already at the clip's W×H) is resized to size×size with bicubic interpolation on the [-1, 1]
    tensor, without centre crop or antialias, then normalised with CLIP's mean/std. diffusers' CLIPImageProcessor
    crops the centre and PIL antialiases: both give different image tokens than the released LoRAs saw.
    """
    pixels = unit_range(frame[None]).permute(1, 0, 2, 3)
    pixels = F.interpolate(pixels, size=(size, size), mode="bicubic", align_corners=False)
    pixels = (pixels + 1.0) / 2.0
    return (pixels - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def pro_condition_latents(
    anchor_latent: torch.Tensor, previous_latent: torch.Tensor | None, num_latent_frames: int
) -> torch.Tensor:
    """SVI 2.0 Pro's latent condition `[16, T, h, w]`: [anchor, last latent of the previous clip, zeros...].

    Args:
        anchor_latent: `[16, 1, h, w]`, the normalised VAE latent of the user's first frame.
        previous_latent: `[16, 1, h, w]`, the last latent frame of the previous clip; None for clip 0.
    The zeros are zero-valued normalised latents, not an encoded grey video: Pro never decodes and re-encodes.
    """
    head = [anchor_latent] if previous_latent is None else [anchor_latent, previous_latent]
    latents = torch.cat(head, dim=1)
    pad = latents.new_zeros(latents.shape[0], num_latent_frames - latents.shape[1], *latents.shape[2:])
    return torch.cat([latents, pad], dim=1)

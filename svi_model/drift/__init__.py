"""Measuring drift in a film made clip by clip: colour, sharpness, likeness to the reference, motion, seams, and
the toy world's ground truth (`metrics`)."""

from .metrics import (
    METRICS,
    clip_metrics,
    colour_drift,
    dynamic_degree,
    ground_truth,
    seam_discontinuity,
    sharpness,
    sharpness_ratio,
    ssim_to_reference,
    toy_mask,
)

__all__ = [
    "METRICS",
    "clip_metrics",
    "colour_drift",
    "dynamic_degree",
    "ground_truth",
    "seam_discontinuity",
    "sharpness",
    "sharpness_ratio",
    "ssim_to_reference",
    "toy_mask",
]

"""Per-clip drift metrics of a film, and the toy world's ground truth, all numpy in and plain floats out.

A film is a list of clips, each uint8 `[F, H, W, 3]` (RGB; a CPU torch tensor works too). Clip k > 0 starts with
`overlap` frames repeating the last ones of clip k-1, so the film shows only its frames from index `overlap` on:
`clip_metrics` measures those new frames, and `seam_discontinuity` the step from the previous clip into them.
"""

from itertools import pairwise

import cv2
import numpy as np
from skimage.color import deltaE_ciede2000, rgb2lab
from skimage.metrics import structural_similarity

from svi_model.toyworld.render import DARK, LIGHT, MARKER_SHADE
from svi_model.toyworld.scene import COLOURS

# What `clip_metrics` reports per clip (the last two only with a toy colour).
METRICS = (
    "colour_drift",
    "sharpness_ratio",
    "ssim_to_reference",
    "dynamic_degree",
    "seam_discontinuity",
    "toy_area_ratio",
    "toy_colour_error",
)
# Added to both sides of a ratio, so that two zeros (flat frames, a frozen clip) read as 1, "unchanged", not as a
# division by zero; negligible next to any visible change or texture.
RATIO_EPSILON = 1e-6
# Largest RGB distance from the toy's colour (or its marker shade) at which a pixel still counts as the toy: the
# anti-aliased rim blends into the background, and only its inner half should count.
TOY_MAX_DISTANCE = 60.0
# Farneback parameters for tiny frames (64×112): two pyramid levels (down to 32×56 px, still wider than the toy)
# and small windows, since larger ones would average a small toy's motion with the still background around it.
FLOW_PARAMETERS = dict(pyr_scale=0.5, levels=2, winsize=7, iterations=3, poly_n=5, poly_sigma=1.1, flags=0)


def _frames(clip) -> np.ndarray:
    """`clip` as a uint8 numpy array `[F, H, W, 3]` (C-contiguous, as OpenCV wants)."""
    frames = np.ascontiguousarray(np.asarray(clip))
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise ValueError(f"expected a uint8 clip [F, H, W, 3] with F >= 1, got {frames.dtype} {frames.shape}")
    return frames


def _grey(frame: np.ndarray) -> np.ndarray:
    """uint8 `[H, W]` luma of an RGB frame `[H, W, 3]`."""
    return cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)


def _delta_e(rgb_a: np.ndarray, rgb_b: np.ndarray) -> float:
    """CIEDE2000 between two RGB colours, each float `[3]` on the 0..255 scale."""
    lab_a, lab_b = (rgb2lab(np.asarray(rgb, np.float64).reshape(1, 1, 3) / 255) for rgb in (rgb_a, rgb_b))
    return float(deltaE_ciede2000(lab_a, lab_b)[0, 0])


def _mean_colour(pixels: np.ndarray) -> np.ndarray:
    """float64 `[3]`: the mean RGB of `pixels`, any shape `[..., 3]` (a clip, or picked pixels `[N, 3]`)."""
    return pixels.reshape(-1, 3).mean(axis=0, dtype=np.float64)


def colour_drift(clip, first_clip) -> float:
    """CIEDE2000 ΔE between the mean colours of `clip` and `first_clip` (each `[F, H, W, 3]`).

    The mean is taken in RGB over all pixels of all frames, then converted to Lab: one colour per clip, so the
    metric sees a global cast (the usual drift) and not motion moving colours around inside the frame.
    """
    return _delta_e(_mean_colour(_frames(clip)), _mean_colour(_frames(first_clip)))


def sharpness(clip) -> float:
    """Mean over the frames of `clip` `[F, H, W, 3]` of the variance of the Laplacian of the grey frame (float64).

    Blur removes the high frequencies the Laplacian responds to, so the value drops as a film softens.
    """
    return float(np.mean([cv2.Laplacian(_grey(frame), cv2.CV_64F).var() for frame in _frames(clip)]))


def sharpness_ratio(clip, first_clip) -> float:
    """`sharpness(clip) / sharpness(first_clip)`, both plus `RATIO_EPSILON` (two flat clips give 1); < 1 is blurrier."""
    return (sharpness(clip) + RATIO_EPSILON) / (sharpness(first_clip) + RATIO_EPSILON)


def ssim_to_reference(clip, reference) -> float:
    """Mean SSIM (colour, data range 255) of each frame of `clip` `[F, H, W, 3]` against `reference` `[H, W, 3]`.

    The window is 7 px, or the largest odd size that fits the smaller side of smaller frames (SSIM needs one).
    """
    frames, reference = _frames(clip), _frames(np.asarray(reference)[None])[0]
    side = min(reference.shape[:2])
    win_size = min(7, side if side % 2 else side - 1)
    scores = [
        structural_similarity(frame, reference, channel_axis=-1, data_range=255, win_size=win_size) for frame in frames
    ]
    return float(np.mean(scores))


def dynamic_degree(clip) -> float:
    """Mean magnitude (pixels per frame) of Farneback optical flow between consecutive frames of `clip` `[F, H, W, 3]`.

    Averaged over every pixel of every step, so a small moving toy on a still background gives a small but clearly
    non-zero value; a single frame has no step and gives 0.
    """
    greys = [_grey(frame) for frame in _frames(clip)]
    magnitudes = [
        np.linalg.norm(cv2.calcOpticalFlowFarneback(before, after, None, **FLOW_PARAMETERS), axis=-1).mean()
        for before, after in pairwise(greys)
    ]
    return float(np.mean(magnitudes)) if magnitudes else 0.0


def _step(before: np.ndarray, after: np.ndarray) -> float:
    """Mean absolute pixel difference (0..255) between two frames `[H, W, 3]`."""
    return float(np.abs(before.astype(np.int16) - after.astype(np.int16)).mean())


def seam_discontinuity(previous_clip, clip, overlap: int = 5) -> float:
    """How much the film jumps where `clip` starts showing new frames; 1 means the seam is like any other step.

    The seam step is the mean absolute difference (0..255) between the last frame of `previous_clip` and frame
    `overlap` of `clip` (the first one the film shows after it); it is divided by the mean of the same difference
    over consecutive new frames of `clip` (index >= overlap, at least two). `RATIO_EPSILON` is added to both, so a
    frozen film with a seamless cut reads 1 and a jump out of a frozen clip reads very large.
    """
    previous, frames = _frames(previous_clip), _frames(clip)
    new = frames[overlap:]
    if len(new) < 2:
        raise ValueError(f"need at least 2 frames after the {overlap} overlap frames, got {len(frames)} frames")
    seam = _step(previous[-1], new[0])
    within = float(np.mean([_step(before, after) for before, after in pairwise(new)]))
    return (seam + RATIO_EPSILON) / (within + RATIO_EPSILON)


def toy_mask(frames, colour_name: str) -> np.ndarray:
    """bool `[F, H, W]`: the pixels of `frames` `[F, H, W, 3]` showing the toy of palette colour `colour_name`.

    A pixel is the toy when, in RGB, it is nearest to the toy's colour or its marker shade (the ball's dot) among
    those two, every other palette colour and every background shade (light and dark) of the other palette colours,
    and within `TOY_MAX_DISTANCE` of it. The toy world never paints the toy's colour into a background, so this is
    exact away from the anti-aliased rim.
    """
    frames = _frames(frames)
    toy = np.array(COLOURS[colour_name], np.float32)
    others = np.array([rgb for name, rgb in COLOURS.items() if name != colour_name], np.float32)
    # The toy's two colours come first, so indices 0 and 1 of the nearest centre mean "toy".
    centres = np.concatenate([[toy, MARKER_SHADE * toy], others, LIGHT * others, DARK * others])
    masks = []
    for frame in frames.astype(np.float32):  # one frame at a time bounds the [H, W, centres] distance array
        distances = np.linalg.norm(frame[:, :, None, :] - centres, axis=-1)
        nearest = distances.argmin(axis=-1)
        masks.append((nearest < 2) & (distances.min(axis=-1) <= TOY_MAX_DISTANCE))
    return np.stack(masks)


def ground_truth(clip, colour_name: str, reference_area: float) -> dict[str, float]:
    """The toy world's truth about `clip` `[F, H, W, 3]`, whose toy has palette colour `colour_name`.

    toy_area_ratio: mean toy pixels per frame / `reference_area` (1: the toy kept its size, 0: it vanished).
    toy_colour_error: CIEDE2000 between the mean colour of all toy pixels (marker included, so a ball on a perfect
    render reads a few units, not 0) and the palette colour; nan when no frame has a toy pixel.
    """
    if reference_area <= 0:
        raise ValueError(f"the reference must show the toy: got a reference area of {reference_area} pixels")
    frames = _frames(clip)
    mask = toy_mask(frames, colour_name)
    area_ratio = float(mask.sum(axis=(1, 2)).mean() / reference_area)
    toy_pixels = frames[mask]  # [N, 3]
    colour_error = (
        _delta_e(_mean_colour(toy_pixels), np.array(COLOURS[colour_name])) if len(toy_pixels) else float("nan")
    )
    return {"toy_area_ratio": area_ratio, "toy_colour_error": colour_error}


def clip_metrics(clips, reference, toy_colour: str | None = None, overlap: int = 5) -> list[dict]:
    """One dict of metrics per clip of a film (`clips`: each `[F, H, W, 3]`; `reference`: `[H, W, 3]`).

    Keys: colour_drift and sharpness_ratio (against clip 0, whole), ssim_to_reference, dynamic_degree,
    seam_discontinuity (None for clip 0, which has no seam) and, when `toy_colour` names the toy's palette colour,
    toy_area_ratio and toy_colour_error against the toy's pixel count in `reference`. Clips after the first are
    measured on their new frames only (index >= overlap), what the film shows of them.
    """
    first = _frames(clips[0])
    reference_area = None if toy_colour is None else float(toy_mask(np.asarray(reference)[None], toy_colour).sum())
    results, previous = [], None
    for index, clip in enumerate(clips):
        frames = _frames(clip)
        shown = frames if index == 0 else frames[overlap:]
        metrics = {
            "colour_drift": colour_drift(shown, first),
            "sharpness_ratio": sharpness_ratio(shown, first),
            "ssim_to_reference": ssim_to_reference(shown, reference),
            "dynamic_degree": dynamic_degree(shown),
            "seam_discontinuity": None if previous is None else seam_discontinuity(previous, frames, overlap),
        }
        if toy_colour is not None:
            metrics.update(ground_truth(shown, toy_colour, reference_area))
        results.append(metrics)
        previous = frames
    return results

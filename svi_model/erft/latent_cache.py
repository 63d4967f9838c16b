"""Encode training clips once with the frozen VAE, UMT5 and CLIP, store them on disk, and read them back.

Training only needs the encoders' outputs, and the frozen encoders never change: encoding each sampled clip once
removes the VAE (two fp32 encodes of 81 frames), UMT5-XXL and CLIP from every training step and from the
training GPU's memory. The price: a cached sample's random draws (start, crop, m, anchor) are fixed, where the
authors draw new ones at every step; `samples_per_video` > 1 stores several draws per video.

Folder layout (one folder per model and settings):
    index.json                 settings, seed, dtypes, and one entry per sample (file, source, caption, plan, seed)
    samples/<stem>-<key>.safetensors
        latents            [16, T, h, w]  VAE posterior mean of the clip, normalised (latent_dtype)
        condition_latents  [16, T, h, w]  the same of the condition video: y without its 4 mask channels
        text_embeddings    [n, D]         UMT5 output for the caption's n real tokens (embedding_dtype); the
                                          transformer's 512-token input is these plus zero rows, exactly as
                                          diffusers pads, so storing only the real rows loses nothing
        clip_tokens        [257, 1280]    CLIP penultimate-layer tokens of the first motion frame (embedding_dtype);
                                          absent for a model without an image encoder (Wan2.2-A14B)
    Each file also carries its index entry in its metadata, so an interrupted build resumes from the files alone.
"""

import json
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..atomic_files import atomic_path, write_text_atomic
from ..conditioning import unit_range
from ..sampler import TEXT_TOKENS, ClipSampler
from ..seeds import derived_seed
from ..video_files import VideoReadError
from .dataset import ClipSettings, DatasetError, TrainingSample, VideoItem, sample_training_clip

log = logging.getLogger(__name__)

INDEX = "index.json"
SAMPLES = "samples"
FORMAT = 1


@dataclass
class EncodedSample:
    """What one training step consumes; the same in raw and cached mode.

    latents, condition_latents: `[16, T, h, w]` normalised VAE latents of the clip and of its condition video
    (the transformer's 20 condition channels are `sampler.mask_and_latents(condition_latents)`).
    text_embeddings: `[512, D]`, zero past the caption's tokens. clip_tokens: `[257, 1280]`, or None for a model
    without an image encoder (Wan2.2-A14B).
    info: where the sample came from: source, caption, category, sample number, seed and the `ClipPlan` fields.
    """

    latents: torch.Tensor
    condition_latents: torch.Tensor
    text_embeddings: torch.Tensor
    clip_tokens: torch.Tensor | None
    caption: str
    info: dict = field(default_factory=dict)


@torch.no_grad()
def encode_sample(sampler: ClipSampler, sample: TrainingSample, info: dict | None = None) -> EncodedSample:
    """Run the frozen encoders on one `TrainingSample` (raw mode calls this every step); tensors stay on the
    encoders' device, ready for a training step there.

    The text goes through the pipeline's `encode_prompt` rather than `sampler.text_embeddings`, whose per-prompt
    cache would end up holding every caption of the dataset (4 MB each at full size).
    """
    text, _ = sampler.pipe.encode_prompt(
        sample.caption, do_classifier_free_guidance=False, max_sequence_length=TEXT_TOKENS, device=sampler.device
    )
    image = sampler.image_embeddings(sample.image_encoder_frame)
    return EncodedSample(
        latents=sampler.encode(unit_range(sample.frames)),
        condition_latents=sampler.encode(sample.condition),
        text_embeddings=text[0],
        clip_tokens=None if image is None else image[0],
        caption=sample.caption,
        info=dict(info or {}, source=str(sample.source), caption=sample.caption, **asdict(sample.plan)),
    )


def _real_tokens(text: torch.Tensor) -> torch.Tensor:
    """`[512, D]` → `[n, D]`: drop the zero rows after the last real token."""
    used = (text != 0).any(dim=-1).nonzero()
    return text[: int(used.max()) + 1 if len(used) else 0]


def _padded(text: torch.Tensor) -> torch.Tensor:
    """`[n, D]` → `[512, D]` with zero rows, as diffusers pads."""
    return torch.cat([text, text.new_zeros(TEXT_TOKENS - text.shape[0], text.shape[1])])


def _sample_file(item: VideoItem, sample_seed: int) -> str:
    """The file of a sample: the video's stem for people, its seed (unique per video and sample) for uniqueness."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", item.path.stem)[:60]
    return f"{stem}-{sample_seed:016x}.safetensors"


def _header(settings: ClipSettings, seed: int, latent_dtype: torch.dtype, embedding_dtype: torch.dtype) -> dict:
    return {
        "format": FORMAT,
        "settings": asdict(settings),
        "seed": seed,
        "latent_dtype": str(latent_dtype).removeprefix("torch."),
        "embedding_dtype": str(embedding_dtype).removeprefix("torch."),
    }


def _write_index(folder: Path, header: dict, entries: list[dict], skipped: list[dict]) -> None:
    write_text_atomic(folder / INDEX, json.dumps(dict(header, samples=entries, skipped=skipped), indent=1))


def _write_sample(path: Path, encoded: EncodedSample, latent_dtype: torch.dtype, embedding_dtype: torch.dtype) -> None:
    """One sample file, written atomically, its index entry in the metadata."""
    tensors = {
        "latents": encoded.latents.to(latent_dtype),
        "condition_latents": encoded.condition_latents.to(latent_dtype),
        "text_embeddings": _real_tokens(encoded.text_embeddings).to(embedding_dtype),
    }
    if encoded.clip_tokens is not None:
        tensors["clip_tokens"] = encoded.clip_tokens.to(embedding_dtype)
    with atomic_path(path) as tmp:
        save_file(
            {key: value.cpu().contiguous() for key, value in tensors.items()},
            str(tmp),
            metadata={"entry": json.dumps(encoded.info)},
        )


def _stored_entry(path: Path) -> dict:
    """The index entry a sample file carries in its metadata (reading the header only, not the tensors)."""
    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()["entry"])


@dataclass
class CacheBuild:
    """What `build_latent_cache` did: samples written now, found already on disk, and videos it could not read."""

    folder: Path
    written: int
    reused: int
    skipped: list[dict]


def build_latent_cache(
    items: list[VideoItem],
    sampler: ClipSampler,
    out_dir: str | Path,
    settings: ClipSettings = ClipSettings(),
    samples_per_video: int = 1,
    seed: int = 0,
    latent_dtype: torch.dtype = torch.float32,
    embedding_dtype: torch.dtype = torch.bfloat16,
    progress: bool = True,
) -> CacheBuild:
    """Sample `samples_per_video` clips per video, encode each once, and store it in `out_dir`.

    Sample k of a video is drawn from a generator seeded by (video path, k, seed), so it is the same clip in any
    run and any order. Resumable: samples whose file exists are not recomputed (a second identical call writes
    nothing), and raising `samples_per_video` later adds only the new ones. A folder built with other settings,
    seed or dtypes is refused (the model is not recorded: keep one folder per model). Unreadable videos are
    skipped (logged and listed in `index.json`). Several processes may build shards of `items` into one folder;
    each writes an index of its own shard, so finish with one call over all items: it only reuses, and indexes all.
    latent_dtype: float32 keeps the VAE latents exact (the authors cast them to bf16 before training);
    embedding_dtype: bf16 halves the text and CLIP files at no cost when the transformer runs in bf16.
    """
    folder = Path(out_dir)
    header = _header(settings, seed, latent_dtype, embedding_dtype)
    if (folder / INDEX).is_file():
        existing = {key: value for key, value in json.loads((folder / INDEX).read_text()).items() if key in header}
        if existing != header:
            raise DatasetError(
                f"{folder} holds a latent cache built with {existing}, not {header}: use another folder for "
                "other settings"
            )
    else:
        _write_index(folder, header, [], [])
    entries, skipped, written, reused = [], [], 0, 0
    bar = tqdm(total=len(items) * samples_per_video, desc="latent cache", unit="sample", disable=not progress)
    for item in items:
        for number in range(samples_per_video):
            sample_seed = derived_seed(str(item.path), number, seed)
            path = folder / SAMPLES / _sample_file(item, sample_seed)
            if path.is_file():
                entries.append(_stored_entry(path))
                reused += 1
                bar.update()
                continue
            try:
                sample = sample_training_clip(item, settings, torch.Generator().manual_seed(sample_seed))
            except VideoReadError as error:
                log.warning("skipping: %s", error)
                skipped.append({"source": str(item.path), "reason": str(error)})
                bar.update(samples_per_video - number)
                break
            info = {"file": path.name, "category": item.category, "sample": number, "seed": sample_seed}
            encoded = encode_sample(sampler, sample, info)
            _write_sample(path, encoded, latent_dtype, embedding_dtype)
            entries.append(encoded.info)
            written += 1
            bar.update()
            bar.set_postfix(written=written, reused=reused, skipped=len(skipped))
    bar.close()
    _write_index(folder, header, entries, skipped)
    return CacheBuild(folder, written, reused, skipped)


class LatentCacheDataset(torch.utils.data.Dataset):
    """Cached mode: the samples of a folder written by `build_latent_cache`, as `EncodedSample`s.

    Tensors come back in their stored dtypes (cast them to the transformer's); text is re-padded to 512 tokens.
    Use `DataLoader(..., batch_size=None)`: items are dataclasses, one clip per step as trained.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        if not (self.folder / INDEX).is_file():
            raise DatasetError(f"{self.folder} has no {INDEX}: build the cache with build_latent_cache first")
        index = json.loads((self.folder / INDEX).read_text())
        self.settings = ClipSettings(**index["settings"])
        self.entries: list[dict] = index["samples"]
        if not self.entries:
            raise DatasetError(f"the latent cache in {self.folder} holds no samples")

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> EncodedSample:
        entry = self.entries[index]
        tensors = load_file(str(self.folder / SAMPLES / entry["file"]))
        return EncodedSample(
            latents=tensors["latents"],
            condition_latents=tensors["condition_latents"],
            text_embeddings=_padded(tensors["text_embeddings"]),
            clip_tokens=tensors.get("clip_tokens"),
            caption=entry["caption"],
            info=entry,
        )

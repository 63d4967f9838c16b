"""Where a training step's clips come from: the per-epoch data order, the latent cache or raw clips, and the
frozen encoders that build the cache (or encode raw clips at every step).

Every process trains on its share of one shuffled order per epoch, the same in every process and in a resumed
run, so step n always sees the same clips. Raw clips are encoded on the fly with `latent_cache.encode_sample`;
cached ones are read back as they were stored.
"""

import dataclasses
import math
from collections.abc import Iterator

import torch
from accelerate import PartialState
from diffusers import WanImageToVideoPipeline, WanTransformer3DModel

from ..conditioning import unit_range
from ..loading import load_wan_pipeline
from ..sampler import ClipSampler
from ..seeds import derived_seed
from .augmentation import augment_condition_frames
from .dataset import ClipDataset, DatasetError, TrainingSample, VideoItem, read_video_index
from .experts import EXPERT_DITS, Expert
from .latent_cache import CacheBuild, EncodedSample, LatentCacheDataset, build_latent_cache, encode_sample
from .step import StepInputs
from .train_config import TrainConfig


def process_order(size: int, epoch: int, seed: int, processes: int, rank: int) -> list[int]:
    """This process's dataset indices for `epoch`: one permutation shared by all processes (seeded by seed and
    epoch), wrapped around to a multiple of the process count (as DistributedSampler pads), dealt round-robin."""
    permutation = torch.randperm(size, generator=torch.Generator().manual_seed(derived_seed(seed, "order", epoch)))
    per_process = math.ceil(size / processes)
    padded = permutation.repeat(math.ceil(per_process * processes / size))[: per_process * processes]
    return padded[rank::processes].tolist()


class TrainingClips:
    """The run's clips: a `LatentCacheDataset`, or a `ClipDataset` encoded at every step by `sampler`."""

    def __init__(self, dataset: LatentCacheDataset | ClipDataset, sampler: ClipSampler | None = None, augment=False):
        self.dataset, self.sampler, self.augment = dataset, sampler, augment

    def batches(self, order: list[int], batch_size: int, num_workers: int, epoch: int) -> Iterator[list]:
        """Lists of `batch_size` items (the last may be shorter) in `order`, read by `num_workers` processes."""
        if isinstance(self.dataset, ClipDataset):
            self.dataset.set_epoch(epoch)
        yield from torch.utils.data.DataLoader(
            self.dataset, sampler=order, batch_size=batch_size, collate_fn=list, num_workers=num_workers
        )

    def inputs(self, items: list, generator: torch.Generator, device: torch.device, dtype: torch.dtype) -> StepInputs:
        """Stack a batch's items (encoding raw clips first) into the step's inputs on `device`, the text and CLIP
        tokens in `dtype`. `generator` draws the handcrafted degradation, when that ablation is on."""
        if self.sampler is not None:
            items = [encode_sample(self.sampler, self._augmented(item, generator)) for item in items]
        encoded: list[EncodedSample] = items
        # A model without an image encoder (Wan2.2-A14B) has no CLIP tokens in any sample.
        image = encoded[0].clip_tokens is not None
        return StepInputs(
            latents=torch.stack([e.latents for e in encoded]).to(device, torch.float32),
            condition_latents=torch.stack([e.condition_latents for e in encoded]).to(device, torch.float32),
            text=torch.stack([e.text_embeddings for e in encoded]).to(device, dtype),
            clip_tokens=torch.stack([e.clip_tokens for e in encoded]).to(device, dtype) if image else None,
        )

    def _augmented(self, sample: TrainingSample, generator: torch.Generator) -> TrainingSample:
        """The paper's handcrafted-degradation ablation: the motion frames (and so the image-encoder frame, the
        first of them) degraded before they are encoded, as test-time inputs would come degraded from the previous
        clip."""
        if not self.augment:
            return sample
        count = sample.plan.motion_count
        motion = augment_condition_frames(sample.frames[:count], generator)
        condition = sample.condition.clone()
        condition[:, :count] = unit_range(motion)
        return dataclasses.replace(sample, condition=condition, image_encoder_frame=motion[0])


def cpu_pipeline(config: TrainConfig) -> WanImageToVideoPipeline:
    """The model folder's pipeline on the CPU, the transformer and UMT5 in the training dtype (bf16 or fp32)."""
    dtype = config.dtype()
    return load_wan_pipeline(config.model, device="cpu", transformer_dtype=dtype, text_encoder_dtype=dtype)


def take_trained_dit(pipe: WanImageToVideoPipeline, expert: Expert) -> WanTransformer3DModel:
    """The DiT a run trains, out of `pipe`: its one DiT (expert none), or the chosen Wan2.2 expert.

    The other expert is dropped from the pipeline (which only encodes from now on): raw mode keeps the pipeline
    for the whole run, and an A14B expert takes 28 GB in bf16.
    """
    transformer = getattr(pipe, EXPERT_DITS[expert])
    if expert != "none":
        setattr(pipe, EXPERT_DITS["low" if expert == "high" else "high"], None)
    return transformer


def encoders_on(pipe: WanImageToVideoPipeline, device: torch.device) -> ClipSampler:
    """A sampler whose frozen encoders (VAE, UMT5, and CLIP where the model has one) run on `device`; the
    transformers stay where they are."""
    for encoder in (pipe.vae, pipe.text_encoder, pipe.image_encoder):
        if encoder is not None:
            encoder.to(device)
    return ClipSampler(pipe)


def prepare_latent_cache(config: TrainConfig) -> CacheBuild:
    """Load the model folder's encoders and build `config`'s latent cache: a cache job on its own (e.g. a flow
    task before training). Under a multi-process launcher each process encodes its share on its own GPU."""
    state = PartialState(cpu=not torch.cuda.is_available())
    items = read_video_index(config.data.videos, config.data.missing_caption)
    return build_training_cache(config, items, encoders_on(cpu_pipeline(config), state.device))


def build_training_cache(config: TrainConfig, items: list[VideoItem], sampler: ClipSampler) -> CacheBuild:
    """Encode `items` (the index of `config.data.videos`) into `config.data.latent_cache` (resumable: existing
    samples are kept).

    Under several processes each first encodes its share (the main one shows its progress); then every process
    goes over all samples, which only reads them back, and writes the same index. Raises DatasetError if the
    dataset has no video, or no video could be read.
    """
    state = PartialState(cpu=not torch.cuda.is_available())
    options = dict(
        settings=config.clip_settings(),
        samples_per_video=config.data.samples_per_video,
        seed=config.seed,
        latent_dtype=torch.float32,
        embedding_dtype=config.dtype(),
    )
    folder = config.data.latent_cache
    alone = state.num_processes == 1
    if not alone:
        share = items[state.process_index :: state.num_processes]
        build_latent_cache(share, sampler, folder, **options, progress=state.is_main_process)
        state.wait_for_everyone()
    build = build_latent_cache(items, sampler, folder, **options, progress=alone)
    state.wait_for_everyone()
    if build.written + build.reused == 0:
        reasons = "; ".join(skip["reason"] for skip in build.skipped[:3])
        raise DatasetError(f"none of the {len(items)} videos under {config.data.videos} could be read: {reasons}")
    return build

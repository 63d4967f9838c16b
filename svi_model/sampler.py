"""One SVI clip on diffusers' Wan components: encoders, the condition, the Euler/CFG denoising loop, the decoder.

`ClipSampler` wraps a `WanImageToVideoPipeline` used as the container of its components (and of their offload
hooks). The stock `__call__` cannot take SVI's condition (several motion frames, reference padding, latent
chaining, CLIP tokens of a motion frame), so the denoising loop is ours; it mirrors the stock loop step for step,
which `tests/test_parity.py` checks against diffusers' own pipeline.
"""

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from diffusers import WanImageToVideoPipeline
from diffusers.pipelines.wan.pipeline_wan_i2v import retrieve_latents
from diffusers.utils.torch_utils import get_module_execution_device, randn_tensor

from .conditioning import clip_pixels, first_frame_mask, to_uint8, unit_range
from .schedule import SVIFlowMatchScheduler

# The English translation of Wan's default negative prompt, as the authors' test script passes it.
SVI_NEGATIVE_PROMPT = (
    "bright tones, overexposed, static, blurred details, subtitles, style, works, paintings, images, static, "
    "overall gray, worst quality, low quality, JPEG compression residue, ugly, incomplete, extra fingers, poorly "
    "drawn hands, poorly drawn faces, deformed, disfigured, misshapen limbs, fused fingers, still picture, messy "
    "background, three legs, many people in the background, walking backwards"
)
TEXT_CACHE_SIZE = 64  # prompts whose embeddings stay cached
FRAME_CACHE_SIZE = 8  # frames whose CLIP tokens or reference latent stay cached
# diffusers' attention splits image tokens from text tokens by this hard-coded text length.
TEXT_TOKENS = 512
# OpenAI CLIP normalisation, used when the model folder's image processor does not say otherwise.
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

# The SVI authors' Wan2.2 pipelines hand the denoising from the high-noise to the low-noise expert once the timestep
# drops below 0.875·1000 (`switch_DiT_boundary=0.875` in diffsynth/pipelines/wan_video_svi*.py); diffusers'
# Wan2.2-I2V-A14B folder configures 0.9. SVI's LoRAs were trained and tested at 0.875: it is the default here.
SVI_EXPERT_BOUNDARY = 0.875

StepCallback = Callable[[int, int], None]
log = logging.getLogger(__name__)


@dataclass
class ClipCondition:
    """Everything a clip is conditioned on besides its prompt and seed.

    latents: `[16, T, h, w]` normalised condition latents (the VAE encoding of the condition video, or Pro's
        latent stack).
    image_encoder_frame: uint8 `[H, W, 3]`, the frame whose CLIP image-encoder tokens the clip sees.
    """

    latents: torch.Tensor
    image_encoder_frame: torch.Tensor


@dataclass
class ClipOutput:
    """A finished clip: uint8 frames `[F, H, W, 3]` and its normalised latents `[16, T, h, w]` (float32)."""

    frames: torch.Tensor
    latents: torch.Tensor


def mask_and_latents(latents: torch.Tensor) -> torch.Tensor:
    """The transformer's 20 condition channels: the first-frame mask, then the condition latents.

    `[16, T, h, w]` → `[20, T, h, w]`, or with a batch `[B, 16, T, h, w]` → `[B, 20, T, h, w]`. Inference and
    error-recycling training both build the DiT's condition here.
    """
    mask = first_frame_mask(*latents.shape[-3:]).to(latents)
    return torch.cat([mask.expand(*latents.shape[:-4], *mask.shape), latents], dim=-4)


def predict_velocity(
    transformer: torch.nn.Module,
    model_input: torch.Tensor,
    timestep: torch.Tensor,
    text_embeds: torch.Tensor,
    image_embeds: torch.Tensor | None,
) -> torch.Tensor:
    """The DiT's predicted velocity `[B, 16, T, h, w]`, called the same way in sampling and in training.

    Args:
        transformer: a WanTransformer3DModel, or a wrapper of one (DDP, PEFT) that forwards its keywords.
        model_input: `[B, 36, T, h, w]` = noisy latents, then `mask_and_latents` of the condition latents.
        timestep: `[B]`, 1000·σ. text_embeds: `[B, 512, D]`. image_embeds: `[B, 257, 1280]` (real size), or None
            for a DiT without image tokens (Wan2.2-A14B).
    """
    return transformer(
        hidden_states=model_input,
        timestep=timestep,
        encoder_hidden_states=text_embeds,
        encoder_hidden_states_image=image_embeds,
        return_dict=False,
    )[0]


def _cache_context(transformer: torch.nn.Module, name: str):
    """diffusers' cache context `name` (it keys a step cache's state: cond and uncond each keep their own), or
    nothing for a DiT without a step cache."""
    return transformer.cache_context(name) if getattr(transformer, "is_cache_enabled", False) else nullcontext()


def _frame_key(kind: str, frame: torch.Tensor) -> tuple:
    """A cache key for what `kind` makes of a uint8 frame: its shape and a digest of its bytes (1 ms at 480p)."""
    digest = hashlib.blake2b(frame.detach().cpu().contiguous().numpy().tobytes(), digest_size=16).hexdigest()
    return kind, tuple(frame.shape), digest


class ClipSampler:
    """Renders one clip from a prompt, a seed and a `ClipCondition`.

    Text embeddings are cached per prompt (a stream repeats prompts; the negative prompt never changes), the
    `TEXT_CACHE_SIZE` most recently used ones (4 MB each on the GPU at real size); CLIP tokens and reference latents
    per frame content, the `FRAME_CACHE_SIZE` most recent: Pro's anchor frame is encoded once per film, however
    many `FilmRenderer`s its clips are rendered by.

    `batch_cfg`: the conditional and unconditional forwards of a guided step run as one forward of batch 2 (same
    output up to floating-point rounding; twice the activation memory of one forward).

    Two experts (a pipeline with `transformer_2`, Wan2.2-A14B): the high-noise `transformer` predicts while the
    timestep is at or above `boundary`·1000, the low-noise `transformer_2` below it, in one Euler loop; `boundary`
    defaults to `SVI_EXPERT_BOUNDARY`, not the folder's `boundary_ratio`. `swap_experts`: only the expert that is
    denoising sits on the execution device, the other on the CPU (the pipeline loaded with offload "experts").
    """

    def __init__(
        self,
        pipe: WanImageToVideoPipeline,
        negative_prompt: str = SVI_NEGATIVE_PROMPT,
        boundary: float | None = None,
        swap_experts: bool = False,
        batch_cfg: bool = False,
    ):
        self.pipe = pipe
        self.negative_prompt = negative_prompt
        self.swap_experts = swap_experts
        self.batch_cfg = batch_cfg
        two_experts = getattr(pipe, "transformer_2", None) is not None
        self.boundary = (SVI_EXPERT_BOUNDARY if boundary is None else boundary) if two_experts else None
        self._schedulers: dict[float, SVIFlowMatchScheduler] = {}
        self._text_cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._frame_cache: OrderedDict[tuple, torch.Tensor | None] = OrderedDict()
        vae = pipe.vae.config
        self._latents_mean = torch.tensor(vae.latents_mean).view(vae.z_dim, 1, 1, 1)
        self._latents_inv_std = 1.0 / torch.tensor(vae.latents_std).view(vae.z_dim, 1, 1, 1)

    @property
    def device(self) -> torch.device:
        return self.pipe._execution_device

    @torch.no_grad()  # inference: no autograd graphs (and none kept alive by the embedding cache)
    def text_embeddings(self, prompt: str) -> torch.Tensor:
        """UMT5 embeddings `[1, 512, D]`, zero-padded past the prompt's tokens."""
        if prompt in self._text_cache:
            self._text_cache.move_to_end(prompt)
            return self._text_cache[prompt]
        tokens = len(self.pipe.tokenizer(prompt, add_special_tokens=True).input_ids)
        if tokens > TEXT_TOKENS:
            log.warning(
                "prompt %r… is %d tokens long: the text encoder reads the first %d, the rest is cut off",
                prompt[:60],
                tokens,
                TEXT_TOKENS,
            )
        embeds, _ = self.pipe.encode_prompt(
            prompt, do_classifier_free_guidance=False, max_sequence_length=TEXT_TOKENS, device=self.device
        )
        self._text_cache[prompt] = embeds
        if len(self._text_cache) > TEXT_CACHE_SIZE:
            self._text_cache.popitem(last=False)
        return embeds

    def scheduler(self, shift: float | None = None) -> SVIFlowMatchScheduler:
        """The Euler flow-matching scheduler at `shift` (default: the model's, SVI's 5); distill recipes use others."""
        if shift is None or shift == self.pipe.scheduler.config.shift:
            return self.pipe.scheduler
        if shift not in self._schedulers:
            self._schedulers[shift] = SVIFlowMatchScheduler(shift=shift)
        return self._schedulers[shift]

    def experts(self, steps: int, shift: float | None = None, high_noise_steps: int | None = None) -> list[int]:
        """Which expert predicts at each of `steps` steps: 0 the (high-noise) `transformer`, 1 the low-noise
        `transformer_2` (all 0 with one DiT). `high_noise_steps` splits by count (distill recipes: 3 + 3 of 6)
        instead of at the boundary."""
        if self.boundary is None:
            return [0] * steps
        if high_noise_steps is not None:
            return [0 if step < high_noise_steps else 1 for step in range(steps)]
        scheduler = self.scheduler(shift)
        scheduler.set_timesteps(steps)
        switch = self.boundary * scheduler.config.num_train_timesteps
        return [0 if t >= switch else 1 for t in scheduler.timesteps.tolist()]

    def _by_frame(self, kind: str, frame: torch.Tensor, compute: Callable[[], torch.Tensor | None]):
        """What `compute` makes of `frame`, computed once per frame content (LRU of `FRAME_CACHE_SIZE`)."""
        key = _frame_key(kind, frame)
        if key in self._frame_cache:
            self._frame_cache.move_to_end(key)
            return self._frame_cache[key]
        self._frame_cache[key] = value = compute()
        if len(self._frame_cache) > FRAME_CACHE_SIZE:
            self._frame_cache.popitem(last=False)
        return value

    def image_embeddings(self, frame: torch.Tensor) -> torch.Tensor | None:
        """CLIP ViT penultimate-layer tokens `[1, 257, 1280]` (real size) of a uint8 frame `[H, W, 3]`; None for a
        model without an image encoder (Wan2.2-A14B: its DiT takes no image tokens). Computed once per frame."""
        return self._by_frame("clip", frame, lambda: self._clip_tokens(frame))

    def reference_latent(self, frame: torch.Tensor) -> torch.Tensor:
        """The normalised VAE latent `[16, 1, h, w]` of one uint8 frame `[H, W, 3]` (Pro's anchor), encoded once
        per frame."""
        return self._by_frame("vae", frame, lambda: self.encode(unit_range(frame[None])))

    @torch.no_grad()
    def _clip_tokens(self, frame: torch.Tensor) -> torch.Tensor | None:
        encoder = self.pipe.image_encoder
        if encoder is None:
            return None
        processor = self.pipe.image_processor
        pixels = clip_pixels(
            frame,
            size=encoder.config.image_size,
            mean=list(getattr(processor, "image_mean", None) or CLIP_MEAN),
            std=list(getattr(processor, "image_std", None) or CLIP_STD),
        )
        device = get_module_execution_device(encoder)
        hidden = encoder(pixel_values=pixels.to(device, encoder.dtype), output_hidden_states=True).hidden_states
        return hidden[-2].to(self.device)

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """VAE posterior mean of a `[3, F, H, W]` video in [-1, 1], normalised: float32 `[16, T, h, w]`."""
        vae = self.pipe.vae
        device = get_module_execution_device(vae)
        posterior = vae.encode(video[None].to(device, vae.dtype))
        latents = retrieve_latents(posterior, sample_mode="argmax")[0].float()
        return (latents - self._latents_mean.to(latents.device)) * self._latents_inv_std.to(latents.device)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents `[16, T, h, w]` → video `[3, F, H, W]` in [-1, 1] (float32)."""
        vae = self.pipe.vae
        device = get_module_execution_device(vae)
        latents = latents.to(device, vae.dtype)
        raw = latents / self._latents_inv_std.to(latents) + self._latents_mean.to(latents)
        return vae.decode(raw[None], return_dict=False)[0][0].float()

    @torch.no_grad()
    def denoise(
        self,
        condition: torch.Tensor,
        image_embeds: torch.Tensor | None,
        prompt_embeds: torch.Tensor,
        negative_embeds: torch.Tensor | None,
        seed: int,
        steps: int,
        guidance_scale: float,
        on_step: StepCallback | None = None,
        guidance_scale_2: float | None = None,
        shift: float | None = None,
        high_noise_steps: int | None = None,
    ) -> torch.Tensor:
        """Flow-matching Euler with text CFG from seeded noise. Returns float32 latents `[16, T, h, w]`.

        Args:
            condition: `[20, T, h, w]` = 4 mask channels + 16 condition-latent channels.
            image_embeds: CLIP tokens, or None for a DiT without image tokens.
            negative_embeds: None runs without guidance (guidance_scale must then be ≤ 1).
            guidance_scale_2: the low-noise expert's guidance (default: `guidance_scale`).
            shift, high_noise_steps: the schedule's shift and the two experts' split (`scheduler`, `experts`).
        The noise is drawn on the CPU from a generator seeded with `seed`, so a clip is the same on any device.
        """
        dtype = self.pipe.transformer.dtype
        scheduler = self.scheduler(shift)
        experts = self.experts(steps, shift, high_noise_steps)  # first: it sets the scheduler's timesteps itself
        scheduler.set_timesteps(steps, device=self.device)
        shape = (1, self.pipe.vae.config.z_dim, *condition.shape[1:])
        latents = randn_tensor(
            shape, generator=torch.Generator("cpu").manual_seed(seed), device=self.device, dtype=torch.float32
        )
        condition = condition[None].to(self.device, torch.float32)
        scales = (guidance_scale, guidance_scale if guidance_scale_2 is None else guidance_scale_2)
        image_embeds = None if image_embeds is None else image_embeds.to(dtype)
        prompt_embeds = prompt_embeds.to(dtype)
        negative_embeds = None if negative_embeds is None else negative_embeds.to(dtype)
        transformers = (self.pipe.transformer, getattr(self.pipe, "transformer_2", None))
        for transformer in transformers:
            # A step cache keeps what it saw in the previous clip: each clip starts afresh, as a resumed film does.
            if getattr(transformer, "is_cache_enabled", False):
                transformer._reset_stateful_cache()
        for i, (t, expert) in enumerate(zip(scheduler.timesteps, experts, strict=True)):
            if self.swap_experts and (i == 0 or expert != experts[i - 1]):
                self._only_on_device(transformers[expert], transformers[1 - expert])
            transformer, scale = transformers[expert], scales[expert]
            model_input = torch.cat([latents, condition], dim=1).to(dtype)
            negative = negative_embeds if scale > 1.0 else None
            velocity = self._velocity(transformer, model_input, t, prompt_embeds, negative, image_embeds, scale)
            latents = scheduler.step(velocity, t, latents, return_dict=False)[0]
            if on_step is not None:
                on_step(i + 1, steps)
        return latents[0].float()

    def _velocity(
        self,
        transformer: torch.nn.Module,
        model_input: torch.Tensor,
        t: torch.Tensor,
        prompt_embeds: torch.Tensor,
        negative_embeds: torch.Tensor | None,
        image_embeds: torch.Tensor | None,
        scale: float,
    ) -> torch.Tensor:
        """The (guided, when `negative_embeds` is given) velocity `[1, 16, T, h, w]` at timestep `t` (a scalar):
        cond and uncond in two forwards as diffusers' pipeline runs them, or in one of batch 2 (`batch_cfg`)."""
        if negative_embeds is None:
            with _cache_context(transformer, "cond"):
                return predict_velocity(transformer, model_input, t.expand(1), prompt_embeds, image_embeds)
        if self.batch_cfg:
            images = None if image_embeds is None else image_embeds.expand(2, -1, -1)
            with _cache_context(transformer, "cond_uncond"):
                both = predict_velocity(
                    transformer,
                    model_input.expand(2, -1, -1, -1, -1),
                    t.expand(2),
                    torch.cat([prompt_embeds, negative_embeds]),
                    images,
                )
            cond, uncond = both.chunk(2)
        else:
            with _cache_context(transformer, "cond"):
                cond = predict_velocity(transformer, model_input, t.expand(1), prompt_embeds, image_embeds)
            with _cache_context(transformer, "uncond"):
                uncond = predict_velocity(transformer, model_input, t.expand(1), negative_embeds, image_embeds)
        return uncond + scale * (cond - uncond)

    def _only_on_device(self, active: torch.nn.Module, waiting: torch.nn.Module) -> None:
        """Put the waiting expert on the CPU first (freeing its memory), then the active one on the device."""
        waiting.to("cpu")
        active.to(self.device)

    @torch.no_grad()
    def render(
        self,
        prompt: str,
        seed: int,
        condition: ClipCondition,
        steps: int = 50,
        guidance_scale: float = 5.0,
        on_step: StepCallback | None = None,
        guidance_scale_2: float | None = None,
        shift: float | None = None,
        high_noise_steps: int | None = None,
        negative_prompt: str | None = None,
    ) -> ClipOutput:
        """One clip: denoise under `condition`, decode in the VAE's dtype, truncate to uint8.

        guidance_scale_2: the low-noise expert's guidance with two experts (default: `guidance_scale`).
        shift, high_noise_steps: another schedule shift, and the experts split by step count (distill recipes).
        negative_prompt: this clip's, instead of the sampler's.
        """
        guided = max(guidance_scale, guidance_scale if guidance_scale_2 is None else guidance_scale_2) > 1.0
        negative = self.text_embeddings(negative_prompt or self.negative_prompt) if guided else None
        latents = self.denoise(
            mask_and_latents(condition.latents),
            self.image_embeddings(condition.image_encoder_frame),
            self.text_embeddings(prompt),
            negative,
            seed,
            steps,
            guidance_scale,
            on_step,
            guidance_scale_2,
            shift,
            high_noise_steps,
        )
        frames = to_uint8(self.decode(latents)).cpu()
        return ClipOutput(frames=frames, latents=latents.cpu())

"""Tiny Wan I2V components of the real diffusers/transformers classes, built offline in well under a second.

Wan2.1-I2V: the real architecture (36 input channels, CLIP image tokens, added K/V projections, a causal VAE with
16 latent channels and the 4x temporal / 8x spatial compression) at a few kB of random weights. Wan2.2-I2V-A14B
(`wan22=True`): two experts of that DiT without the image tokens (no CLIP image encoder), the high-noise one as
`transformer`, the low-noise one as `transformer_2`, and the folder's `boundary_ratio` as diffusers ships it (0.9).
Every code path of the engine runs on a CPU in tests and in the demo. Nothing here downloads anything: the UMT5
tokenizer is a unigram vocabulary written out below (whole words plus single characters, so any text tokenizes).
"""

import os

import torch
from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanTransformer3DModel
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    CLIPVisionModel,
    T5Tokenizer,
    UMT5Config,
    UMT5EncoderModel,
)

from .schedule import SVI_SHIFT

# Words common in SVI prompt streams and in the authors' negative prompt; anything else falls back to characters.
_WORDS = """a an the of and in on at to with from into over under across through around toward while as is are
its his her their it he she they camera slowly quickly gently pans tilts zooms moves walks runs flies swims rolls
turns looks smiles stands sits jumps dances rides drives falls rises glows shines light lighting sunlight sunset
sunrise night day morning evening sky cloud clouds sea ocean wave waves beach sand water river lake forest tree
trees grass field flower flowers mountain mountains snow rain wind city street road car cars house window door room
man woman person people child children girl boy dog cat horse bird fish ball red blue green yellow white black
golden bright dark warm soft cinematic shot close wide view background foreground scene slow motion video frame
style quality high detailed realistic natural smooth steady still static blurred details subtitles works paintings
images overall gray worst low jpeg compression residue ugly incomplete extra fingers poorly drawn hands faces
deformed disfigured misshapen limbs fused picture messy three legs many backwards walking tones overexposed""".split()
_CHARACTERS = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,;:!?'\"-()&/")


def tiny_tokenizer(words: tuple[str, ...] = ()) -> T5Tokenizer:
    """A UMT5-layout tokenizer (`<pad>`=0, `</s>`=1, `<unk>`=2) over a fixed unigram vocabulary, plus `words`
    (a model trained on a known language, the toy world's, gets one token per word of it)."""
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [("\u2581" + word, -3.0) for word in dict.fromkeys([*_WORDS, *words])]
    vocab += [(char, -6.0) for char in _CHARACTERS]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


# diffusers' Wan2.2-I2V-A14B-Diffusers configures its expert switch here (the SVI authors switch at 0.875).
WAN22_BOUNDARY_RATIO = 0.9


def tiny_transformer(
    seed: int,
    image_tokens: bool = True,
    heads: int = 2,
    head_dim: int = 12,
    ffn_dim: int = 32,
    layers: int = 2,
    rope_max_seq_len: int = 64,
) -> WanTransformer3DModel:
    """A small random Wan I2V DiT: by default 2 blocks x 2 heads x 12 dims, 36 in / 16 out channels, text 32 (the
    tiny UMT5's width), 2x2 patches, and (Wan2.1) CLIP image tokens of width 16 with their added K/V projections.
    The demo model's DiT is this at a larger size (`svi_model.demo_model.recipe`)."""
    torch.manual_seed(seed)
    image = dict(image_dim=16, added_kv_proj_dim=heads * head_dim) if image_tokens else {}
    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=heads,
        attention_head_dim=head_dim,
        in_channels=36,
        out_channels=16,
        text_dim=32,
        freq_dim=256,
        ffn_dim=ffn_dim,
        num_layers=layers,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        eps=1e-6,
        rope_max_seq_len=rope_max_seq_len,
        **image,
    )


def tiny_components(seed: int = 0, wan22: bool = False, words: tuple[str, ...] = ()) -> dict:
    """Random tiny components in eval mode, keyed as `WanImageToVideoPipeline` expects them.

    Sizes: transformer 2 blocks x 2 heads x 12 dims (36 in / 16 out channels, text 32, image 16), VAE base 3,
    UMT5 d_model 32, CLIP ViT with 32x32 input and 8x8 patches (17 tokens of width 16; the real one is 257x1280).
    wan22: two experts without image tokens and no image encoder (Wan2.2-I2V-A14B's shape).
    words: extra whole-word tokens (`tiny_tokenizer`).
    """
    tokenizer = tiny_tokenizer(words)
    torch.manual_seed(seed)
    text_encoder = UMT5EncoderModel(
        UMT5Config(
            vocab_size=len(tokenizer),
            d_model=32,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            relative_attention_max_distance=16,
            feed_forward_proj="gated-gelu",
        )
    )
    torch.manual_seed(seed + 1)
    image_encoder = CLIPVisionModel(
        CLIPVisionConfig(
            hidden_size=16,
            intermediate_size=32,
            projection_dim=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        )
    )
    image_processor = CLIPImageProcessor(crop_size={"height": 32, "width": 32}, size={"shortest_edge": 32})
    transformer = tiny_transformer(seed + 2, image_tokens=not wan22)
    torch.manual_seed(seed + 3)
    vae = AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    )
    # Hand-built modules start in train mode; UMT5's dropout would make every run differ.
    for module in (text_encoder, image_encoder, transformer, vae):
        module.eval()
    if wan22:
        experts = dict(transformer_2=tiny_transformer(seed + 4, image_tokens=False).eval())
        experts |= dict(image_encoder=None, image_processor=None, boundary_ratio=WAN22_BOUNDARY_RATIO)
    else:
        experts = {}
    return (
        dict(
            tokenizer=tokenizer,
            text_encoder=text_encoder,
            image_encoder=image_encoder,
            image_processor=image_processor,
            transformer=transformer,
            vae=vae,
            # A stock class, so the saved folder loads anywhere; the engine always samples with SVIFlowMatchScheduler.
            scheduler=FlowMatchEulerDiscreteScheduler(shift=SVI_SHIFT),
        )
        | experts
    )


def save_tiny_model(folder: str | os.PathLike, seed: int = 0, wan22: bool = False) -> str:
    """Write a tiny model folder in the diffusers layout (`model_index.json`, `transformer/`, `vae/`, ...).

    Returns the folder path. The folder loads with `svi_model.loading.load_wan_pipeline` like a real one.
    """
    from diffusers import WanImageToVideoPipeline

    WanImageToVideoPipeline(**tiny_components(seed, wan22)).save_pretrained(str(folder))
    return str(folder)

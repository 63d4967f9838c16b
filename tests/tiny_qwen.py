"""A tiny random Qwen2.5-VL saved as a hub-style folder, built offline in about a second.

The folder holds what a real Qwen2.5-VL-Instruct download holds, at toy size: `config.json` +
`model.safetensors` (2 text layers of width 64, a 2-block vision tower), a byte-level BPE tokenizer trained here
on a few sentences (`tokenizer.json`, with Qwen's special tokens), a Qwen ChatML chat template, and the image
processor's `preprocessor_config.json` (from which, as for a real download, the video processor is made too). Its
weights are random, so `generate` runs for real but writes junk.

The tokenizer and the image processor are saved apart, not through `Qwen2_5_VLProcessor.save_pretrained`: that
would write transformers' newer `processor_config.json` instead of the `preprocessor_config.json` the real
downloads hold.
"""

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2Tokenizer
from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# Qwen's ChatML: a default system turn, then `<|im_start|>role\n…<|im_end|>\n` per message; a picture is
# `<|vision_start|><|image_pad|><|vision_end|>` (a clip the same with `<|video_pad|>`), and the processor widens
# the one pad to one per visual token.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message.role != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message.role }}\n"
    "{% if message.content is string %}{{ message.content }}"
    "{% else %}{% for part in message.content %}"
    "{% if part.type == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part.type == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif part.type == 'text' %}{{ part.text }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Enough text for a few hundred merges; every byte stays encodable through the byte-level alphabet.
CORPUS = [
    "The red ball rolls slowly across the green meadow while the camera follows it.",
    'Reply with only this JSON object: {"prompts": ["first prompt", "second prompt"]}',
    "A lighthouse stands on the cliff as waves break below and the light turns at dusk.",
    "Write exactly three prompts, one per clip, each continuing from the previous one.",
]

# Small sizes that still satisfy the model's constraints: the vision tower's output width equals the text width,
# and mrope_section sums to half the text head size (64 / 4 heads = 16 → 8).
TEXT_WIDTH = 64


def tiny_tokenizer() -> Qwen2Tokenizer:
    """A byte-level BPE Qwen2 tokenizer with Qwen's special tokens, trained on `CORPUS` (no download)."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=500,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(CORPUS, trainer)
    trained = json.loads(bpe.to_str())["model"]
    tokenizer = Qwen2Tokenizer(
        vocab=trained["vocab"],
        merges=[tuple(merge) for merge in trained["merges"]],
        unk_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=SPECIAL_TOKENS[1:],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_qwen_config(tokenizer: Qwen2Tokenizer) -> Qwen2_5_VLConfig:
    """A Qwen2.5-VL config of 2 text layers and 2 vision blocks, wired to `tokenizer`'s special token ids."""
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    return Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=TEXT_WIDTH,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=4096,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=56,
            out_hidden_size=TEXT_WIDTH,
            fullatt_block_indexes=[1],
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )


def save_tiny_qwen(folder: Path, seed: int = 0) -> Path:
    """Build the tiny random Qwen2.5-VL and save it to `folder` as a hub-style checkpoint; returns `folder`."""
    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(tiny_qwen_config(tokenizer)).eval()
    image_processor = Qwen2VLImageProcessor(
        patch_size=14, temporal_patch_size=2, merge_size=2, min_pixels=56 * 56, max_pixels=112 * 112
    )
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    image_processor.save_pretrained(folder)
    return folder

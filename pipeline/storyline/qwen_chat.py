"""The `qwen` storyline backend: Qwen2.5-VL-3B/7B-Instruct from a local folder, with transformers and qwen-vl-utils.

The model is loaded once per process (a small cache keyed by folder, device and dtype) in bf16 on CUDA, fp32 on
the CPU, and never downloaded: every load is `local_files_only`, and a folder that lacks a file says which.

Pictures and clips reach the model as its model card prescribes: the chat messages carry them (a picture as an
`image` entry, a clip as a `video` entry made of its frames, each with this request's `min_pixels`..`max_pixels`),
`qwen_vl_utils.process_vision_info` resizes them (each side a multiple of 28, the aspect kept; 28×28 pixels make
one visual token; a clip's frame count made even), and the processor turns them into patches without resizing
them again.
"""

import functools
from collections.abc import Sequence
from pathlib import Path

import torch
from qwen_vl_utils import process_vision_info
from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor

from .conversation import chat_storyline
from .request import ChatTurn, Storyline, StorylineError, StorylineRequest, Visual

# What a Qwen2.5-VL-Instruct download holds; each entry is (what it is, any one of these files).
REQUIRED_FILES = [
    ("the model config", ("config.json",)),
    ("the weights", ("model.safetensors", "model.safetensors.index.json")),
    ("the tokenizer", ("tokenizer.json", "vocab.json")),
    ("the image processor config", ("preprocessor_config.json",)),
]
CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")


def missing_qwen_files(folder: Path) -> list[str]:
    """What `folder` lacks to be a Qwen2.5-VL-Instruct checkpoint, in words (empty when complete)."""
    missing = [
        f"{what} ({' or '.join(names)})"
        for what, names in REQUIRED_FILES
        if not any((folder / name).is_file() for name in names)
    ]
    tokenizer_config = folder / "tokenizer_config.json"
    has_template = any((folder / name).is_file() for name in CHAT_TEMPLATE_FILES) or (
        tokenizer_config.is_file() and '"chat_template"' in tokenizer_config.read_text(encoding="utf-8")
    )
    if not has_template:
        missing.append(f"the chat template ({' or '.join(CHAT_TEMPLATE_FILES)})")
    return missing


def _checked_folder(folder: Path) -> Path:
    get_it = "put a full download of Qwen/Qwen2.5-VL-7B-Instruct (or -3B-) there, e.g. `hf download "
    get_it += f"Qwen/Qwen2.5-VL-7B-Instruct --local-dir {folder}` on a machine with network"
    if not folder.is_dir():
        raise StorylineError(f"qwen_model {folder} is not a folder: {get_it}")
    missing = missing_qwen_files(folder)
    if missing:
        raise StorylineError(f"qwen_model {folder} lacks {', '.join(missing)}: {get_it}")
    return folder


@functools.lru_cache(maxsize=2)
def loaded_qwen(folder: Path, device: str, dtype: torch.dtype) -> Qwen2_5_VLForConditionalGeneration:
    """The Qwen2.5-VL model in `folder` on `device`, loaded once per process for each (folder, device, dtype)."""
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        _checked_folder(folder), dtype=dtype, device_map=device, attn_implementation="sdpa", local_files_only=True
    )
    return model.eval()


@functools.lru_cache(maxsize=2)
def loaded_processor(folder: Path) -> Qwen2_5_VLProcessor:
    """The tokenizer, chat template, image and video processors in `folder`, loaded once per process."""
    return Qwen2_5_VLProcessor.from_pretrained(_checked_folder(folder), local_files_only=True)


def release_qwen() -> None:
    """Drop the loaded models and processors, giving their GPU memory back (e.g. before loading Wan)."""
    loaded_qwen.cache_clear()
    loaded_processor.cache_clear()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def qwen_messages(visuals: Sequence[Visual], turns: list[ChatTurn], min_pixels: int, max_pixels: int) -> list[dict]:
    """The conversation in Qwen's chat format, the visuals first in the first message, each bounded to
    `min_pixels`..`max_pixels` (the keys `process_vision_info` reads)."""
    bounds = {"min_pixels": min_pixels, "max_pixels": max_pixels}
    shown = [
        {"type": "image", "image": str(visual), **bounds}
        if isinstance(visual, Path)
        else {"type": "video", "video": list(visual), **bounds}
        for visual in visuals
    ]
    messages = []
    for index, turn in enumerate(turns):
        content = [*(shown if index == 0 else []), {"type": "text", "text": turn.text}]
        messages.append({"role": turn.role, "content": content})
    return messages


class QwenChat:
    """(pictures and clips, conversation) → Qwen2.5-VL's reply, generated locally; greedy unless temperature > 0."""

    def __init__(
        self,
        folder: Path,
        device: str | None = None,
        min_pixels: int = 4 * 28 * 28,
        max_pixels: int = 512 * 28 * 28,
        max_new_tokens: int = 4096,
        temperature: float = 0.0,
        seed: int = 0,
    ):
        self.folder = Path(folder).resolve()
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        self.min_pixels, self.max_pixels = min_pixels, max_pixels
        self.max_new_tokens, self.temperature, self.seed = max_new_tokens, temperature, seed

    def model_inputs(self, visuals: Sequence[Visual], turns: list[ChatTurn]) -> dict[str, torch.Tensor]:
        """Token ids (one <|image_pad|> or <|video_pad|> per visual token), attention mask, and for the pictures
        `pixel_values` `[patches, 3·2·14·14]` with `image_grid_thw` `[pictures, 3]`, for the clips
        `pixel_values_videos` with `video_grid_thw` `[clips, 3]` (grids in 14-pixel patches: t, h, w)."""
        processor = loaded_processor(self.folder)
        messages = qwen_messages(visuals, turns, self.min_pixels, self.max_pixels)
        text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        images, videos, video_kwargs = process_vision_info(messages, return_video_kwargs=True)
        # Already sized by process_vision_info within this request's bounds; the processor's own (up to 16,384
        # visual tokens a picture) would otherwise apply a second time. qwen-vl-utils gives one frame rate per
        # clip (it places the frames in time); transformers 5 takes one for the call, and refuses an empty list.
        if videos:
            video_kwargs["fps"] = video_kwargs["fps"][0]  # frame lists all get qwen-vl-utils' default rate
        else:
            video_kwargs = {}
        return processor(
            text=[text], images=images, videos=videos, do_resize=False, return_tensors="pt", **video_kwargs
        )

    def __call__(self, visuals: Sequence[Visual], turns: list[ChatTurn]) -> str:
        model = loaded_qwen(self.folder, self.device, self.dtype)
        processor = loaded_processor(self.folder)
        inputs = self.model_inputs(visuals, turns).to(model.device)
        sampling = {"do_sample": False}
        if self.temperature > 0:
            # generate() draws from torch's global generator; seeding it makes a sampled storyline repeatable.
            torch.manual_seed(self.seed)
            sampling = {"do_sample": True, "temperature": self.temperature}
        with torch.inference_mode():
            output = model.generate(**inputs, max_new_tokens=self.max_new_tokens, **sampling)
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        return processor.batch_decode(new_tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False)[0]


def qwen_chat(request: StorylineRequest) -> QwenChat:
    """The local Qwen2.5-VL chat the request asks for."""
    return QwenChat(
        folder=request.qwen_model,
        device=request.device,
        min_pixels=request.min_pixels,
        max_pixels=request.max_pixels,
        max_new_tokens=request.reply_token_limit(),
        temperature=request.temperature,
        seed=request.seed,
    )


def qwen_storyline(image: Path, request: StorylineRequest) -> Storyline:
    """The storyline Qwen2.5-VL in `request.qwen_model` writes for the picture at `image`."""
    return chat_storyline(qwen_chat(request), str(request.qwen_model), image, request)

"""The `qwen` storyline backend: Qwen2.5-VL-3B/7B-Instruct from a local folder, with transformers.

The model is loaded once per process (a small cache keyed by folder, device and dtype) in bf16 on CUDA, fp32 on
the CPU, and never downloaded: every load is `local_files_only`, and a folder that lacks a file says which.

Two departures from the model card's recipe, both because CPU-only torch has no torchvision:
- The processor is built without its video half (`PictureProcessor`): Qwen's video processor needs torchvision,
  and the storyline only ever sends one picture. The image processor and tokenizer load from the folder as usual.
- The picture is opened with PIL and resized by the processor to `min_pixels`..`max_pixels` (a multiple of 28
  on each side, the aspect kept; 28×28 pixels make one visual token) rather than through
  `qwen_vl_utils.process_vision_info`, which imports torchvision and does the same resize. So CPU tests and GPU
  runs share one path.
"""

import functools
from pathlib import Path

import torch
from PIL import Image
from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor

from .conversation import chat_storyline
from .request import ChatTurn, Storyline, StorylineError, StorylineRequest

# What a Qwen2.5-VL-Instruct download holds; each entry is (what it is, any one of these files).
REQUIRED_FILES = [
    ("the model config", ("config.json",)),
    ("the weights", ("model.safetensors", "model.safetensors.index.json")),
    ("the tokenizer", ("tokenizer.json", "vocab.json")),
    ("the image processor config", ("preprocessor_config.json",)),
]
CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")


class PictureProcessor(Qwen2_5_VLProcessor):
    """Qwen2.5-VL's processor for pictures and text only: no video processor (which needs torchvision)."""

    # This signature is what `from_pretrained` reads to know which parts to load. The parent passes
    # video_processor=None on positionally; ProcessorMixin pairs positional parts with these names and drops it.
    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, video_processor=None, chat_template=chat_template, **kwargs)


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
def loaded_processor(folder: Path) -> PictureProcessor:
    """The tokenizer, chat template and image processor in `folder`, loaded once per process."""
    return PictureProcessor.from_pretrained(_checked_folder(folder), local_files_only=True)


def release_qwen() -> None:
    """Drop the loaded models and processors, giving their GPU memory back (e.g. before loading Wan)."""
    loaded_qwen.cache_clear()
    loaded_processor.cache_clear()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def qwen_messages(image: Path, turns: list[ChatTurn]) -> list[dict]:
    """The conversation in Qwen's chat format, the picture first in the first message."""
    messages = []
    for index, turn in enumerate(turns):
        content = [{"type": "text", "text": turn.text}]
        if index == 0:
            content.insert(0, {"type": "image", "image": str(image)})
        messages.append({"role": turn.role, "content": content})
    return messages


class QwenChat:
    """(picture, conversation) → Qwen2.5-VL's reply, generated locally; greedy unless temperature > 0."""

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

    def model_inputs(self, image: Path, turns: list[ChatTurn]) -> dict[str, torch.Tensor]:
        """Token ids (with one <|image_pad|> per visual token), attention mask, pixel patches and image grid."""
        processor = loaded_processor(self.folder)
        text = processor.apply_chat_template(qwen_messages(image, turns), tokenize=False, add_generation_prompt=True)
        with Image.open(image) as picture:
            rgb = picture.convert("RGB")
        # The folder's own bound is up to 16,384 visual tokens a picture; these bounds hold for this call.
        size = {"shortest_edge": self.min_pixels, "longest_edge": self.max_pixels}
        return processor(text=[text], images=[rgb], size=size, return_tensors="pt")

    def __call__(self, image: Path, turns: list[ChatTurn]) -> str:
        model = loaded_qwen(self.folder, self.device, self.dtype)
        processor = loaded_processor(self.folder)
        inputs = self.model_inputs(image, turns).to(model.device)
        sampling = {"do_sample": False}
        if self.temperature > 0:
            # generate() draws from torch's global generator; seeding it makes a sampled storyline repeatable.
            torch.manual_seed(self.seed)
            sampling = {"do_sample": True, "temperature": self.temperature}
        with torch.inference_mode():
            output = model.generate(**inputs, max_new_tokens=self.max_new_tokens, **sampling)
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        return processor.batch_decode(new_tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False)[0]


def qwen_storyline(image: Path, request: StorylineRequest) -> Storyline:
    """The storyline Qwen2.5-VL in `request.qwen_model` writes for the picture at `image`."""
    chat = QwenChat(
        folder=request.qwen_model,
        device=request.device,
        min_pixels=request.min_pixels,
        max_pixels=request.max_pixels,
        max_new_tokens=request.reply_token_limit(),
        temperature=request.temperature,
        seed=request.seed,
    )
    return chat_storyline(chat, str(request.qwen_model), image, request)

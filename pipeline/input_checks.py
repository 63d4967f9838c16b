"""The user's files checked before anything starts: pictures, the prompt file, model folders and LoRA files.

A film run starts a Prefect server, writes its request into the run folder and spends minutes on retrieval and the
storyline before the first clip loads the model: a wrong path found there costs that time, and the request already
written makes the corrected command look like "another film". So every file the request names is checked first,
cheaply (headers and folder listings, no weights read), and the run folder is written only after.
"""

import errno
import tempfile
from pathlib import Path

from safetensors import SafetensorError, safe_open

from svi_model.loading import check_model_folder

from .request import FilmRequest
from .retrieve import load_reference
from .storyline.qwen_chat import missing_qwen_files


def _checked_lora(path: Path, what: str) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist: give the path of a LoRA .safetensors file")
    try:
        with safe_open(str(path), framework="pt") as lora:
            lora.keys()
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{what} {path} is not a readable .safetensors file ({error})") from error


def check_run_folder_writable(run_dir: Path) -> None:
    """Raise ValueError unless the run folder can be made and written to: its nearest existing folder must be a
    folder (not a file) on a writable file system, writable by this user."""
    existing = Path(run_dir).absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"run folder {run_dir} cannot be made: {existing} is a file; choose another --run-dir")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        problem = {
            errno.EROFS: "is on a read-only file system",
            errno.EACCES: "is not writable by this user",
            errno.EPERM: "is not writable by this user",
        }.get(error.errno, f"cannot be written to ({error.strerror})")
        raise ValueError(
            f"run folder {run_dir} cannot be written: {existing} {problem}; choose another --run-dir"
        ) from None


def check_inputs(request: FilmRequest) -> None:
    """Raise a ValueError (or FileNotFoundError) naming the first file the request names that cannot be used, or a
    run folder that cannot be written."""
    check_run_folder_writable(request.output.run_dir)
    for picture in request.retrieve.images:
        load_reference(picture, request.render.max_width)
    if request.own_prompts():
        request.own_prompt_stream()
    render = request.render
    if render.model is not None:
        check_model_folder(render.model)
    for what, lora in (("lora", render.lora), ("lora_2", render.lora_2)):
        if lora is not None:
            _checked_lora(Path(lora), what)
    for stacked in request.engine().stacked_loras:
        _checked_lora(stacked.file, "stacked LoRA")
    if request.storyline.backend == "qwen" and not request.own_prompts():
        folder = Path(request.storyline.qwen_model)
        missing = missing_qwen_files(folder) if folder.is_dir() else ["the folder itself"]
        if missing:
            raise FileNotFoundError(f"qwen_model {folder} lacks {', '.join(missing)}: put a Qwen2.5-VL-Instruct there")

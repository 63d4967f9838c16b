"""The conversation a model backend holds to write the prompt stream: the picture and the instruction
(`prompts/storyline.md`), the reply parsed and checked (exactly L non-empty prompts within the length bounds,
`replies`), and on a bad reply the problem sent back (`prompts/storyline-retry.md`) and the model asked again, up to
`attempts` times in all, before failing with every reason. A model backend is only "conversation → reply text".
"""

import logging
import re
from pathlib import Path

from .replies import JSON_SHAPE, ReplyError, prompts_from_reply
from .request import ChatBackend, ChatTurn, Storyline, StorylineError, StorylineRequest, Visual

log = logging.getLogger(__name__)

PROMPTS_FOLDER = Path(__file__).resolve().parents[2] / "prompts"
INSTRUCTION = PROMPTS_FOLDER / "storyline.md"
FOLLOW_INSTRUCTION = PROMPTS_FOLDER / "storyline-follow.md"
RETRY_INSTRUCTION = PROMPTS_FOLDER / "storyline-retry.md"


def _template_text(path: Path, **fields) -> str:
    """The instruction file at `path` without its <!-- --> notes, filled in with `fields`."""
    text = re.sub(r"<!--.*?-->", "", path.read_text(encoding="utf-8"), flags=re.DOTALL).strip()
    try:
        return text.format(**fields)
    except (KeyError, IndexError, ValueError) as err:
        raise StorylineError(
            f"{path}: cannot fill in the instruction ({err!r}); the placeholders it may use are "
            f"{', '.join('{' + name + '}' for name in fields)}, and a literal brace is written {{{{ or }}}}"
        ) from err


def _limits(request: StorylineRequest, count: int) -> dict:
    """The fields every instruction may use; `count` is how many prompts this ask is for."""
    return {
        "clips": count,
        "min_chars": request.min_prompt_chars,
        "max_chars": request.max_prompt_chars,
        "json_shape": JSON_SHAPE,
    }


def _about(request: StorylineRequest) -> dict:
    return {
        "topic": ", ".join(request.keywords) or "whatever the picture shows",
        "style": request.style or "true to the picture's own look",
        "genre": request.genre or "whatever suits the picture",
    }


def instruction_text(request: StorylineRequest) -> str:
    """The first message to the model (sent with the picture), from `prompts/storyline.md`."""
    return _template_text(INSTRUCTION, **_about(request), **_limits(request, request.clips))


def follow_text(request: StorylineRequest, k: int, story: list[str], planned: str | None) -> str:
    """Follow mode's message for clip `k` (sent with the first picture and the last frames of clip k−1), from
    `prompts/storyline-follow.md`; `story` holds the prompts of clips 0 … k−1."""
    numbered = "\n".join(f"{n}. {prompt}" for n, prompt in enumerate(story, start=1))
    return _template_text(
        FOLLOW_INSTRUCTION,
        clip=k + 1,
        previous=k,
        story=numbered,
        planned=planned or "none: continue the story as the frames suggest",
        **_about(request),
        **{**_limits(request, 1), "clips": request.clips},
    )


def retry_text(problem: str, request: StorylineRequest, count: int) -> str:
    """The message sent back after a reply that could not be used, from `prompts/storyline-retry.md`."""
    return _template_text(RETRY_INSTRUCTION, problem=problem, **_limits(request, count))


def ask_for_prompts(
    chat: ChatBackend, visuals: list[Visual], instruction: str, count: int, request: StorylineRequest
) -> tuple[list[str], list[str]]:
    """Ask `chat`, showing it `visuals`, for `count` prompts with `instruction`, re-asking with the problem on a
    bad reply.

    Returns the checked prompts and the reasons the earlier replies were refused (one per re-ask). Raises
    `StorylineError` naming every refused reply once `request.attempts` replies were unusable.
    """
    turns = [ChatTurn("user", instruction)]
    rejected: list[str] = []
    for attempt in range(1, request.attempts + 1):
        reply = chat(visuals, turns)
        try:
            prompts = prompts_from_reply(reply, count, request.min_prompt_chars, request.max_prompt_chars)
        except ReplyError as problem:
            rejected.append(str(problem))
            log.warning("storyline reply %d of %d refused: %s", attempt, request.attempts, problem)
            turns += [ChatTurn("assistant", reply), ChatTurn("user", retry_text(str(problem), request, count))]
            continue
        return prompts, rejected
    reasons = "\n".join(f"  reply {n}: {reason}" for n, reason in enumerate(rejected, start=1))
    raise StorylineError(
        f"the {request.backend} storyline model gave no usable prompt stream of {count} prompts in "
        f"{request.attempts} attempts:\n{reasons}\n"
        "Try more attempts, a larger max_new_tokens, a larger model, or write the prompts yourself (prompts_file)."
    )


def chat_storyline(chat: ChatBackend, model: str, image: Path, request: StorylineRequest) -> Storyline:
    """The storyline a model backend writes for the picture at `image`; `model` is how the storyline records it."""
    if not Path(image).is_file():
        raise StorylineError(f"reference picture {image} does not exist: the storyline is written from it")
    prompts, rejected = ask_for_prompts(chat, [Path(image)], instruction_text(request), request.clips, request)
    return Storyline(
        prompts=prompts,
        backend=request.backend,
        model=model,
        attempts=len(rejected) + 1,
        rejected=rejected,
        keywords=request.keywords,
        style=request.style,
        genre=request.genre,
    )

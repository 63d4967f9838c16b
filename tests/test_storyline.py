"""The storyline stage: parsing and checking replies, the re-ask loop, the template, qwen and openai backends."""

import base64
import io
import json
import socket
from pathlib import Path

import pytest
import torch
from chat_server import FakeChatServer, completion
from PIL import Image
from pydantic import ValidationError
from qwen_vl_utils import smart_resize
from tiny_qwen import save_tiny_qwen

from pipeline.storyline import (
    ChatTurn,
    Storyline,
    StorylineError,
    StorylineRequest,
    StorylineServerError,
    conversation,
    read_prompt_file,
    save_storyline,
    write_storyline,
)
from pipeline.storyline.conversation import ask_for_prompts, instruction_text
from pipeline.storyline.openai_chat import OpenAIChat
from pipeline.storyline.qwen_chat import QwenChat, loaded_processor, loaded_qwen
from pipeline.storyline.replies import ReplyError, prompts_from_reply
from pipeline.storyline.template import template_prompts

GOOD = [
    "A red ball rests on a sunny green meadow under a clear blue sky, then starts to roll slowly to the right.",
    "The red ball keeps rolling across the meadow, bouncing lightly over small tufts of grass in the sunlight.",
    "The red ball slows near the foot of a gentle hill and comes to rest as a breeze moves the grass around it.",
]


@pytest.fixture
def picture(tmp_path) -> Path:
    path = tmp_path / "reference.png"
    Image.new("RGB", (320, 192), (180, 40, 30)).save(path)
    return path


# ---------------------------------------------------------------- reading replies


@pytest.mark.parametrize(
    "reply",
    [
        json.dumps({"prompts": GOOD}),
        json.dumps(GOOD),
        "Here is the storyline you asked for:\n```json\n" + json.dumps({"prompts": GOOD}, indent=2) + "\n```\nEnjoy!",
        "Sure! " + json.dumps({"prompts": GOOD}) + " I hope this helps.",
        '{"prompts": ["' + '",\n"'.join(GOOD) + '"]}',
        "Here are [3] prompts, as {} asked:\n" + json.dumps({"prompts": GOOD}),
        "Scores [1, 2] aside, the list:\n```\n" + json.dumps(GOOD) + "\n```",
    ],
    ids=["object", "bare-list", "fenced", "chatter", "newlines", "stray-brackets", "fenced-list"],
)
def test_reply_shapes_that_are_read(reply):
    assert prompts_from_reply(reply, 3, 40, 1000) == GOOD


@pytest.mark.parametrize(
    "reply, message",
    [
        ("", "was empty"),
        ("   \n", "was empty"),
        ("I cannot help with that.", "holds no JSON"),
        ('{"prompts": ["A red ball rests', "does not parse"),
        (json.dumps({"shots": GOOD}), 'no "prompts" key'),
        (json.dumps({"prompts": "one long string"}), "must be a list"),
        (json.dumps({"prompts": GOOD[:2]}), "has 2 prompts, but exactly 3 are needed"),
        (json.dumps({"prompts": GOOD + GOOD[:1]}), "has 4 prompts, but exactly 3 are needed"),
        (json.dumps({"prompts": [GOOD[0], "  ", GOOD[2]]}), "prompt 2 is empty"),
        (json.dumps({"prompts": [GOOD[0], GOOD[1], 7]}), "prompt 3 is a int, not a string"),
        (json.dumps({"prompts": [GOOD[0], "Too short.", GOOD[2]]}), "prompt 2 is too short (10 characters"),
        (json.dumps({"prompts": [GOOD[0], GOOD[1], "x" * 1001]}), "prompt 3 is too long (1001 characters"),
    ],
)
def test_reply_problems_are_named(reply, message):
    with pytest.raises(ReplyError, match=message.replace("(", r"\(")):
        prompts_from_reply(reply, 3, 40, 1000)


def test_every_problem_of_a_reply_is_listed_at_once():
    with pytest.raises(ReplyError) as caught:
        prompts_from_reply(json.dumps({"prompts": ["", "short"]}), 3, 40, 1000)
    assert "has 2 prompts" in str(caught.value)
    assert "prompt 1 is empty" in str(caught.value)
    assert "prompt 2 is too short" in str(caught.value)


# ---------------------------------------------------------------- the conversation: ask, check, re-ask


class ScriptedChat:
    """A chat backend that replies from a script and keeps every conversation it was sent."""

    def __init__(self, replies: list[str]):
        self.replies = list(replies)
        self.conversations: list[list[ChatTurn]] = []

    def __call__(self, visuals: list[Path], turns: list[ChatTurn]) -> str:
        self.conversations.append(list(turns))
        return self.replies.pop(0)


def test_a_bad_reply_is_sent_back_with_its_problem(picture):
    bad = json.dumps({"prompts": GOOD[:2]})
    chat = ScriptedChat([bad, json.dumps({"prompts": GOOD})])
    request = StorylineRequest(clips=3)
    prompts, rejected = ask_for_prompts(chat, [picture], instruction_text(request), 3, request)
    assert prompts == GOOD
    assert len(rejected) == 1 and "exactly 3 are needed" in rejected[0]
    retry = chat.conversations[1]
    assert [turn.role for turn in retry] == ["user", "assistant", "user"]
    assert retry[1].text == bad
    assert "has 2 prompts, but exactly 3 are needed" in retry[2].text
    assert '{"prompts": [' in retry[2].text


def test_unusable_replies_fail_clearly_after_the_attempts(picture):
    chat = ScriptedChat(["no idea", "", json.dumps({"prompts": ["x"]})])
    with pytest.raises(StorylineError) as caught:
        request = StorylineRequest(clips=2, attempts=3)
        ask_for_prompts(chat, [picture], instruction_text(request), 2, request)
    message = str(caught.value)
    assert "in 3 attempts" in message
    assert "reply 1: The reply holds no JSON" in message
    assert "reply 2: The reply was empty" in message
    assert "reply 3: The prompts cannot be used" in message
    assert "prompts_file" in message


def test_instruction_names_the_clips_topic_style_genre_and_reply_shape():
    request = StorylineRequest(clips=7, keywords=["lighthouse", "storm"], style="moody film noir", genre="thriller")
    text = instruction_text(request)
    assert "exactly 7 prompts" in text
    assert "lighthouse, storm" in text and "moody film noir" in text and "thriller" in text
    assert "5 seconds" in text and "state + motion" in text
    assert '{"prompts": [' in text
    assert "<!--" not in text and "{clips}" not in text


def test_a_broken_instruction_file_names_itself(tmp_path, monkeypatch):
    broken = tmp_path / "storyline.md"
    broken.write_text("Write {clips} prompts about {subject}.", encoding="utf-8")
    monkeypatch.setattr(conversation, "INSTRUCTION", broken)
    with pytest.raises(StorylineError, match=r"storyline\.md.*subject"):
        instruction_text(StorylineRequest())


# ---------------------------------------------------------------- requests


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"backend": "qwen"}, "needs qwen_model"),
        ({"backend": "openai", "openai_model": "m"}, "needs openai_base_url"),
        ({"keywords": ["red ball", " "]}, "a keyword is empty"),
        ({"min_pixels": 10_000, "max_pixels": 5_000}, "min_pixels 10000 is above max_pixels"),
        ({"clips": 0}, "greater than or equal to 1"),
    ],
)
def test_requests_that_cannot_work_are_refused(fields, message):
    with pytest.raises(ValidationError, match=message):
        StorylineRequest(**fields)


# ---------------------------------------------------------------- the template backend


def test_template_prompts_are_deterministic_and_continue_one_another():
    prompts = template_prompts(8, ["red ball", "meadow"], style="cinematic", genre="nature documentary")
    assert prompts == template_prompts(8, ["red ball", "meadow"], style="cinematic", genre="nature documentary")
    assert len(prompts) == 8 and len(set(prompts)) > 1
    assert all("red ball" in p and "meadow" in p and p.startswith("Cinematic, nature documentary.") for p in prompts)
    assert all("Continuing the same shot" in p for p in prompts[1:])


@pytest.mark.parametrize("keywords", [[], ["dog"], ["dog", "street", "rain"]])
def test_template_storyline_passes_the_same_checks(picture, keywords):
    for clips in (1, 6, 13):
        written = write_storyline(picture, StorylineRequest(clips=clips, keywords=keywords))
        assert len(written.prompts) == clips
        assert (written.backend, written.model, written.attempts) == ("template", "template", 1)


def test_template_that_cannot_fit_the_length_bounds_says_so(picture):
    with pytest.raises(StorylineError, match="widen min_prompt_chars"):
        write_storyline(picture, StorylineRequest(max_prompt_chars=50))


# ---------------------------------------------------------------- storyline.yaml


def test_saved_storyline_reads_back_as_a_prompt_file(tmp_path):
    written = Storyline(
        prompts=[*GOOD, 'A prompt with "quotes", a colon: and # a hash'],
        backend="qwen",
        model="/models/Qwen2.5-VL-7B-Instruct",
        attempts=2,
        rejected=["The reply was empty."],
        keywords=["red ball"],
    )
    path = tmp_path / "run" / "storyline.yaml"
    save_storyline(written, path)
    assert read_prompt_file(path) == written.prompts
    assert "backend: qwen" in path.read_text(encoding="utf-8")
    assert sorted(p.name for p in path.parent.iterdir()) == ["storyline.yaml"]
    assert Storyline.model_validate_json(written.model_dump_json()) == written


# ---------------------------------------------------------------- the qwen backend on a tiny random Qwen2.5-VL


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory) -> Path:
    return save_tiny_qwen(tmp_path_factory.mktemp("qwen").resolve())


def qwen_request(folder: Path, **fields) -> StorylineRequest:
    settings = dict(backend="qwen", qwen_model=folder, device="cpu", clips=3, max_new_tokens=16, max_pixels=112 * 112)
    return StorylineRequest(**{**settings, **fields})


def test_qwen_with_random_weights_fails_clearly_after_real_generation(tiny_qwen, picture):
    with pytest.raises(StorylineError, match=r"qwen storyline model gave no usable prompt stream .* in 2 attempts"):
        write_storyline(picture, qwen_request(tiny_qwen, attempts=2))


def test_qwen_sees_picture_and_instruction_and_its_new_tokens_are_read(tiny_qwen, picture, monkeypatch):
    """Real processor and real generate; the second reply is forced to a valid stream after generate ran."""
    model = loaded_qwen(tiny_qwen, "cpu", torch.float32)
    processor = loaded_processor(tiny_qwen)
    real_generate = model.generate
    seen = []

    def generate(**inputs):
        seen.append(inputs)
        output = real_generate(**inputs)
        if len(seen) == 1:
            return output
        forced = processor.tokenizer(json.dumps({"prompts": GOOD}), return_tensors="pt").input_ids
        return torch.cat([inputs["input_ids"], forced, output[:, :0]], dim=1)

    monkeypatch.setattr(model, "generate", generate)
    written = write_storyline(picture, qwen_request(tiny_qwen, keywords=["red ball"]))

    assert written.prompts == GOOD
    assert (written.backend, written.model, written.attempts) == ("qwen", str(tiny_qwen), 2)
    first, second = (processor.tokenizer.decode(inputs["input_ids"][0]) for inputs in seen)
    visual_tokens = int(seen[0]["image_grid_thw"].prod()) // 4
    assert first.count("<|image_pad|>") == visual_tokens > 0
    assert "exactly 3 prompts" in first and "Topic: red ball." in first
    assert first.endswith("<|im_start|>assistant\n")
    assert second.count("<|im_start|>assistant\n") == 2
    assert written.rejected[0] in second


def test_pictures_and_clips_reach_qwen_through_qwen_vl_utils(tiny_qwen, picture):
    """A picture and a clip of 5 frames, bounded to 56²..112² pixels: qwen-vl-utils' own resize rule decides the
    grids, the clip is made an even 6 frames (3 temporal patches of 2), and generate takes all of it."""
    chat = QwenChat(tiny_qwen, device="cpu", min_pixels=56 * 56, max_pixels=112 * 112)
    with Image.open(picture) as opened:
        frames = [opened.convert("RGB").rotate(3 * i) for i in range(5)]
    inputs = chat.model_inputs([picture, frames], [ChatTurn(role="user", text="What happens next?")])

    bounds = dict(min_pixels=56 * 56, max_pixels=112 * 112)
    height, width = smart_resize(192, 320, factor=28, **bounds)
    # qwen-vl-utils (0.0.14) sizes the frames of a frame list to multiples of 56, then of 28, as a video.
    frame_height, frame_width = smart_resize(*smart_resize(192, 320, factor=56, **bounds), factor=28, **bounds)
    patches, frame_patches = height * width // 14**2, frame_height * frame_width // 14**2
    assert inputs["image_grid_thw"].tolist() == [[1, height // 14, width // 14]]
    assert inputs["video_grid_thw"].tolist() == [[3, frame_height // 14, frame_width // 14]]
    assert inputs["pixel_values"].shape == (patches, 3 * 2 * 14 * 14)
    assert inputs["pixel_values_videos"].shape == (3 * frame_patches, 3 * 2 * 14 * 14)
    text = loaded_processor(tiny_qwen).tokenizer.decode(inputs["input_ids"][0])
    # One pad token per 2×2 patches merged; the picture comes first, then the clip, then the question.
    assert text.count("<|image_pad|>") == patches // 4 and text.count("<|video_pad|>") == 3 * frame_patches // 4
    assert text.index("<|image_pad|>") < text.index("<|video_pad|>") < text.index("What happens next?")
    output = loaded_qwen(tiny_qwen, "cpu", torch.float32).generate(**inputs, max_new_tokens=2, do_sample=False)
    assert output.shape == (1, inputs["input_ids"].shape[1] + 2)


def test_qwen_model_stays_loaded_across_calls(tiny_qwen):
    assert loaded_qwen(tiny_qwen, "cpu", torch.float32) is loaded_qwen(tiny_qwen, "cpu", torch.float32)


def test_qwen_folder_that_lacks_files_says_which(tmp_path, picture):
    folder = tmp_path / "qwen"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    with pytest.raises(StorylineError) as caught:
        write_storyline(picture, qwen_request(folder))
    message = str(caught.value)
    assert "the weights (model.safetensors" in message and "preprocessor_config.json" in message
    assert "chat template" in message and "hf download" in message and "model config" not in message
    with pytest.raises(StorylineError, match="is not a folder"):
        write_storyline(picture, qwen_request(tmp_path / "nowhere"))


# ---------------------------------------------------------------- the openai backend against a local server


def openai_request(base_url: str, **fields) -> StorylineRequest:
    settings = dict(backend="openai", openai_base_url=base_url, openai_model="qwen2.5-vl-7b", clips=3)
    return StorylineRequest(**{**settings, **fields})


def test_openai_reasks_with_the_problem_and_sends_picture_and_key(picture, monkeypatch):
    monkeypatch.setenv("STORY_KEY", "sk-test")
    bad = "Here you go:\n```json\n" + json.dumps({"prompts": GOOD[:1]}) + "\n```"
    answers = [(200, completion(bad)), (200, completion(json.dumps({"prompts": GOOD})))]
    with FakeChatServer(answers) as server:
        request = openai_request(server.base_url, openai_api_key_env="STORY_KEY", max_pixels=100 * 60)
        written = write_storyline(picture, request)

    assert written.prompts == GOOD
    assert (written.attempts, written.model) == (2, f"qwen2.5-vl-7b at {server.base_url}")
    (path, headers, first), (_, _, second) = server.requests
    assert path == "/v1/chat/completions"
    assert headers["Authorization"] == "Bearer sk-test"
    assert first["model"] == "qwen2.5-vl-7b" and first["response_format"]["type"] == "json_schema"
    schema = first["response_format"]["json_schema"]["schema"]["properties"]["prompts"]
    assert (schema["minItems"], schema["maxItems"]) == (3, 3)
    assert (schema["items"]["minLength"], schema["items"]["maxLength"]) == (40, 1000)
    assert first["max_tokens"] == request.reply_token_limit() == 200 * 3 + 256
    image_part, text_part = first["messages"][0]["content"]
    url = image_part["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    sent = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert sent.width * sent.height <= 100 * 60 and sent.width / sent.height == pytest.approx(320 / 192, rel=0.05)
    assert "exactly 3 prompts" in text_part["text"]
    assert [m["role"] for m in second["messages"]] == ["user", "assistant", "user"]
    assert second["messages"][1]["content"] == bad
    assert "has 1 prompts, but exactly 3 are needed" in second["messages"][2]["content"]


def test_openai_shows_a_clip_as_one_image_part_per_frame(picture):
    frames = [Image.new("RGB", (320, 192), (10 * i, 90, 200)) for i in range(3)]
    with FakeChatServer([(200, completion("a reply"))]) as server:
        chat = OpenAIChat(server.base_url, "qwen2.5-vl-7b", max_pixels=100 * 60)
        assert chat([picture, frames], [ChatTurn(role="user", text="What happens next?")]) == "a reply"
    ((_, _, body),) = server.requests
    *images, text = body["messages"][0]["content"]
    assert text == {"type": "text", "text": "What happens next?"}
    sent = [Image.open(io.BytesIO(base64.b64decode(part["image_url"]["url"].split(",", 1)[1]))) for part in images]
    assert [image.getpixel((0, 0)) for image in sent] == [(180, 40, 30), (0, 90, 200), (10, 90, 200), (20, 90, 200)]
    assert all(image.width * image.height <= 100 * 60 for image in sent)


def test_openai_without_a_key_sends_no_authorization(picture, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with FakeChatServer([(200, completion(json.dumps(GOOD)))]) as server:
        write_storyline(picture, openai_request(server.base_url, openai_reply_format="text"))
    _, headers, body = server.requests[0]
    assert "Authorization" not in headers and "response_format" not in body


def test_openai_refusal_is_an_empty_reply_and_reasked(picture):
    answers = [(200, completion(None)), (200, completion(json.dumps(GOOD)))]
    with FakeChatServer(answers) as server:
        written = write_storyline(picture, openai_request(server.base_url))
    assert written.attempts == 2 and "was empty" in written.rejected[0]


@pytest.mark.parametrize(
    "status, answer, error, message",
    [
        (500, {"error": "out of memory"}, StorylineServerError, r"HTTP 500: .*out of memory"),
        (429, {"error": "slow down"}, StorylineServerError, "HTTP 429"),
        (400, {"error": "response_format"}, StorylineError, "HTTP 400: .*set openai_reply_format to json_object"),
        (401, {"error": "bad key"}, StorylineError, "environment variable OPENAI_API_KEY"),
        (200, {"unexpected": True}, StorylineError, "no chat completion"),
    ],
)
def test_openai_server_errors_name_the_url(picture, status, answer, error, message):
    """Failures on the server's side are worth a retry (StorylineServerError); the others fail the same again."""
    with FakeChatServer([(status, answer)]) as server:
        with pytest.raises(error, match=message) as caught:
            write_storyline(picture, openai_request(server.base_url))
    assert f"{server.base_url}/chat/completions" in str(caught.value)


def test_openai_unreachable_server_names_the_url(picture):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    base_url = f"http://127.0.0.1:{port}/v1"
    url = f"{base_url}/chat/completions"
    with pytest.raises(StorylineServerError, match=rf"cannot reach the storyline server at {url}"):
        write_storyline(picture, openai_request(base_url))

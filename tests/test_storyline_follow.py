"""Follow mode on a 4-clip tiny film, on a real Prefect server, with the `openai` backend talking to a chat server on
127.0.0.1: each prompt after the first is written from the clip before it, retries reuse clips and prompts, and a
prompt edited by hand is kept while those after it are written again from the new clips."""

import base64
import io
import json
import re

import numpy as np
import pytest
import yaml
from chat_server import FakeChatServer, completion
from PIL import Image

from flows.film import film
from pipeline.request import FilmRequest
from pipeline.run_folder import RunFolder
from svi_model.chain import FilmRenderer
from svi_model.video_files import read_clip

pytestmark = pytest.mark.usefixtures("prefect_server")

PLAN = [
    f"The red ball rests on the striped floor in soft light, then beat {n} begins as it rolls a little to the left."
    for n in range(1, 5)
]


def write_story(body: dict) -> tuple[int, dict]:
    """The chat server's answer: a plan of 4 prompts, or, asked to follow, one prompt naming the clip it was asked
    for and how many frames it was shown."""
    *images, text = body["messages"][0]["content"]
    asked = re.search(r"Write the prompt for clip (\d+) of", text["text"])
    if not asked:
        return 200, completion(json.dumps({"prompts": PLAN}))
    prompt = (
        f"Clip {asked.group(1)} follows what {len(images) - 1} frames show: the red ball keeps rolling left across "
        "the striped floor in the same soft light."
    )
    return 200, completion(json.dumps({"prompts": [prompt]}))


def follow_bodies(server: FakeChatServer) -> list[dict]:
    return [b for b in server.bodies() if "Write the prompt for clip" in b["messages"][0]["content"][-1]["text"]]


@pytest.fixture
def rendered(monkeypatch):
    """k of every clip the model renders."""
    record = []
    real = FilmRenderer.render_clip

    def counting(self, k, *args, **kwargs):
        record.append(k)
        return real(self, k, *args, **kwargs)

    monkeypatch.setattr(FilmRenderer, "render_clip", counting)
    return record


def decoded(part: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(part["image_url"]["url"].split(",", 1)[1]))))


def test_follow_mode_writes_each_prompt_from_the_clip_before_it(tmp_path, monkeypatch, rendered):
    monkeypatch.setenv("SVI_CACHE_DIR", str(tmp_path / "cache"))
    with FakeChatServer(write_story) as server:
        request = FilmRequest(
            clips=4, num_frames=9, steps=2, max_width=128, run_dir=tmp_path / "run", openai_base_url=server.base_url,
            openai_model="qwen2.5-vl-7b", storyline_mode="follow", follow_frames=3,
        )  # fmt: skip
        film(request)
        run = RunFolder(request.output.run_dir)
        assert rendered == [0, 1, 2, 3]

        # One plan, then one ask per clip after the first, each shown the first picture and clip k−1's last frames.
        follows = follow_bodies(server)
        assert len(server.bodies()) == 4 and len(follows) == 3
        for k, body in enumerate(follows, start=1):
            *images, text = body["messages"][0]["content"]
            assert f"Write the prompt for clip {k + 1} of 4" in text["text"]
            assert f"The plan for clip {k + 1}: {PLAN[k]}" in text["text"]
            assert np.array_equal(decoded(images[0]), np.asarray(Image.open(run.reference).convert("RGB")))
            last = read_clip(run.clip(k - 1)).numpy()[-3:]
            assert len(images) == 4
            assert all(np.array_equal(decoded(i), f) for i, f in zip(images[1:], last, strict=True))
        # Each ask is held to its own reply schema: 4 prompts for the plan, 1 for each follow ask.
        counts = [
            b["response_format"]["json_schema"]["schema"]["properties"]["prompts"]["maxItems"] for b in server.bodies()
        ]
        assert counts == [4, 1, 1, 1]
        # The story so far is what the clips before were rendered from.
        assert f"1. {PLAN[0]}" in follows[0]["messages"][0]["content"][-1]["text"]
        written = yaml.safe_load(run.storyline.read_text())
        followed = [f"Clip {k + 1} follows what 3 frames show" for k in range(1, 4)]
        assert written["prompts"][0] == PLAN[0] and written["planned"] == PLAN
        assert [p.split(":")[0] for p in written["prompts"][1:]] == followed
        assert written["followed"][1:] == written["prompts"][1:]
        subtitles = (run.root / "film.srt").read_text()
        assert all(prompt in subtitles for prompt in written["prompts"])

        # Run again: every clip and every prompt is reused.
        rendered.clear()
        film(request)
        assert rendered == [] and len(server.bodies()) == 4

        # Clip 2's prompt edited by hand: kept; clips 2 and 3 are made again, and clip 3's prompt is written anew
        # from the new clip 2 (one more ask).
        clip_1 = read_clip(run.clip(1))
        edited = "The red ball stops rolling and spins in place on the striped floor as the light slowly warms up."
        written["prompts"][2] = edited
        run.storyline.write_text(yaml.safe_dump(written))
        film(request)
        assert rendered == [2, 3] and len(follow_bodies(server)) == 4
        again = yaml.safe_load(run.storyline.read_text())
        assert again["prompts"][:3] == [*written["prompts"][:2], edited]
        assert follow_bodies(server)[-1]["messages"][0]["content"][-1]["text"].count(edited) == 1
        assert np.array_equal(read_clip(run.clip(1)), clip_1)


def test_follow_mode_needs_a_backend_that_looks_and_a_prompt_per_clip():
    with pytest.raises(ValueError, match="backend 'template' does not look at pictures: use one that does"):
        FilmRequest(storyline_mode="follow")
    with pytest.raises(ValueError, match="cannot take your own prompts"):
        FilmRequest(
            storyline_mode="follow", prompt=["a red ball rolls"], openai_base_url="http://x/v1", openai_model="m"
        )
    with pytest.raises(ValueError, match="needs prompt_mode 'stream' and prompt_repeat 1"):
        FilmRequest(storyline_mode="follow", prompt_repeat=2, openai_base_url="http://x/v1", openai_model="m")

"""Image sources and storyline backends are tables: one registration adds one, and it shows up in the request's
validation, the CLI's choices and help, and the Prefect form's schema."""

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from flows.cli import main
from pipeline.request import FilmRequest
from pipeline.retrieve import IMAGE_SOURCES, ImageSource, RetrieveRequest, retrieve_images
from pipeline.storyline import STORYLINE_BACKENDS, Storyline, StorylineBackend, write_storyline


@pytest.fixture
def fake_source(tmp_path):
    pictures = tmp_path / "fake-web"
    pictures.mkdir()
    Image.fromarray((np.random.default_rng(1).random((300, 520, 3)) * 255).astype(np.uint8)).save(pictures / "a.png")

    def gather(request, staging):
        return [(path, f"fake://{path.name}") for path in sorted(pictures.iterdir())], "served by the fake source"

    IMAGE_SOURCES.register("fake", ImageSource(gather, "a source made up by a test"))
    yield
    IMAGE_SOURCES.unregister("fake")


@pytest.fixture
def fake_backend():
    def write(image, request):
        prompts = [
            f"Clip {k + 1}: the {request.keywords[0]} drifts slowly across the frame" for k in range(request.clips)
        ]
        return Storyline(prompts=prompts, backend=request.backend, model="fake")

    STORYLINE_BACKENDS.register("fake", StorylineBackend(write, "a backend made up by a test"))
    yield
    STORYLINE_BACKENDS.unregister("fake")


@pytest.mark.usefixtures("fake_source", "fake_backend")
def test_a_registered_source_and_backend_are_choices_of_the_cli_and_the_form(capsys):
    assert main(["film", "--help"]) == 0
    help_text = capsys.readouterr().out
    assert "--source {bundled,bing,google,baidu,flickr,greedy,urls,folder,fake}" in help_text
    assert "--backend {template,qwen,openai,fake}" in help_text
    schema = FilmRequest.model_json_schema()["$defs"]
    assert "fake" in schema["RetrieveOptions"]["properties"]["source"]["enum"]
    assert "fake" in schema["StorylineOptions"]["properties"]["backend"]["enum"]


@pytest.mark.usefixtures("fake_source", "fake_backend")
def test_a_registered_source_and_backend_are_valid_in_a_request_and_do_their_work(tmp_path):
    request = FilmRequest(keywords=["kite"], source="fake", backend="fake", clips=2)
    report = retrieve_images(request.retrieve_request(), tmp_path / "run")
    assert [record.source for record in report.accepted] == [
        "fake://a.png"
    ] and report.note == "served by the fake source"
    storyline = write_storyline(tmp_path / "unused.png", request.storyline_request())
    assert storyline.prompts[1] == "Clip 2: the kite drifts slowly across the frame" and storyline.model == "fake"


def test_an_unregistered_name_is_refused_naming_every_registered_one(fake_source):
    with pytest.raises(ValidationError, match="unknown image source 'nope': choose one of bundled, .*, folder, fake"):
        RetrieveRequest(keywords=["x"], source="nope")
    with pytest.raises(ValidationError, match="unknown storyline backend 'nope': choose one of template, qwen, openai"):
        FilmRequest(backend="nope")


def test_a_name_is_registered_once():
    with pytest.raises(ValueError, match="image source 'bing' is registered already"):
        IMAGE_SOURCES.register("bing", IMAGE_SOURCES["bing"])

"""Reading the user's inputs: prompt files in three formats and the reference image."""

import numpy as np
import pytest
from PIL import Image

from pipeline.retrieve import ImageInputError, film_size, load_reference
from pipeline.storyline import PromptFileError, read_prompt_file


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_plain_text_one_prompt_per_line_skipping_comments(tmp_path):
    path = write(tmp_path, "p.txt", "# a comment\nfirst prompt\n\n  second prompt  \n   # indented comment\n")
    assert read_prompt_file(path) == ["first prompt", "second prompt"]


def test_yaml_list_and_mapping(tmp_path):
    assert read_prompt_file(write(tmp_path, "a.yaml", "- one\n- two\n")) == ["one", "two"]
    assert read_prompt_file(write(tmp_path, "b.yml", "title: x\nprompts:\n  - one\n  - two\n")) == ["one", "two"]


def test_authors_python_list_is_parsed_not_run(tmp_path):
    path = write(tmp_path, "prompt.txt", 'prompts = [\n    "a cat sits",\n    "the cat walks",  # next\n]\n')
    assert read_prompt_file(path) == ["a cat sits", "the cat walks"]


def test_authors_format_with_code_is_refused_and_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    path = write(tmp_path, "evil.txt", f'prompts = [open({str(marker)!r}, "w").write("x") and "a"]\n')
    with pytest.raises(PromptFileError, match="never executed"):
        read_prompt_file(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("empty.txt", "# only a comment\n\n", "holds no prompt"),
        ("empty.yaml", "[]\n", "holds no prompt"),
        ("blank.yaml", "- fine\n- ''\n", "prompt 2 is empty"),
        ("nums.yaml", "- 1\n- 2\n", "list of strings"),
        ("bad.yaml", "prompts: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_prompt_files(tmp_path, name, text, message):
    with pytest.raises(PromptFileError, match=message):
        read_prompt_file(write(tmp_path, name, text))


def test_missing_prompt_file(tmp_path):
    with pytest.raises(PromptFileError, match="does not exist"):
        read_prompt_file(tmp_path / "nope.txt")


def test_film_size_caps_width_and_rounds_to_16():
    assert film_size(1920, 1080) == (832, 464)
    assert film_size(832, 480) == (832, 480)
    assert film_size(500, 300) == (496, 288)


def test_reference_is_resized_rgb_uint8(tmp_path):
    path = tmp_path / "img.png"
    Image.fromarray(np.zeros((1080, 1920, 4), np.uint8)).save(path)
    ref = load_reference(path)
    assert ref.shape == (464, 832, 3) and str(ref.dtype) == "torch.uint8"


def test_exif_orientation_is_applied(tmp_path):
    path = tmp_path / "phone.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° on display
    Image.fromarray(np.zeros((64, 128, 3), np.uint8)).save(path, exif=exif)
    assert load_reference(path).shape == (128, 64, 3)


def test_not_an_image(tmp_path):
    path = write(tmp_path, "notes.png", "this is text")
    with pytest.raises(ImageInputError, match="notes.png is not a readable image"):
        load_reference(path)
    with pytest.raises(ImageInputError, match="does not exist"):
        load_reference(tmp_path / "missing.png")

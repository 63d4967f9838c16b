"""The film request: one name per setting, flat mappings read into the groups, profiles, the run form's start."""

import pytest
from pydantic import ValidationError

from pipeline.request import GROUPS, PROFILES, FilmRequest


def test_every_setting_has_one_name_across_the_groups():
    names = [name for name in FilmRequest.model_fields if name not in GROUPS]
    for options in GROUPS.values():
        names += list(options.model_fields)
    assert len(names) == len(set(names))


def test_a_flat_mapping_and_the_nested_request_are_the_same_request():
    flat = FilmRequest(clips=2, source="bing", backend="template", steps=4, run_dir="runs/x", chapters=2)
    nested = FilmRequest(
        clips=2,
        retrieve={"source": "bing"},
        storyline={"backend": "template"},
        render={"steps": 4},
        output={"run_dir": "runs/x", "chapters": 2},
    )
    assert flat == nested
    assert FilmRequest(**flat.model_dump(mode="json")) == flat  # request.json reads back as the same request


def test_the_profile_fills_what_the_request_leaves_open():
    demo, wan = FilmRequest(), FilmRequest(profile="wan", model="weights/wan", qwen_model="weights/qwen")
    for request, profile in ((demo, "demo"), (wan, "wan")):
        for name, value in PROFILES[profile].items():
            assert request.flat()[name] == value, (profile, name)
    assert FilmRequest(num_frames=9, max_width=128).flat()["num_frames"] == 9  # the request's own value wins
    assert (
        FilmRequest(profile="wan", model="m", openai_base_url="http://x/v1", openai_model="q").flat()["backend"]
        == "openai"
    )


def test_unknown_settings_are_refused_by_name():
    with pytest.raises(ValidationError, match="cfg"):
        FilmRequest(cfg=5)


def test_the_run_form_starts_without_nulls():
    def nulls(value):
        if isinstance(value, dict):
            return sum(nulls(item) for item in value.values())
        return int(value is None)

    start = FilmRequest().form_defaults()
    assert nulls(start) == 0 and start["render"]["num_frames"] == 33

"""Command-line flags made from `FilmRequest`: one flag per field, named as the field (`num_frames` →
`--num-frames`), typed, with the field's description as help and its choices read from the model (Literal types
and the registries' current names). A field added to the request is a flag without a second edit.
"""

import argparse
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from pipeline.request import GROUPS, FilmRequest


def _plain(annotation: Any) -> Any:
    """The field's type without `| None` and without Annotated wrappers that hold no choices."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        kept = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        annotation = kept[0] if len(kept) == 1 else annotation
    if typing.get_origin(annotation) is typing.Annotated and _choices(annotation) is None:
        return _plain(typing.get_args(annotation)[0])
    return annotation


def _choices(annotation: Any) -> list[str] | None:
    """The allowed values of a type: a Literal's, or a registry name's (the names registered now)."""
    if typing.get_origin(annotation) is typing.Literal:
        return [str(value) for value in typing.get_args(annotation)]
    for meta in getattr(annotation, "__metadata__", ()):
        if hasattr(meta, "registry"):
            return meta.registry.names()
    return None


def _key_value(word: str) -> tuple[str, str]:
    key, sep, value = word.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{word!r} is not KEY=VALUE (e.g. license=commercial,modify)")
    return key, value


class _KeyValues(argparse.Action):
    """KEY=VALUE words into a dict (repeating the flag adds to it)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, {**getattr(namespace, self.dest, {}), **dict(values)})


def _add_field(group: argparse._ArgumentGroup, name: str, info: FieldInfo) -> None:
    default = info.get_default(call_default_factory=True)
    help_text = (info.description or "") + (f" (default: {default})" if default not in (None, [], {}) else "")
    flag = dict(dest=name, default=argparse.SUPPRESS, help=help_text)
    annotation = _plain(info.annotation)
    origin = typing.get_origin(annotation)
    if annotation is bool:
        group.add_argument(_flag(name), action=argparse.BooleanOptionalAction, **flag)
    elif origin is dict:
        group.add_argument(_flag(name), nargs="+", type=_key_value, action=_KeyValues, metavar="KEY=VALUE", **flag)
    elif origin is list:
        item = _plain(typing.get_args(annotation)[0])
        choices = _choices(item)
        group.add_argument(_flag(name), nargs="+", action="extend", type=_converter(item), choices=choices, **flag)
    else:
        group.add_argument(_flag(name), type=_converter(annotation), choices=_choices(annotation), **flag)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _converter(annotation: Any) -> Any:
    return annotation if annotation in (int, float, Path) else str


def add_request_flags(parser: argparse.ArgumentParser, model: type[BaseModel] = FilmRequest) -> None:
    """Add a flag for every field of the film request, in argument groups named as the request's groups."""
    top = parser.add_argument_group("film")
    for name, info in model.model_fields.items():
        if name not in GROUPS:
            _add_field(top, name, info)
    for group_name, options in GROUPS.items():
        group = parser.add_argument_group(group_name, options.__doc__)
        for name, info in options.model_fields.items():
            _add_field(group, name, info)


def given_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The request fields given on the command line (flat; `FilmRequest` reads them into their groups)."""
    names = set(FilmRequest.model_fields) - set(GROUPS)
    for options in GROUPS.values():
        names |= set(options.model_fields)
    return {name: value for name, value in vars(args).items() if name in names}

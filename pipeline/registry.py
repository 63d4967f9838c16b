"""Registries: a table of name → implementation, one per kind of plug-in (image sources, storyline backends, clip
checks). A new plug-in is one module plus one `register` call; what users see of the table (the request's accepted
names, the CLI's choices, the Prefect form's drop-down, the validation message) is read from the table when it is
needed, so a plug-in registered at any time appears everywhere without a second edit.
"""

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any, Generic, TypeVar

from pydantic import AfterValidator, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema

Entry = TypeVar("Entry")


@dataclass
class Registry(Generic[Entry]):
    """Named entries of one kind, in registration order. `kind` names them in messages ("image source")."""

    kind: str
    entries: dict[str, Entry] = field(default_factory=dict)

    def register(self, name: str, entry: Entry) -> Entry:
        """Add `entry` under `name`; a name is registered once."""
        if name in self.entries:
            raise ValueError(f"{self.kind} {name!r} is registered already")
        self.entries[name] = entry
        return entry

    def unregister(self, name: str) -> None:
        self.entries.pop(name, None)

    def names(self) -> list[str]:
        return list(self.entries)

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def __getitem__(self, name: str) -> Entry:
        return self.entries[self.checked(name)]

    def checked(self, name: str) -> str:
        """`name` if it is registered; else ValueError naming every registered one."""
        if name not in self.entries:
            raise ValueError(f"unknown {self.kind} {name!r}: choose one of {', '.join(self.entries)}")
        return name

    def name_type(self) -> Any:
        """A pydantic field type: a string that must name an entry, shown as a choice of the entries in JSON schema
        (the Prefect form's drop-down), both read from the table when used, not when the field is declared."""
        return Annotated[str, AfterValidator(self.checked), _CurrentNames(self)]


@dataclass(frozen=True)
class _CurrentNames:
    """JSON schema of a registry name: `enum` of the names registered when the schema is made."""

    registry: Registry

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {**handler(schema), "enum": self.registry.names()}

    def __hash__(self) -> int:  # pydantic hashes type metadata; a registry is one object, its entries change
        return id(self.registry)

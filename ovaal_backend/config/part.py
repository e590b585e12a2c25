"""What the engine, server and queue parts of the settings share: the error, copies, plain dicts, ``explicit``."""

from __future__ import annotations

import dataclasses
from dataclasses import field, fields
from typing import Any


class ConfigError(ValueError):
    """A setting has a value that cannot work; the message names the setting and what to do."""


class Part:
    """Base of the three parts of the settings: copies, a plain dict, and a record of the names given on purpose.

    Each part is a frozen dataclass whose last field is ``explicit`` (``explicit_field()``): the names of its settings
    given on purpose (environment variables, ``from_env`` overrides). A training profile never replaces them.
    ``explicit`` is not a setting itself (no environment variable, no README row); ``names`` leaves it out.
    """

    explicit: frozenset[str]

    @classmethod
    def names(cls) -> frozenset[str]:
        """The settings this part holds."""
        return frozenset(setting_names(cls))

    def replace(self, **changes: Any) -> Any:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able settings, secrets removed (for results files and logs)."""
        return {name: getattr(self, name) for name in setting_names(type(self))}

    def _check_explicit(self) -> None:
        unknown = set(self.explicit) - self.names()
        if unknown:
            raise ConfigError(f"explicit names settings that do not exist: {', '.join(sorted(unknown))}")


def setting_names(cls: type) -> list[str]:
    """A part's setting names in declaration order (the README's order), ``explicit`` left out."""
    return [f.name for f in fields(cls) if f.metadata.get("setting", True)]


def explicit_field() -> Any:
    """The ``explicit`` field every part ends with: not a setting, empty unless names were given on purpose."""
    return field(default=frozenset(), metadata={"setting": False})

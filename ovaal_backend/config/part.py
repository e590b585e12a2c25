"""What the engine, server and queue parts of the settings share: the error, copies, plain dicts, ``explicit``."""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import field, fields
from typing import Any, TypeVar

P = TypeVar("P", bound=type)


class ConfigError(ValueError):
    """A setting has a value that cannot work; the message names the setting and what to do."""


class Part:
    """Base of the three parts of the settings: copies, a plain dict, and a record of the names given on purpose.

    Each part is a frozen dataclass, wrapped by ``records_given``, whose last field is ``explicit``
    (``explicit_field()``): the names of its settings given on purpose (environment variables, ``from_env``
    overrides, the arguments of ``Config(...)`` or of the part's constructor). A training profile never replaces them.
    ``explicit`` is not a setting itself (no environment variable, no README row, not compared); ``names`` leaves it
    out.
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
    """The ``explicit`` field every part ends with: not a setting, and not compared (two parts with the same values
    are equal, however they were given)."""
    return field(default=frozenset(), compare=False, metadata={"setting": False})


def records_given(cls: P) -> P:
    """Make a part's constructor record the settings it is given in ``explicit``, unless ``explicit`` is given too
    (``from_env`` names what the environment set; ``dataclasses.replace`` passes it on, so a copy keeps it).

    This is what lets a profile change only the settings nobody set: ``EngineConfig(epochs=20)`` keeps its 20 epochs
    on a CPU although 20 is the default, as ``EPOCHS=20`` in the environment does. Settings go by name.
    """
    generated = cls.__init__

    @functools.wraps(generated)
    def __init__(self: Any, **settings: Any) -> None:
        settings.setdefault("explicit", frozenset(settings))
        generated(self, **settings)

    cls.__init__ = __init__  # type: ignore[misc]
    return cls

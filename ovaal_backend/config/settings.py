"""``Config``: every setting, the engine, server and queue parts composed, read and built flat."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from .engine import EngineConfig
from .env import environment_values
from .part import ConfigError, Part
from .queue import QueueConfig
from .server import ServerConfig

PARTS: dict[str, type[Part]] = {"engine": EngineConfig, "server": ServerConfig, "queue": QueueConfig}
"""The parts of Config by attribute name. Each setting lives in exactly one part (``tests/test_config.py``)."""
_OWNER = {name: part for part, cls in PARTS.items() for name in cls.names()}


@dataclass(frozen=True, init=False)
class Config:
    """Every setting: an engine, a server and a queue part, each a frozen dataclass with its own checks.

    Every setting name is unique across the parts, so ``Config`` also reads and builds them flat:
    ``Config(epochs=7).epochs`` is ``Config(engine=EngineConfig(epochs=7)).engine.epochs``. What crosses a process
    boundary takes only the part it needs: a ``RoundJob`` carries ``config.engine`` (no key, no password).
    """

    engine: EngineConfig
    server: ServerConfig
    queue: QueueConfig

    def __init__(self, engine: EngineConfig | None = None, server: ServerConfig | None = None,
                 queue: QueueConfig | None = None, *, explicit: frozenset[str] | None = None, **settings: Any) -> None:
        unknown = set(settings) - set(_OWNER)
        if unknown:
            raise TypeError(f"Config got unknown settings: {', '.join(sorted(unknown))}")
        if explicit is not None and set(explicit) - set(_OWNER):
            raise ConfigError("explicit names settings that do not exist: "
                              f"{', '.join(sorted(set(explicit) - set(_OWNER)))}")
        given = {"engine": engine, "server": server, "queue": queue}
        for part, cls in PARTS.items():
            mine = {k: v for k, v in settings.items() if _OWNER[k] == part}
            if explicit is not None:
                mine["explicit"] = frozenset(explicit) & cls.names()
            base = given[part]
            object.__setattr__(self, part, base.replace(**mine) if base is not None else cls(**mine))

    def __getattr__(self, name: str) -> Any:
        """A setting read flat (``config.epochs``), from the part that owns it."""
        part = _OWNER.get(name)
        if part is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return getattr(object.__getattribute__(self, part), name)

    @property
    def explicit(self) -> frozenset[str]:
        """Names of the settings given on purpose, in all parts (a training profile never replaces them)."""
        return self.engine.explicit | self.server.explicit | self.queue.explicit

    @property
    def budget(self) -> int:
        """Pixels per image when every round has been answered."""
        return self.engine.budget

    @property
    def allowed_project_ids(self) -> frozenset[int]:
        """The project ids of ALLOWED_PROJECTS (empty = every project is served)."""
        return self.server.allowed_project_ids

    @property
    def image_hosts(self) -> frozenset[str]:
        """ALLOWED_IMAGE_HOSTS as lower-case ``host`` or ``host:port`` entries."""
        return self.server.image_hosts

    @property
    def host_names(self) -> frozenset[str]:
        """ALLOWED_HOST_NAMES as lower-case names."""
        return self.server.host_names

    @property
    def serves_open_network(self) -> bool:
        """True when HOST is reachable from other machines and no basic auth protects the routes."""
        return self.server.serves_open_network

    def validate(self) -> None:
        """Raise ConfigError for values that cannot work, naming the setting (each part checks its own)."""
        for part in PARTS:
            getattr(self, part).validate()

    def replace(self, **changes: Any) -> Config:
        """A copy with some settings changed (validated again); ``explicit`` is kept."""
        return Config(self.engine, self.server, self.queue, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Config:
        """Defaults, then environment variables named like the fields in upper case, then ``overrides``."""
        environ = os.environ if environ is None else environ
        types = {f.name: type(f.default) for f in setting_fields()}
        values = environment_values(environ, types)
        values.update(overrides)
        return cls(**values, explicit=frozenset(values))

    def profile_changes(self, profile: str) -> dict[str, Any]:
        """The engine fields ``profile`` sets (``EngineConfig.profile_changes``)."""
        return self.engine.profile_changes(profile)

    def for_machine(self, has_cuda: bool) -> Config:
        """The config with the training profile of this machine applied (``EngineConfig.for_machine``)."""
        return Config(self.engine.for_machine(has_cuda), self.server, self.queue)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able settings of every part, secrets removed (for results files and logs)."""
        return {**self.engine.to_dict(), **self.server.to_dict(), **self.queue.to_dict()}


def engine_part(config: EngineConfig | Config) -> EngineConfig:
    """The engine settings of either a whole Config or an EngineConfig (what a round job may carry)."""
    return config.engine if isinstance(config, Config) else config


def setting_fields() -> tuple[dataclasses.Field, ...]:
    """Every setting's field, part after part (each has an environment variable and a README row)."""
    return tuple(f for cls in PARTS.values() for f in fields(cls) if f.name in cls.names())

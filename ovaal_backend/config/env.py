"""Settings from the environment: each field's variable (its name in upper case), label-studio-ml's names as
aliases, and the text of a variable turned into the field's type."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .part import ConfigError

ALIASES = {"LABEL_STUDIO_ACCESS_TOKEN": "label_studio_api_key", "LABEL_STUDIO_HOST": "label_studio_url",
           "THREADS": "server_threads", "START_TRAINING_EACH_N_UPDATES": "train_after_annotations"}
"""label-studio-ml's environment names, accepted for ours (ours win when both are set)."""


def environment_values(environ: Mapping[str, str], kinds: Mapping[str, type]) -> dict[str, Any]:
    """The settings ``environ`` sets, each turned into its type (``kinds``: setting name -> type of its default).

    An alias counts only where our own name is not set; an empty variable counts as not set.
    """
    values: dict[str, Any] = {}
    for alias, name in ALIASES.items():
        if environ.get(alias):
            values[name] = _parse(alias, environ[alias], kinds[name])
    for name, kind in kinds.items():
        raw = environ.get(name.upper())
        if raw is not None and raw != "":
            values[name] = _parse(name, raw, kind)
    return values


def _parse(name: str, raw: str, kind: type) -> Any:
    """Turn an environment string into the field's type, with an error that names the variable."""
    try:
        if kind is bool:
            low = raw.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if kind is int:
            return int(raw)
        if kind is float:
            return float(raw)
        return raw
    except ValueError:
        raise ConfigError(f"environment variable {name.upper()}={raw!r} is not a valid {kind.__name__}") from None

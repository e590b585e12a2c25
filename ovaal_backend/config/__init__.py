"""The settings: ``Config`` composed of frozen parts for the engine, the server and the job queue.

Every field has a default and an environment variable (the field name in upper case, e.g. ``PIXELS_PER_ROUND``).
``Config.from_env()`` runs once, where a program starts; everything else receives the object explicitly, or only the
part it needs (a round job carries ``EngineConfig``: no Label Studio key or basic-auth password travels to workers).
The README's configuration table documents each field.

One module per job: ``engine.py``, ``server.py`` and ``queue.py`` hold the three parts, ``settings.py`` the
composed ``Config``, ``profiles.py`` the training profiles, ``choices.py`` the names the engine's settings take
(from the engine's registries), ``addresses.py`` the host and project lists of the server's settings, ``env.py`` the
reading of environment variables, ``part.py`` what the parts share. Import from here: ``from ovaal_backend.config
import Config``.
"""

from .addresses import MAX_PROJECT_ID, is_loopback_host
from .choices import (
    CLASSIFIERS,
    IGNORE_INDEX,
    LR_SCHEDULES,
    MULTICLASS_SCORERS,
    RANDOM_SELECTION,
    SCORERS,
    SELECTIONS,
    SEMI_RULES,
    SEMI_TEACHERS,
    is_ova,
)
from .engine import ENGINE_CHOICES, EngineConfig
from .env import ALIASES
from .part import ConfigError
from .profiles import TRAIN_PROFILES
from .queue import QueueConfig, redact_url
from .server import LOG_LEVELS, ServerConfig
from .settings import PARTS, Config, engine_part, setting_fields

__all__ = [
    "ALIASES", "CLASSIFIERS", "ENGINE_CHOICES", "IGNORE_INDEX", "LOG_LEVELS", "LR_SCHEDULES", "MAX_PROJECT_ID",
    "MULTICLASS_SCORERS", "PARTS", "RANDOM_SELECTION", "SCORERS", "SELECTIONS", "SEMI_RULES", "SEMI_TEACHERS",
    "TRAIN_PROFILES", "Config", "ConfigError", "EngineConfig", "QueueConfig", "ServerConfig", "engine_part",
    "is_loopback_host", "is_ova", "redact_url", "setting_fields",
]

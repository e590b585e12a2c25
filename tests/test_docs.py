"""Documentation that must not drift: every setting is in the README table, every public function has a docstring."""

import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import ovaal_backend
from ovaal_backend.config import TRAIN_PROFILES, setting_fields

ROOT = Path(__file__).resolve().parents[1]


def test_every_setting_is_in_the_readme_table():
    readme = (ROOT / "README.md").read_text()
    documented = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", readme))
    missing = [f.name.upper() for f in setting_fields() if f.name.upper() not in documented]
    assert not missing, f"add these settings to the README configuration table: {missing}"


def _settings_table() -> dict[str, tuple[str, str | None]]:
    """The README configuration table: each variable -> (its default as written, its ``cpu`` profile value or None).

    A row may name several variables (`` `LR`, `BETA1` ``) with as many defaults, or one ``(empty)`` for all; a
    ``(`cpu`: 2)`` after the defaults gives the values of the cpu training profile, in the same order.
    """
    table: dict[str, tuple[str, str | None]] = {}
    for line in (ROOT / "README.md").read_text().splitlines():
        row = re.fullmatch(r"\| ((?:`[A-Z][A-Z0-9_]+`(?:, )?)+) \| (.*?) \| .*\|", line)
        if row is None:
            continue
        names = re.findall(r"`([A-Z0-9_]+)`", row.group(1))
        cpu = re.search(r"\(`cpu`: ([^)]*)\)", row.group(2))
        written = row.group(2)[:cpu.start()] if cpu else row.group(2)
        defaults = [""] * len(names) if written.strip() == "(empty)" else re.findall(r"`([^`]*)`", written)
        cpu_values = re.findall(r"`?([^`,\s]+)`?", cpu.group(1)) if cpu else [None] * len(names)
        assert len(defaults) == len(cpu_values) == len(names), f"README row {line[:60]!r}: one default per variable"
        table.update({name: (default, value) for name, default, value in zip(names, defaults, cpu_values)})
    return table


def _as_field(text: str, kind: type) -> object:
    return text == "true" if kind is bool else kind(text)


def test_the_readme_table_gives_every_settings_default_and_cpu_profile_value():
    """The table is the settings' documentation: its defaults are the code's, and each field the cpu training
    profile changes shows the profile's value (``(`cpu`: 2)``), so a changed default or profile changes the README."""
    table = _settings_table()
    assert {f.name.upper() for f in setting_fields()} == set(table), "one README table row per setting, no other"
    for f in setting_fields():
        default, cpu = table[f.name.upper()]
        assert _as_field(default, type(f.default)) == f.default, f"README: {f.name.upper()} defaults to {f.default!r}"
        profile = TRAIN_PROFILES["cpu"].get(f.name)
        assert (None if cpu is None else _as_field(cpu, type(f.default))) == profile, \
            f"README: {f.name.upper()} under TRAIN_PROFILE=cpu is {profile!r}"


def test_public_functions_and_classes_have_docstrings():
    undocumented = []
    for info in pkgutil.walk_packages(ovaal_backend.__path__, prefix="ovaal_backend."):
        if info.name.rsplit(".", 1)[-1].startswith("_"):
            continue
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
                continue
            if (inspect.isfunction(obj) or inspect.isclass(obj)) and not inspect.getdoc(obj):
                undocumented.append(f"{info.name}.{name}")
    assert not undocumented, f"add docstrings: {undocumented}"

"""Documentation that must not drift: every setting is in the README table, every public function has a docstring."""

import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import ovaal_backend
from ovaal_backend.config import setting_fields

ROOT = Path(__file__).resolve().parents[1]


def test_every_setting_is_in_the_readme_table():
    readme = (ROOT / "README.md").read_text()
    documented = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", readme))
    missing = [f.name.upper() for f in setting_fields() if f.name.upper() not in documented]
    assert not missing, f"add these settings to the README configuration table: {missing}"


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

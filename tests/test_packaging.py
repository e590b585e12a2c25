"""What a user installs and reads: every imported package is declared, the console script is the CLI, the license
is there, and the user-facing docs link only to files the repository has."""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
USER_DOCS = [ROOT / "README.md", ROOT / "docker" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# What users are sent to first: these must not point into the development machines' ../shared/ folder either.
ENTRY_DOCS = [ROOT / "README.md", ROOT / "docker" / "README.md", ROOT / "docs" / "method.md"]


def imported_top_level_modules(package: Path) -> set[str]:
    """Top-level names of every absolute import in a package's sources, conditional ones included."""
    names = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def declared(requirements: list[str]) -> set[str]:
    return {canonicalize_name(Requirement(line).name) for line in requirements}


def requirement_lines(path: Path) -> list[str]:
    lines = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("-r")]


def test_every_imported_third_party_module_is_declared():
    """A fresh `pip install .` has everything ovaal_backend imports (issue 18: `requests` was imported, undeclared)."""
    third_party = imported_top_level_modules(ROOT / "ovaal_backend") - set(sys.stdlib_module_names) - {"ovaal_backend"}
    distributions = importlib.metadata.packages_distributions()
    dependencies = declared(PYPROJECT["project"]["dependencies"])
    missing = {}
    for module in sorted(third_party):
        providers = {canonicalize_name(d) for d in distributions.get(module, [])}
        assert providers, f"ovaal_backend imports {module}, which no installed distribution provides"
        if not providers & dependencies:
            missing[module] = sorted(providers)
    assert not missing, f"declare in pyproject.toml (and requirements.txt): {missing}"
    assert {"requests", "torch", "flask", "werkzeug", "label-studio-sdk"} <= dependencies


def test_pyproject_and_requirements_list_the_same_packages():
    """requirements.txt (make install, the Dockerfiles) and pyproject.toml (pip install .) install the same pins."""
    project = PYPROJECT["project"]
    assert sorted(project["dependencies"]) == sorted(requirement_lines(ROOT / "requirements.txt"))
    assert sorted(project["optional-dependencies"]["test"]) == \
        sorted(requirement_lines(ROOT / "requirements-test.txt"))


def test_console_script_is_the_cli_main():
    """`ovaal-backend` runs what `python -m ovaal_backend` runs."""
    target = PYPROJECT["project"]["scripts"]["ovaal-backend"]
    module, _, attribute = target.partition(":")
    main = getattr(importlib.import_module(module), attribute)
    main_module = (ROOT / "ovaal_backend" / "__main__.py").read_text()
    assert "from .cli import main" in main_module and "sys.exit(main())" in main_module
    assert main is importlib.import_module("ovaal_backend.cli").main
    with pytest.raises(SystemExit) as stop:
        main(["--help"])
    assert stop.value.code == 0


def test_apache_license():
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith(" " * 33 + "Apache License\n") and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text and "Copyright 2026 ovaal-backend authors" in text
    assert PYPROJECT["project"]["license"] == "Apache-2.0" and PYPROJECT["project"]["license-files"] == ["LICENSE"]


def markdown_links(text: str) -> list[str]:
    return re.findall(r"\]\(([^)\s]+)\)", text)


def test_user_docs_link_only_to_files_in_the_repository():
    """Relative links resolve inside the repository (anchors ignored); the entry docs never send users to
    ../shared/, which only the development machines have."""
    broken = []
    for doc in USER_DOCS:
        for target in markdown_links(doc.read_text()):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            path = (doc.parent / target.split("#")[0]).resolve()
            if not path.exists() or ROOT not in path.parents:
                broken.append(f"{doc.relative_to(ROOT)} -> {target}")
    assert not broken, broken
    for doc in ENTRY_DOCS:
        assert not re.search(r"(\.\./|/work/)shared/", doc.read_text()), f"{doc.relative_to(ROOT)} points into shared/"

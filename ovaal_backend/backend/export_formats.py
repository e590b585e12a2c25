"""The names of ``export``'s formats and files, apart from the export itself so that the CLI's parser (and its
``--help``) can use them without importing torch."""

from __future__ import annotations

FORMATS = ("png", "coco", "ls-json")
"""What ``export --format`` may name: PNG label maps, COCO JSON, Label Studio JSON."""
DEFAULT_FORMATS = ("png", "coco")
"""What ``export`` writes without ``--format``: the label maps, and COCO beside them (it needs nothing more from the
label config; the Label Studio JSON needs a BrushLabels control, so it is asked for by name)."""
COCO_FILE = "coco.json"
LS_FILE = "label_studio.json"


def parse_formats(text: str) -> tuple[str, ...]:
    """``"png,coco"`` -> ``("png", "coco")``, in FORMATS order, each once.

    Raises:
        ValueError: An unknown name, or none at all.
    """
    names = {name.strip().lower() for name in text.split(",") if name.strip()}
    unknown = sorted(names - set(FORMATS))
    if unknown or not names:
        raise ValueError(f"unknown export format {', '.join(unknown) or repr(text)}: choose from {', '.join(FORMATS)} "
                         "(comma-separated)")
    return tuple(name for name in FORMATS if name in names)

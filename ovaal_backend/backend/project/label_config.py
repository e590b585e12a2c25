"""The label config as this backend needs it: a KeyPointLabels control with an ignore label, and the XML lines to
paste when it lacks them.

Torch-free on purpose: ``validate.py`` checks a label config before a request reaches any project, and the web
layer's checks must not load the engine (``tests/test_layers.py``).
"""

from __future__ import annotations

from xml.sax.saxutils import quoteattr

from ...config import Config
from ..convert import LabelConfigError, ParsedLabelConfig, check_label_config_size


def parse_label_config(xml: str, config: Config) -> ParsedLabelConfig:
    """The label config as this backend needs it: a KeyPointLabels control with an ignore label.

    Raises:
        LabelConfigError: The config cannot drive the loop; the message says what to add.
        LabelConfigTooLarge: It is past MAX_LABEL_CONFIG_KB or MAX_CLASSES (checked before or while parsing).
    """
    check_label_config_size(xml, config.max_label_config_kb)
    parsed_config = ParsedLabelConfig.parse(xml, config.query_from_name, config.mask_from_name, config.max_classes)
    if parsed_config.query_from_name is None:
        raise LabelConfigError("the backend asks annotators about points, and this config has no <KeyPointLabels>: "
                               "add these lines inside <View>, after the <Image> tag: "
                               f"{keypoint_lines(parsed_config, xml)}")
    if parsed_config.ignore_label is None:
        raise LabelConfigError(f"add this line inside <KeyPointLabels name=\"{parsed_config.query_from_name}\">: "
                               f"{ignore_line(xml)} (annotators need a \"can't tell\" answer, and random round-0 "
                               "points are pre-labelled with it so a careless submit stores nothing wrong)")
    return parsed_config


def keypoint_lines(parsed_config: ParsedLabelConfig, xml: str) -> str:
    """The ``<KeyPointLabels>`` control a brush-only config needs, with its classes and an ignore label, as XML lines
    to paste (a control name and ignore value the config does not use yet)."""
    name = _unused("query", xml)
    labels = "".join(f"\n  <Label value={quoteattr(c)}/>" for c in parsed_config.classes)
    return (f"\n<KeyPointLabels name={quoteattr(name)} toName={quoteattr(parsed_config.image_name)}>{labels}"
            f"\n  {ignore_line(xml, parsed_config.ignore_label)}\n</KeyPointLabels>")


def ignore_line(xml: str, value: str | None = None) -> str:
    """The ``<Label>`` line of an ignore label (``value`` when the config already names one, as BrushLabels may)."""
    return f'<Label value={quoteattr(value or _unused("ignore", xml))} ovaal="ignore"/>'


def _unused(word: str, xml: str) -> str:
    """``word``, or ``word_2``, ... : the first not already in the XML as a quoted value."""
    candidate, n = word, 1
    while f'"{candidate}"' in xml or f"'{candidate}'" in xml:
        n += 1
        candidate = f"{word}_{n}"
    return candidate

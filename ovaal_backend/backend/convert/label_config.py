"""The label config: which classes, which image, and which controls a result must name (Label Studio hides a result
whose ``from_name`` or ``to_name`` the config lacks)."""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from ...config import IGNORE_INDEX

logger = logging.getLogger(__name__)

IGNORE_ATTRIBUTE = "ovaal"
"""Attribute of a ``<Label>`` that marks it as "none of these / can't tell" when its value is ``ignore``."""

IGNORE_VALUES = frozenset({"ignore", "void", "unknown", "can't tell", "cant_tell", "none"})
"""Label values (lower case) recognised as the ignore label when no ``<Label ovaal="ignore">`` exists."""


class LabelConfigError(ValueError):
    """The project's label config cannot drive this backend; the message says what to add or rename."""


class LabelConfigTooLarge(LabelConfigError):
    """The label config is past MAX_LABEL_CONFIG_KB or MAX_CLASSES; the message names the setting."""


def check_label_config_size(xml: str, max_kb: int) -> None:
    """Raise LabelConfigTooLarge for a label config larger than ``max_kb`` KiB, before anything parses it."""
    size = len(xml.encode("utf-8", "surrogatepass"))
    if size > max_kb * 1024:
        raise LabelConfigTooLarge(f"the label config has {size / 1024:.1f} KiB, more than MAX_LABEL_CONFIG_KB="
                                  f"{max_kb}: shorten it or raise MAX_LABEL_CONFIG_KB")


@dataclass(frozen=True)
class ParsedLabelConfig:
    """What the backend needs from a label config: class names and the tag names results must carry (read by
    ``parse``; label-studio-sdk's ``LabelInterface`` is the SDK's own, fuller model of a config).

    Attributes:
        classes: Class names in config order; the model's class index ``i`` is ``classes[i]``. The ignore label
            is not a class.
        image_name: Name of the ``<Image>`` tag, used as ``to_name`` of every result.
        image_key: Task data key holding the image URL (``value="$image"`` -> ``"image"``).
        query_from_name: Name of the ``<KeyPointLabels>`` control used for point queries, or None.
        mask_from_name: Name of the ``<BrushLabels>`` control used for predicted masks, or None.
        ignore_label: Label value meaning "none of these / can't tell", or None if the config has none.
    """

    classes: tuple[str, ...]
    image_name: str
    image_key: str
    query_from_name: str | None = None
    mask_from_name: str | None = None
    ignore_label: str | None = None

    @classmethod
    def parse(cls, xml: str, query_from_name: str = "", mask_from_name: str = "",
              max_classes: int = 0) -> ParsedLabelConfig:
        """Read a label config, in time linear in its size (a config with 40,000 labels once took a minute).

        Classes come from the ``<KeyPointLabels>`` control because that is what annotators answer with; a config
        with only ``<BrushLabels>`` still works for predictions. Tag and attribute names are matched case-insensitively,
        as Label Studio does.

        Args:
            xml: The label config XML (the project's ``label_config`` or ``/setup``'s ``schema``).
            query_from_name: Name of the KeyPointLabels control to use; empty picks the first one.
            mask_from_name: Name of the BrushLabels control to use; empty picks the first one.
            max_classes: Most classes a control may hold besides its ignore label (0 = no limit; MAX_CLASSES in the
                backend); counted while reading, so a huge control stops early.

        Returns:
            The parsed interface.

        Raises:
            LabelConfigError: The XML is malformed, lacks an Image or a KeyPointLabels/BrushLabels control, names a
                control that does not exist, repeats a label, or its BrushLabels lacks some KeyPointLabels class.
            LabelConfigTooLarge: A control holds more than ``max_classes`` classes.
        """
        try:
            root = ET.fromstring(xml)
        except ET.ParseError as exc:
            raise LabelConfigError(f"label config is not valid XML: {exc}") from None
        images = {_attr(el, "name"): el for el in root.iter() if _tag(el) == "image"}
        if not images:
            raise LabelConfigError('label config has no <Image> tag; add <Image name="image" value="$image"/>')
        query = _find_control(root, "keypointlabels", query_from_name, "QUERY_FROM_NAME")
        mask = _find_control(root, "brushlabels", mask_from_name, "MASK_FROM_NAME")
        if query is None and mask is None:
            raise LabelConfigError("label config has neither <KeyPointLabels> nor <BrushLabels>; add "
                                   '<KeyPointLabels name="query" toName="image"> with one <Label> per class')
        main = query if query is not None else mask
        labels, ignore_label = _control_labels(main, max_classes + 1 if max_classes else 0)  # + its ignore label
        classes = tuple(label for label in labels if label != ignore_label)
        if max_classes and len(classes) > max_classes:
            raise _too_many_classes(main, max_classes)
        if not classes:
            raise LabelConfigError(f"<{main.tag} name={_attr(main, 'name')!r}> has no class labels; "
                                   "add one <Label value=...> per class")
        if query is not None and mask is not None:
            mask_labels = set(_control_labels(mask, max_classes + 1 if max_classes else 0)[0])
            missing = [c for c in classes if c not in mask_labels]
            if missing:
                raise LabelConfigError(f"<BrushLabels name={_attr(mask, 'name')!r}> lacks the classes {missing}; "
                                       "give it the same labels as the KeyPointLabels control")
        image_name = _image_of(main, images)
        image_key = _attr(images[image_name], "value")
        if not image_key.startswith("$") or len(image_key) < 2:
            raise LabelConfigError(f'<Image name="{image_name}"> needs value="$<data key>", got {image_key!r}')
        return cls(
            classes=classes,
            image_name=image_name,
            image_key=image_key[1:],
            query_from_name=None if query is None else _attr(query, "name"),
            mask_from_name=None if mask is None else _attr(mask, "name"),
            ignore_label=ignore_label,
        )

    def class_index(self, label: str) -> int:
        """Index of a label value in ``classes``; IGNORE_INDEX for the ignore label and for unknown labels."""
        try:
            return self.classes.index(label)
        except ValueError:
            return IGNORE_INDEX

    def label_name(self, index: int) -> str | None:
        """Label value for a class index; the ignore label (None if the config has none) for IGNORE_INDEX.

        Raises:
            ValueError: The index is past the last class, which means the model and the config disagree.
        """
        if index >= len(self.classes):
            raise ValueError(f"class index {index} but the label config has only {len(self.classes)} classes")
        return self.classes[index] if index >= 0 else self.ignore_label


def _tag(el: ET.Element) -> str:
    """Lower-case tag name, because Label Studio accepts any case."""
    return el.tag.lower() if isinstance(el.tag, str) else ""


def _attr(el: ET.Element, name: str, default: str = "") -> str:
    """Attribute by case-insensitive name (Label Studio accepts ``toName`` and ``toname``)."""
    name = name.lower()
    for key, value in el.attrib.items():
        if key.lower() == name:
            return value
    return default


def _find_control(root: ET.Element, tag: str, name: str, setting: str) -> ET.Element | None:
    """The control of this kind with this name, or the first one when no name is given."""
    controls = [el for el in root.iter() if _tag(el) == tag]
    if name:
        for el in controls:
            if _attr(el, "name") == name:
                return el
        found = ", ".join(repr(_attr(el, "name")) for el in controls) or "none"
        raise LabelConfigError(f"{setting}={name!r} but the label config has no such <{tag}> control "
                               f"(found: {found}); fix {setting} or the config")
    if len(controls) > 1:
        logger.warning("label config has %d <%s> controls; using %r (set %s to choose)",
                       len(controls), tag, _attr(controls[0], "name"), setting)
    return controls[0] if controls else None


def _control_labels(control: ET.Element, max_labels: int = 0) -> tuple[list[str], str | None]:
    """A control's label values in order, and which of them is the ignore label.

    Raises:
        LabelConfigTooLarge: More than ``max_labels`` labels, the ignore label included (checked as they are read;
            0 = no limit).
    """
    labels: list[str] = []
    seen: set[str] = set()  # a set, not ``labels``: the duplicate check stays linear
    marked: str | None = None
    for el in control.iter():
        if _tag(el) != "label":
            continue
        value = _attr(el, "value")
        if not value:
            raise LabelConfigError(f"a <Label> of <{control.tag} name={_attr(control, 'name')!r}> has no value")
        if value in seen:
            raise LabelConfigError(f"label {value!r} appears twice in <{control.tag} name={_attr(control, 'name')!r}>; "
                                   "label values must be unique")
        labels.append(value)
        seen.add(value)
        if max_labels and len(labels) > max_labels:
            raise _too_many_classes(control, max_labels - 1)
        if marked is None and _attr(el, IGNORE_ATTRIBUTE).lower() == "ignore":
            marked = value
    if marked is None:
        marked = next((v for v in labels if v.strip().lower() in IGNORE_VALUES), None)
    return labels, marked


def _too_many_classes(control: ET.Element, max_classes: int) -> LabelConfigTooLarge:
    return LabelConfigTooLarge(f"<{control.tag} name={_attr(control, 'name')!r}> has more than MAX_CLASSES="
                               f"{max_classes} classes: merge classes or raise MAX_CLASSES")


def _image_of(control: ET.Element, images: dict[str, ET.Element]) -> str:
    """Name of the Image tag the control labels (its first ``toName`` that is an Image)."""
    to_names = [n.strip() for n in _attr(control, "toName").split(",") if n.strip()]
    for name in to_names:
        if name in images:
            return name
    raise LabelConfigError(f"<{control.tag} name={_attr(control, 'name')!r}> has toName={_attr(control, 'toName')!r}, "
                           f"which is not an <Image> (images: {sorted(images)}); point toName at the Image's name")

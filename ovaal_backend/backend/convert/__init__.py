"""Pure conversions between Label Studio JSON and pixels.

This package is the only place that knows Label Studio's coordinate conventions: keypoints are percentages of the
original image size, brush masks are Label Studio's own RLE (not COCO RLE), and every result must name a control
(``from_name``) and an object (``to_name``) that exist in the project's label config, else Label Studio silently
hides it. Nothing here talks to the network or imports torch, so the server, the simulator and the export CLI can
all share it and the tests need no Label Studio.

One module per job: ``label_config.py`` reads the label config, ``keypoints.py`` turns queries into keypoints
and answered keypoints into labelled pixels, ``brush.py`` turns class maps into brush results and back. Import from
here: ``from ovaal_backend.backend.convert import ParsedLabelConfig``.

Pixels are ``(row, col)`` with ``x = col`` and ``y = row``.
"""

from .brush import brush_results, brush_rle, decode_brush
from .keypoints import annotation_points, keypoint_results, percent_to_pixel, pixel_to_percent
from .label_config import LabelConfigError, LabelConfigTooLarge, ParsedLabelConfig, check_label_config_size

__all__ = [
    "LabelConfigError", "LabelConfigTooLarge", "ParsedLabelConfig", "annotation_points", "brush_results", "brush_rle",
    "check_label_config_size", "decode_brush", "keypoint_results", "percent_to_pixel", "pixel_to_percent",
]

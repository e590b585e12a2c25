"""The scripted annotator: answers a query task's points from the ground truth.

One function for every caller: the fake Label Studio's unit tests (tests/helpers/fake_label_studio.py), the
end-to-end test against a real Label Studio (tests/test_e2e_label_studio.py) and benchmarks/backend_bench.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ovaal_backend.backend.convert import percent_to_pixel

ANNOTATION_KEYS = ("id", "from_name", "to_name", "type", "original_width", "original_height", "image_rotation")
"""The keys of a prediction region that Label Studio's editor keeps in a submitted annotation (no score, no meta)."""


def answer_keypoints(result: Sequence[dict[str, Any]], truth: np.ndarray, classes: Sequence[str],
                     ignore: str = "ignore") -> list[dict[str, Any]]:
    """The annotation result that confirms or fixes every pre-labelled keypoint from the ground truth.

    Args:
        result: The query task's keypoint prediction result (regions with ``value.x``/``value.y`` in percent and
            ``original_width``/``original_height``).
        truth: The ``(H, W)`` ground-truth class map at the image's original size. A value outside
            ``0 .. len(classes) - 1`` (void: -1 or 255) is answered with the ignore label.
        classes: The class names, in class-index order (the label config's).
        ignore: The ignore label's name.

    Returns:
        One region per keypoint, at the same place, labelled with the true class.

    Raises:
        ValueError: A region's original size is not the ground truth's.
    """
    height, width = truth.shape
    answer = []
    for region in result:
        if (region.get("original_width", width), region.get("original_height", height)) != (width, height):
            raise ValueError(f"region {region.get('id')} is on a {region['original_width']}x"
                             f"{region['original_height']} image; the ground truth is {width}x{height}")
        col, row = percent_to_pixel(region["value"]["x"], region["value"]["y"], width, height)
        label = int(truth[row, col])
        name = classes[label] if 0 <= label < len(classes) else ignore
        kept = {key: region[key] for key in ANNOTATION_KEYS if key in region}
        answer.append(dict(kept, value=dict(region["value"], keypointlabels=[name])))
    return answer

"""The webhook actions of Label Studio that carry annotations, named once for the two places that read them.

Torch-free on purpose (``tests/test_layers.py``): ``validate.py`` checks a webhook's shape before anything is stored,
and ``events.py``, which applies it later, may import the engine.
"""

ANNOTATION_ACTIONS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_CREATED")
"""Actions whose payload holds an ``annotation`` (or a list of them) and its ``task``."""

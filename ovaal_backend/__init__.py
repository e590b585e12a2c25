"""ovaal-backend: One-vs-All active learning (OVAAL / OVAAL+) for semantic segmentation, as a Label Studio ML backend."""

__version__ = "0.1.0"

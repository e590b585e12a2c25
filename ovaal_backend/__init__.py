"""ovaal-backend: One-vs-All active learning (OVAAL / OVAAL+) for semantic segmentation, as a Label Studio backend."""

__version__ = "0.1.0"

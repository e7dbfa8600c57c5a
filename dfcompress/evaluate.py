"""The evaluation functions the pipeline calls; implemented in :mod:`dfcompress.metrics`."""
from .metrics import (
    accuracy,
    agreement,
    count_macs,
    count_params,
    disk_size,
    feature_frechet_distance,
    find_classifier,
    frechet_distance,
    latency,
    synthetic_quality,
)

__all__ = [
    "accuracy", "agreement", "count_macs", "count_params", "disk_size", "feature_frechet_distance",
    "find_classifier", "frechet_distance", "latency", "synthetic_quality",
]

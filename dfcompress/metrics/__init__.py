"""Evaluation metrics: accuracy and agreement, model cost, synthetic-data quality, feature Frechet distance.

:mod:`dfcompress.evaluation` re-exports the public functions with the evaluation the tasks run."""
from .classification import accuracy, agreement, topk_accuracy
from .cost import count_macs, count_params, disk_size, latency
from .features import find_classifier, logits_and_features
from .frechet import feature_frechet_distance, frechet_distance
from .synthetic import class_balance, mean_pairwise_cosine_distance, synthetic_quality

__all__ = [
    "accuracy", "agreement", "topk_accuracy",
    "count_macs", "count_params", "disk_size", "latency",
    "find_classifier", "logits_and_features",
    "feature_frechet_distance", "frechet_distance",
    "class_balance", "mean_pairwise_cosine_distance", "synthetic_quality",
]

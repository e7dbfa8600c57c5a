"""Training a student from a teacher on (synthetic) images: Hinton knowledge distillation."""
from .augment import random_crop_flip
from .hints import FeatureHints, hint_loss
from .kd import KDOptions, KnowledgeDistillation, kd_loss

__all__ = ["FeatureHints", "KDOptions", "KnowledgeDistillation", "hint_loss", "kd_loss", "random_crop_flip"]

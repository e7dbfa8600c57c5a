"""Training a student from a teacher on (synthetic) images: Hinton knowledge distillation."""
from .augment import random_crop_flip
from .kd import KDOptions, KnowledgeDistillation, kd_loss

__all__ = ["KDOptions", "KnowledgeDistillation", "kd_loss", "random_crop_flip"]

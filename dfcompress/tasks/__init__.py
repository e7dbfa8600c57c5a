"""The built-in tasks, one module each: :mod:`~dfcompress.tasks.distill` (``DistillTask``) and
:mod:`~dfcompress.tasks.prune` (``PruneTask``); the training they share (online schedule, time budget,
learning curve) is in :mod:`~dfcompress.tasks.training`, the evaluation in :mod:`dfcompress.evaluation`.

This package imports no torch by itself (tasks are registered as lazy ``"module:Class"`` strings); the task
classes are loaded on first access.
"""
from __future__ import annotations

from .._lazy import lazy_getattr

_LAZY = {"DistillTask": "distill", "PruneTask": "prune"}

__all__ = sorted(_LAZY)

__getattr__ = lazy_getattr(__name__, _LAZY)

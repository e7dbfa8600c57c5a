"""The built-in tasks, one module each: :mod:`~dfcompress.tasks.distill` (``DistillTask``) and
:mod:`~dfcompress.tasks.prune` (``PruneTask``); the training they share (online schedule, time budget,
learning curve) is in :mod:`~dfcompress.tasks.training`, the evaluation in :mod:`dfcompress.evaluation`.

This package imports no torch by itself (tasks are registered as lazy ``"module:Class"`` strings); the task
classes are loaded on first access.
"""
from __future__ import annotations

import importlib
from typing import Any

_LAZY = {"DistillTask": "distill", "PruneTask": "prune"}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)

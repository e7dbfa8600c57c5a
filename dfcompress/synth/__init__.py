"""Model inversion: synthesizers that turn a frozen classifier into labelled images, and their shared parts.

Shared parts (used by the synthesizers and by the driver):

* :func:`~dfcompress.synth.labels.make_labels` -- target labels for a batch or a whole data set;
* :class:`~dfcompress.synth.bn_stats.BNStatistics` -- the DeepInversion BatchNorm-statistics regulariser;
* :mod:`~dfcompress.synth.priors` -- total variation, l2 and the random jitter/flip;
* :func:`~dfcompress.synth.pyramid.find_pyramid` -- the feature pyramid of a CNN teacher;
* :mod:`~dfcompress.synth.seeded_stats` -- class-conditional statistics files for the ``seeded`` synthesizer;
* :mod:`~dfcompress.synth.driver` -- the synthesis driver: runs a synthesizer shard by shard into a resumable
  data set on disk (:mod:`dfcompress.data.synthetic`).

The synthesizer classes live in their own modules (``noise``, ``deepinversion``, ``natural``, ``seeded``)
and are loaded lazily through the plugin registry. This package imports no torch by itself (the
``stats`` CLI command lives in :mod:`dfcompress.commands.stats`); ``make_labels`` is loaded on first access.
"""
from __future__ import annotations

from typing import Any

__all__ = ["make_labels"]


def __getattr__(name: str) -> Any:
    if name == "make_labels":
        from .labels import make_labels

        return make_labels
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""Data: the on-disk synthetic data set format and the real evaluation data sources.

* :mod:`dfcompress.data.synthetic` -- synthetic data sets on disk (shards + manifest with checksums):
  :class:`~dfcompress.data.synthetic.SyntheticWriter`, :func:`~dfcompress.data.synthetic.load`,
  :func:`~dfcompress.data.synthetic.verify`, :func:`~dfcompress.data.synthetic.export_imagefolder`;
* :mod:`dfcompress.data.real` -- real labelled images for evaluation: :class:`~dfcompress.data.real.DataSource`
  (what ``register_datasets`` plugins subclass), :class:`~dfcompress.data.real.EvalData`,
  :func:`~dfcompress.data.real.load_data`.

This package imports no torch by itself: the names below are loaded from their module on first access.
"""
from __future__ import annotations

from .._lazy import lazy_getattr

#: name -> the submodule that defines it (loaded lazily)
_LAZY = {
    "DataSource": "real",
    "EvalData": "real",
    "load_data": "real",
    "SyntheticData": "synthetic",
    "SyntheticWriter": "synthetic",
}

__all__ = sorted(_LAZY)

__getattr__ = lazy_getattr(__name__, _LAZY)

"""dfcompress: data-free model compression for PyTorch image classifiers.

This module stays free of torch so that ``dfcompress --help`` and plugin listing are fast.
Plugin authors import :data:`hookimpl` from here and the interfaces from :mod:`dfcompress.components`.
"""
from ._version import __version__
from .hookspecs import hookimpl

__all__ = ["__version__", "hookimpl"]

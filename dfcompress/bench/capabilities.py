"""What a suite's synthesizer does, read from the capabilities its class declares
(:class:`dfcompress.components.Synthesizer`), never from its option names."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .. import options as opts


def registry_or_default(registry: Any = None) -> Any:
    """``registry``, or the default plugin manager's registry when None."""
    if registry is None:
        from ..plugins import get_registry

        registry = get_registry()
    return registry


def wants_student(synth: str, options: Mapping[str, Any] | None, registry: Any = None) -> bool:
    """Whether synthesizer ``synth`` configured with ``options`` synthesizes against the student (its
    ``wants_student()``); raises DFCompressError for an unknown synthesizer or a bad option."""
    cls = registry_or_default(registry).get("synthesizers", synth)
    config = opts.build(cls.Config, dict(options or {}), owner=f"synthesizer {synth}")
    return bool(cls(config).wants_student())


"""The plugin hooks of dfcompress (pluggy). Built-ins implement them exactly like third-party plugins.

Every registration hook receives a ``register`` callable::

    @hookimpl
    def register_synthesizers(register):
        register("my_pkg.synth:MySynth", name="mine", summary="one line")

``register(target, *, name, summary="", aliases=())`` accepts a class or a lazy ``"module:attr"``
string; a string keeps the plugin's entry module free of torch so that listing stays fast.
"""
from __future__ import annotations

from pluggy import HookimplMarker, HookspecMarker

hookspec = HookspecMarker("dfcompress")
hookimpl = HookimplMarker("dfcompress")


@hookspec
def register_synthesizers(register):
    """Register :class:`dfcompress.components.Synthesizer` subclasses (model inversion methods)."""


@hookspec
def register_distillers(register):
    """Register :class:`dfcompress.components.Distiller` subclasses (student training on synthetic data)."""


@hookspec
def register_pruners(register):
    """Register :class:`dfcompress.components.Pruner` subclasses (structural pruning criteria)."""


@hookspec
def register_quantizers(register):
    """Register :class:`dfcompress.components.Quantizer` subclasses (post-training quantization backends)."""


@hookspec
def register_tasks(register):
    """Register :class:`dfcompress.components.Task` subclasses (pipelines run by ``dfcompress run --task``)."""


@hookspec
def register_models(register):
    """Register model sources (teachers and students): ``register(source, name="timm")`` makes
    ``timm:<name>`` specs resolvable.

    A source is a :class:`dfcompress.models.base.ModelSource` subclass."""


@hookspec
def register_teachers(register):
    """Deprecated alias of :func:`register_models` (its old name), kept for one release: its registrations
    still count, with a ``DeprecationWarning``."""


#: hooks kept under their old name for a release: old name -> new name
DEPRECATED_HOOKS = {"register_teachers": "register_models"}


@hookspec
def register_datasets(register):
    """Register real evaluation data sources: ``register(loader, name="cifar10")`` for ``cifar10:<arg>``.

    A loader is a :class:`dfcompress.data.real.DataSource` subclass."""


@hookspec
def register_commands(cli):
    """Add click sub-commands to the ``dfcompress`` group (the built-in ones in :mod:`dfcompress.commands` do
    it the same way)."""

"""Plugin loading: built-ins and third-party packages (entry-point group ``dfcompress``) alike.

A third-party plugin that fails to import or to register is skipped with a warning naming its package;
``DFCOMPRESS_STRICT_PLUGINS=1`` turns that into an error. ``DFCOMPRESS_LOAD_PLUGINS`` is an allow-list of
entry-point names (empty: built-ins only). This module never imports torch.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import logging
import os
import warnings
from functools import lru_cache

import pluggy

from . import hookspecs
from ._version import __version__
from .errors import DFCompressError
from .hookspecs import DEPRECATED_HOOKS
from .registry import HOOKS, KINDS, Registry

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "dfcompress"

#: Built-in plugins, registered through the same hooks as third-party ones.
DEFAULT_PLUGINS = (
    "dfcompress.default_plugins.synthesizers",
    "dfcompress.default_plugins.distillers",
    "dfcompress.default_plugins.pruners",
    "dfcompress.default_plugins.quantizers",
    "dfcompress.default_plugins.tasks",
    "dfcompress.default_plugins.models",
    "dfcompress.default_plugins.datasets",
    # the built-in commands beyond cli.py's core ones: each module adds its own through register_commands
    "dfcompress.commands.data",
    "dfcompress.commands.stats",
    "dfcompress.commands.bench",
    "dfcompress.commands.imagine",
)


def strict() -> bool:
    return os.environ.get("DFCOMPRESS_STRICT_PLUGINS", "") not in ("", "0", "false")


#: (package, message) of the broken plugins already warned about in this process: one warning each per command,
#: however often the registry is built
_WARNED: set[tuple[str, str]] = set()


def _fail(package: str, message: str, errors: list) -> None:
    if strict():
        raise DFCompressError(f"plugin {package}: {message} (DFCOMPRESS_STRICT_PLUGINS is set)")
    if (package, message) not in _WARNED:
        _WARNED.add((package, message))
        logger.warning("skipping plugin %s: %s", package, message)
    else:
        logger.debug("skipping plugin %s: %s", package, message)
    errors.append((package, message))


class PluginManager(pluggy.PluginManager):
    """pluggy's manager plus the package and version of each plugin and the load errors."""

    def __init__(self) -> None:
        super().__init__("dfcompress")
        self.add_hookspecs(hookspecs)
        self.dists: dict[str, tuple[str, str]] = {}  # plugin name -> (package, version)
        self.load_errors: list[tuple[str, str]] = []


def get_plugin_manager(load_entrypoints: bool = True) -> PluginManager:
    pm = PluginManager()
    if load_entrypoints:
        allow = os.environ.get("DFCOMPRESS_LOAD_PLUGINS")
        allowed = None if allow is None else {s.strip() for s in allow.split(",") if s.strip()}
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = getattr(ep, "dist", None)
            package = dist.name if dist else ep.value
            version = dist.version if dist else ""
            if allowed is not None and ep.name not in allowed and package not in allowed:
                continue
            if ep.name in pm.dists:
                _fail(package, f"entry point name '{ep.name}' is already used by {pm.dists[ep.name][0]}",
                      pm.load_errors)
                continue
            try:
                module = ep.load()
                pm.register(module, name=ep.name)
                unknown = sorted(h.name for h in pm.get_hookcallers(module) or [] if not h.has_spec())
                if unknown:
                    pm.unregister(module)
                    raise DFCompressError(f"unknown hook(s) {', '.join(unknown)}")
            except Exception as exc:
                _fail(package, f"failed to load: {type(exc).__name__}: {exc}", pm.load_errors)
                continue
            pm.dists[ep.name] = (package, version)
    for module_name in DEFAULT_PLUGINS:
        pm.register(importlib.import_module(module_name), name=module_name)
        pm.dists[module_name] = ("dfcompress", __version__)
    return pm


def build_registry(pm: PluginManager) -> Registry:
    """Call every plugin's registration hooks one by one, so that one broken plugin costs only itself."""
    registry = Registry(errors=list(pm.load_errors))
    broken: set[str] = set()
    hooks = [(kind, hook_name) for kind in KINDS for hook_name in HOOKS[kind]]
    for kind, hook_name in hooks:
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            plugin = impl.plugin_name
            if plugin in broken:
                continue
            package, version = pm.dists.get(plugin, (plugin, ""))
            if hook_name in DEPRECATED_HOOKS:
                warnings.warn(f"plugin {package}: the hook {hook_name} is deprecated and will be removed; rename it "
                              f"to {DEPRECATED_HOOKS[hook_name]}", DeprecationWarning, stacklevel=2)
            try:
                register = registry.registrar(kind, plugin, package, version)
                impl.function(**{arg: register for arg in impl.argnames})
            except Exception as exc:
                for entries in registry.entries.values():  # drop all the broken plugin registered
                    entries[:] = [e for e in entries if e.plugin != plugin]
                broken.add(plugin)
                _fail(package, f"{hook_name} raised {type(exc).__name__}: {exc}", registry.errors)
    return registry


@lru_cache(maxsize=1)
def get_registry() -> Registry:
    """The registry of the default plugin manager (cached for the process)."""
    return build_registry(get_plugin_manager())


def plugin_table(pm: PluginManager) -> list[dict]:
    """One row per plugin: its name, package, version and hooks (for ``dfcompress plugins``)."""
    rows = []
    for name, plugin in pm.list_name_plugin():
        package, version = pm.dists.get(name, (name, ""))
        hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
        rows.append({"name": name, "package": package, "version": version, "hooks": hooks})
    return sorted(rows, key=lambda r: r["name"])

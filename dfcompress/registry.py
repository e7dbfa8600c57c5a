"""Registries of named components, filled by the plugin hooks and keeping where each name came from."""
from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from .errors import AmbiguousComponentError, DFCompressError, UnknownComponentError

#: The kinds of registry, each filled by the hook ``register_<kind>`` except where :data:`HOOKS` says otherwise.
KINDS = ("synthesizers", "distillers", "pruners", "quantizers", "tasks", "teachers", "datasets")

#: The hooks that fill each kind, the current one first (then deprecated names that still count). The model
#: sources keep the kind "teachers" (specs, ``dfcompress models``) but are registered by ``register_models``.
HOOKS = {kind: (f"register_{kind}",) for kind in KINDS} | {"teachers": ("register_models", "register_teachers")}

_SINGULAR = {
    "synthesizers": "synthesizer",
    "distillers": "distiller",
    "pruners": "pruner",
    "quantizers": "quantizer",
    "tasks": "task",
    "teachers": "model source",
    "datasets": "data source",
}


@dataclass
class Entry:
    """One registered component: the target is a class (or callable) or a lazy ``"module:attr"`` string."""

    kind: str
    name: str
    target: Any
    summary: str = ""
    aliases: tuple[str, ...] = ()
    plugin: str = ""
    package: str = ""
    version: str = ""

    def load(self) -> Any:
        if isinstance(self.target, str):
            module_name, _, attr = self.target.partition(":")
            try:
                obj = importlib.import_module(module_name)
                for part in attr.split("."):
                    obj = getattr(obj, part)
            except Exception as exc:  # a plugin's module failed to import: say which
                raise DFCompressError(
                    f"{_SINGULAR[self.kind]} '{self.name}' from package {self.package or self.plugin} "
                    f"failed to load ({self.target}): {type(exc).__name__}: {exc}"
                ) from exc
            self.target = obj
        return self.target

    @property
    def qualified_name(self) -> str:
        return f"{self.plugin}:{self.name}"

    def as_dict(self) -> dict:
        return {
            "kind": self.kind,
            "name": self.name,
            "summary": self.summary,
            "aliases": list(self.aliases),
            "plugin": self.plugin,
            "package": self.package,
            "version": self.version,
        }


@dataclass
class Registry:
    """All components known to one plugin manager, by kind and name."""

    entries: dict[str, list[Entry]] = field(default_factory=lambda: {k: [] for k in KINDS})
    errors: list[tuple[str, str]] = field(default_factory=list)  # (package or plugin, message)

    def registrar(self, kind: str, plugin: str, package: str, version: str) -> Callable[..., None]:
        """The ``register`` callable handed to one plugin's ``register_<kind>`` hook."""

        def register(target: Any, *, name: str | None = None, summary: str = "", aliases: Iterable[str] = ()) -> None:
            if name is None:
                name = getattr(target, "name", None)
            if not name or not isinstance(name, str):
                raise DFCompressError(f"plugin {plugin} registered a {_SINGULAR[kind]} without a name")
            aliases = tuple(aliases)
            taken = {n for e in self.entries[kind] if e.plugin == plugin for n in (e.name, *e.aliases)}
            twice = sorted(taken & {name, *aliases})
            if twice:
                raise DFCompressError(f"plugin {plugin} registered {kind} name(s) {', '.join(twice)} twice")
            if not summary and not isinstance(target, str):
                summary = getattr(target, "summary", "") or ""
            self.entries[kind].append(
                Entry(kind, name, target, summary, tuple(aliases), plugin, package, version)
            )

        return register

    def list(self, kind: str) -> list[Entry]:
        return sorted(self.entries[kind], key=lambda e: (e.name, e.plugin))

    def names(self, kind: str) -> list[str]:
        return sorted({e.name for e in self.entries[kind]})

    def entry(self, kind: str, name: str) -> Entry:
        plugin, sep, bare = name.rpartition(":")
        candidates = [
            e
            for e in self.entries[kind]
            if (bare == e.name or bare in e.aliases) and (not sep or plugin in (e.plugin, e.package))
        ]
        if not candidates:
            known = self.names(kind)
            every = known + [a for e in self.entries[kind] for a in e.aliases]
            close = difflib.get_close_matches(bare, every, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise UnknownComponentError(
                f"unknown {_SINGULAR[kind]} '{name}'.{hint} Known: {', '.join(known) or '(none)'}"
            )
        if len(candidates) > 1:
            claimants = ", ".join(e.qualified_name for e in candidates)
            raise AmbiguousComponentError(
                f"{_SINGULAR[kind]} '{name}' is registered by several plugins ({claimants}); "
                f"name one as <plugin>:{bare}"
            )
        return candidates[0]

    def get(self, kind: str, name: str) -> Any:
        """The loaded class (or callable) registered as ``name``."""
        return self.entry(kind, name).load()

"""Dataclass options: one definition from which CLI flags, config files and docs are derived. Torch-free."""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Mapping

from .errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Option:
    """One field of an options dataclass, with its resolved type and help."""

    name: str
    type: Any  # the field's type with Optional removed
    optional: bool
    default: Any
    help: str
    choices: tuple[str, ...] = ()

    @property
    def type_name(self) -> str:
        origin = typing.get_origin(self.type)
        if origin is tuple:
            return "tuple"
        return getattr(self.type, "__name__", str(self.type))


def options_of(cls: type) -> list[Option]:
    """The options of a dataclass, in field order."""
    if not dataclasses.is_dataclass(cls):
        return []
    hints = typing.get_type_hints(cls)
    result = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp, optional = _strip_optional(hints[f.name])
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        result.append(
            Option(f.name, tp, optional, default, f.metadata.get("help", ""), tuple(f.metadata.get("choices", ())))
        )
    return result


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(args) != len(typing.get_args(tp)):
            return args[0], True
    return tp, False


def coerce(option: Option, value: Any, *, owner: str = "") -> Any:
    """Convert a value from a string (CLI) or from TOML to the option's type; raise ConfigError if it does not fit."""
    where = f"{owner}.{option.name}" if owner else option.name
    if value is None or (option.optional and isinstance(value, str) and value.lower() in ("none", "null", "")):
        if option.optional or option.default is None:
            return None
        raise ConfigError(f"option {where} needs a {option.type_name} value")
    tp = option.type
    try:
        if tp is bool:
            if isinstance(value, bool):
                result: Any = value
            elif isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
                result = True
            elif isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
                result = False
            else:
                raise ValueError(value)
        elif tp is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            result = int(value)
        elif tp is float:
            if isinstance(value, bool):
                raise ValueError(value)
            result = float(value)
        elif tp is str:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ValueError(value)
            result = str(value)
        elif typing.get_origin(tp) is tuple:
            items = value.split(",") if isinstance(value, str) else list(value)
            args = typing.get_args(tp)
            item_type = args[0] if args else str
            item = Option(option.name, item_type, False, None, "")
            result = tuple(coerce(item, v.strip() if isinstance(v, str) else v, owner=owner) for v in items if v != "")
        else:
            result = value
    except (TypeError, ValueError):
        raise ConfigError(f"option {where} expects a {option.type_name}, got {value!r}") from None
    if option.choices and result not in option.choices:
        raise ConfigError(f"option {where} must be one of {', '.join(option.choices)}, got {result!r}")
    return result


def build(cls: type, values: Mapping[str, Any] | None = None, *, owner: str = "") -> Any:
    """An instance of the options dataclass ``cls`` from defaults updated with ``values`` (strings or typed)."""
    values = dict(values or {})
    opts = {o.name: o for o in options_of(cls)}
    unknown = [k for k in values if k.replace("-", "_") not in opts]
    if unknown:
        valid = ", ".join(opts) or "(none)"
        raise ConfigError(f"unknown option {', '.join(repr(k) for k in unknown)} for {owner or cls.__name__}; valid: {valid}")
    kwargs = {k.replace("-", "_"): coerce(opts[k.replace("-", "_")], v, owner=owner) for k, v in values.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{owner or cls.__name__}: {exc}") from None


def parse_assignments(items: tuple[str, ...] | list[str], *, flag: str) -> dict[str, str]:
    """``("iterations=200", "lr=0.1")`` to a dict; a malformed item is a ConfigError naming the flag."""
    result = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{flag} expects key=value, got {item!r}")
        result[key.strip().replace("-", "_")] = value.strip()
    return result


def as_dict(obj: Any) -> dict:
    """A dataclass instance as a plain dict of TOML-friendly values."""
    return {o.name: _plain(getattr(obj, o.name)) for o in options_of(type(obj))}


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def markdown_table(cls: type) -> str:
    """A Markdown table of the options of ``cls`` (for docs and ``dfcompress show``)."""
    rows = ["| option | type | default | help |", "| --- | --- | --- | --- |"]
    for o in options_of(cls):
        default = "none" if o.default is None else o.default
        rows.append(f"| `{o.name}` | {o.type_name} | `{default}` | {o.help} |")
    return "\n".join(rows)


def to_toml(data: Mapping[str, Any]) -> str:
    """Serialise a mapping of scalars, lists and one level of tables (and sub-tables) to TOML."""
    lines: list[str] = []
    tables: list[tuple[str, Mapping]] = []
    for key, value in data.items():
        if isinstance(value, Mapping):
            tables.append((key, value))
        elif value is not None:
            lines.append(f"{_key(key)} = {_toml_value(value)}")
    for name, table in tables:
        _table(lines, name, table)
    return "\n".join(lines) + "\n"


def _table(lines: list[str], name: str, table: Mapping) -> None:
    lines.append("")
    lines.append(f"[{name}]")
    subtables = []
    for key, value in table.items():
        if isinstance(value, Mapping):
            subtables.append((f"{name}.{_key(key)}", value))
        elif value is not None:
            lines.append(f"{_key(key)} = {_toml_value(value)}")
    for sub_name, sub in subtables:
        _table(lines, sub_name, sub)


def _key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else _toml_value(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{text}"'

"""Saving a pruned model so that it reloads with ``torch.load(weights_only=True)`` and without torch-pruning.

A pruned model's layers have other shapes than its architecture's constructor builds, so a bare
``state_dict`` does not load. The file stores the state dict plus every module's public scalar attributes
(``out_channels``, ``in_features``, ``num_features``, ``groups``, ``normalized_shape``, ...), which pruning
edits, the state dict's per-module metadata (``_version``, which some modules' loaders require, e.g.
torchvision's MNASNet) and the names of child modules that pruning removed (set to None, e.g. GoogLeNet's
auxiliary heads). :func:`load_pruned` takes a freshly built, unpruned model of the same architecture, gives each
parameter and buffer the stored shape, restores the attributes, and loads the weights with ``strict=True``.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..components import InputSpec
from ..errors import WeightsError
from ..io import atomic_write

FORMAT = "dfcompress-pruned"
VERSION = 1
_SCALARS = (bool, int, float, str, type(None))


def _plain(value: Any) -> bool:
    """A value that ``torch.load(weights_only=True)`` accepts and that describes a layer's shape."""
    if type(value) in _SCALARS:  # exact types: a str enum (timm's Format) would need unpickling its class
        return True
    return type(value) in (tuple, list, torch.Size) and all(type(v) in _SCALARS for v in value)


def module_attributes(model: nn.Module) -> dict[str, dict[str, Any]]:
    """``{module name: {attribute: value}}`` for the public scalar attributes of every module."""
    return {
        name: {k: v for k, v in vars(module).items() if not k.startswith("_") and k != "training" and _plain(v)}
        for name, module in model.named_modules()
    }


def removed_children(model: nn.Module) -> list[str]:
    """Dotted names of child slots that hold None (a submodule the model was built with and pruning removed)."""
    return [f"{name}.{key}" if name else key for name, module in model.named_modules()
            for key, child in module._modules.items() if child is None]


def state_metadata(state: dict) -> dict[str, dict[str, Any]]:
    """A state dict's ``_metadata`` ({module prefix: {"version": n}}) as plain dicts."""
    return {k: {a: v for a, v in dict(meta).items() if _plain(v)} for k, meta in getattr(state, "_metadata", {}).items()}


def save_pruned(model: nn.Module, path: str | os.PathLike, *, arch: str = "",
                input_spec: InputSpec | None = None) -> Path:
    """Write ``model`` (pruned or not) atomically to ``path``.

    ``arch`` (e.g. ``"timm:resnet18"``) and ``input_spec`` are stored for whoever rebuilds the architecture."""
    state = model.state_dict()
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "arch": arch,
        "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
        "input_spec": input_spec.as_dict() if input_spec is not None else None,
        "attributes": module_attributes(model),
        "removed": removed_children(model),
        "metadata": state_metadata(state),
        "state_dict": {k: v.detach().cpu().clone() for k, v in state.items()},
    }
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def read_pruned(path: str | os.PathLike) -> dict[str, Any]:
    """The stored payload (weights_only load), checked for the format."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"{path}: not a readable pruned-model file ({type(exc).__name__}: {exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise WeightsError(f"{path}: not a dfcompress pruned-model file (save it with dfcompress.prune.save_pruned)")
    if payload.get("version") != VERSION:
        raise WeightsError(f"{path}: pruned-model file version {payload.get('version')}, this dfcompress reads {VERSION}")
    return payload


def load_pruned(path: str | os.PathLike, model: nn.Module) -> nn.Module:
    """Reshape ``model`` (a fresh instance of the saved architecture) to the stored pruned shapes, load its
    weights, and return it (on the CPU, in the mode ``model`` was in)."""
    payload = read_pruned(path)
    for dotted in payload.get("removed", []):
        owner, _, key = dotted.rpartition(".")
        parent = model.get_submodule(owner) if owner else model
        if key in parent._modules:
            parent._modules[key] = None
    modules = dict(model.named_modules())
    missing = sorted(set(payload["attributes"]) - set(modules))
    if missing:
        raise WeightsError(f"{path}: the model has no modules {missing[:5]}; build the architecture it was saved from "
                           f"({payload.get('arch') or payload.get('model_class')})")
    for name, attrs in payload["attributes"].items():
        for key, value in attrs.items():
            setattr(modules[name], key, value)
    state = payload["state_dict"]
    model.cpu()
    for key, tensor in state.items():
        owner, _, leaf = key.rpartition(".")
        module = modules.get(owner)
        if module is not None and module._parameters.get(leaf) is not None:
            old = module._parameters[leaf]
            module._parameters[leaf] = nn.Parameter(torch.empty_like(tensor, dtype=old.dtype),
                                                    requires_grad=old.requires_grad)
        elif module is not None and module._buffers.get(leaf) is not None:
            module._buffers[leaf] = torch.empty_like(tensor)
    # the per-module versions some loaders check (files written before they were stored: the fresh model's own)
    metadata = payload.get("metadata") or state_metadata(model.state_dict())
    state = OrderedDict(state)
    state._metadata = OrderedDict((k, dict(v)) for k, v in metadata.items())  # type: ignore[attr-defined]
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise WeightsError(f"{path}: weights do not fit {type(model).__name__}: {exc}") from exc
    return model

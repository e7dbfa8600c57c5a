"""Saving a pruned model so that it reloads with ``torch.load(weights_only=True)`` and without torch-pruning.

A pruned model's layers have other shapes than its architecture's constructor builds, so a bare
``state_dict`` does not load. The file stores the state dict plus every module's public scalar attributes
(``out_channels``, ``in_features``, ``num_features``, ``groups``, ``normalized_shape``, ...), which pruning
edits. :func:`load_pruned` takes a freshly built, unpruned model of the same architecture, gives each
parameter and buffer the stored shape, restores the attributes, and loads the weights with ``strict=True``.
"""
from __future__ import annotations

import os
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
    if isinstance(value, _SCALARS):
        return True
    return isinstance(value, (tuple, list)) and all(isinstance(v, _SCALARS) for v in value)


def module_attributes(model: nn.Module) -> dict[str, dict[str, Any]]:
    """``{module name: {attribute: value}}`` for the public scalar attributes of every module."""
    return {
        name: {k: v for k, v in vars(module).items() if not k.startswith("_") and k != "training" and _plain(v)}
        for name, module in model.named_modules()
    }


def save_pruned(model: nn.Module, path: str | os.PathLike, *, arch: str = "",
                input_spec: InputSpec | None = None) -> Path:
    """Write ``model`` (pruned or not) atomically to ``path``.

    ``arch`` (e.g. ``"timm:resnet18"``) and ``input_spec`` are stored for whoever rebuilds the architecture."""
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "arch": arch,
        "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
        "input_spec": input_spec.as_dict() if input_spec is not None else None,
        "attributes": module_attributes(model),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
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
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"{path}: weights do not fit {type(model).__name__}: {exc}") from exc
    return model

"""Reading weights files (PyTorch pickles and safetensors) and fitting them to a model with clear errors.

PyTorch files are loaded with ``weights_only=True``; a file that needs full unpickling (it can run code) is
refused unless the caller trusts it (``--trust-weights``).
"""
from __future__ import annotations

import logging
import os
import pickle
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from .errors import WeightsError

logger = logging.getLogger(__name__)

TORCH_SUFFIXES = (".pt", ".pth", ".th", ".bin", ".ckpt", ".tar")
SAFETENSORS_SUFFIXES = (".safetensors",)
#: keys under which training scripts nest the state dict
NESTING_KEYS = ("state_dict", "model_state_dict", "model", "net", "module")
#: how many offending keys an error message names
SHOWN_KEYS = 3


def _truncated(path: Path, exc: BaseException) -> WeightsError:
    return WeightsError(
        f"weights file {path} is truncated or not a weights file ({type(exc).__name__}: "
        f"{str(exc).splitlines()[0][:120] if str(exc) else 'no detail'}); download or save it again"
    )


#: file signatures of what people give as weights by mistake
NOT_WEIGHTS = {b"\x89PNG": "a PNG image", b"\xff\xd8\xff": "a JPEG image", b"GIF8": "a GIF image",
               b"\x1f\x8b": "a gzip archive", b"%PDF": "a PDF document", b"{": "a JSON or text file",
               b"<": "an HTML or XML file"}
#: what the weights-only unpickler says about a well-formed pickle that needs globals (a full pickle)
FULL_PICKLE_MARKERS = ("Unsupported global", "Unsupported operand", "was not an allowed global")


def _not_weights(path: Path) -> WeightsError | None:
    """An error for a file that cannot be a PyTorch weights file (neither a zip archive nor a pickle), else None."""
    with open(path, "rb") as handle:
        head = handle.read(8)
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":  # torch.save's zip format, or a pickle (protocol 2+)
        return None
    kind = next((what for magic, what in NOT_WEIGHTS.items() if head.startswith(magic)), None)
    what = f"is {kind}, not a weights file" if kind else "is not a weights file (neither a torch.save archive nor a pickle)"
    return WeightsError(f"weights file {path} {what}: give a state dict saved with torch.save (.pt/.pth/.th) "
                        f"or a .safetensors file")


def _load_torch(path: Path, trust: bool) -> Any:
    bad = _not_weights(path)
    if bad is not None:
        raise bad
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not any(marker in str(exc) for marker in FULL_PICKLE_MARKERS):
            raise _truncated(path, exc) from exc
        if not trust:
            raise WeightsError(
                f"weights file {path} is a full pickle that can run code when loaded; "
                f"pass --trust-weights (trust_weights=True) only if you trust its source"
            ) from exc
    except Exception as exc:  # torch raises RuntimeError, EOFError, KeyError ... for damaged files
        raise _truncated(path, exc) from exc
    logger.warning("loading %s with full unpickling (--trust-weights): it can run arbitrary code", path)
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise _truncated(path, exc) from exc


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise _truncated(path, exc) from exc


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def _extract_state_dict(obj: Any, path: Path) -> Mapping[str, torch.Tensor]:
    """The state dict inside a checkpoint: the object itself, a module's, or one nested under a known key."""
    if isinstance(obj, nn.Module):
        return obj.state_dict()
    if _is_tensor_dict(obj):
        return obj
    if isinstance(obj, Mapping):
        for key in NESTING_KEYS:
            if key in obj:
                inner = obj[key]
                if isinstance(inner, nn.Module):
                    return inner.state_dict()
                if _is_tensor_dict(inner):
                    return inner
        tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
        if tensors:
            return tensors
        keys = ", ".join(map(str, list(obj)[:6]))
        raise WeightsError(
            f"weights file {path} holds no state dict (top-level keys: {keys}); save model.state_dict() "
            f"or nest it under 'state_dict'"
        )
    raise WeightsError(f"weights file {path} holds a {type(obj).__name__}, not a state dict; save model.state_dict()")


def _strip_prefix(sd: Mapping[str, torch.Tensor], prefix: str = "module.") -> dict[str, torch.Tensor]:
    """Remove DataParallel/DDP's ``module.`` prefix (only when every key has it), keeping the version metadata
    that modules such as BatchNorm use to upgrade old state dicts."""
    metadata = getattr(sd, "_metadata", None)
    if sd and all(k.startswith(prefix) for k in sd):
        sd = {k[len(prefix):]: v for k, v in sd.items()}
        if metadata is not None:
            bare = prefix.rstrip(".")
            metadata = {
                ("" if k == bare else k[len(prefix):] if k.startswith(prefix) else k): v for k, v in metadata.items()
            }
    out: dict[str, torch.Tensor] = OrderedDict(sd)  # a plain dict cannot carry _metadata
    if metadata is not None:
        out._metadata = metadata  # type: ignore[attr-defined]
    return out


def read_state_dict(path: str | os.PathLike, *, trust: bool = False) -> dict[str, torch.Tensor]:
    """The state dict in ``path`` (``.pt/.pth/.th/.bin/.ckpt`` PyTorch files or ``.safetensors``), on the CPU.

    Nested ``{"state_dict": ...}`` / ``{"model": ...}`` checkpoints are unwrapped and a ``module.`` prefix is
    stripped. Raises WeightsError when the file is missing, damaged, or a full pickle without ``trust``."""
    path = Path(path).expanduser()
    if not path.exists():
        raise WeightsError(f"weights file {path} does not exist; check the --weights path")
    if path.is_dir():
        raise WeightsError(f"weights path {path} is a directory; give the weights file itself")
    if path.stat().st_size == 0:
        raise WeightsError(f"weights file {path} is empty (0 bytes): it is truncated or not a weights file")
    if path.name.lower().endswith(SAFETENSORS_SUFFIXES):
        obj: Any = _load_safetensors(path)
    else:
        obj = _load_torch(path, trust)
    return _strip_prefix(_extract_state_dict(obj, path))


def _shape(t: torch.Tensor) -> str:
    return "(" + ", ".join(str(d) for d in t.shape) + ")"


def _listing(keys: list[str]) -> str:
    more = f" and {len(keys) - SHOWN_KEYS} more" if len(keys) > SHOWN_KEYS else ""
    return ", ".join(keys[:SHOWN_KEYS]) + more


def _defaulted(key: str, sd: Mapping[str, torch.Tensor]) -> bool:
    """BatchNorm fills in ``num_batches_tracked`` when an old state dict lacks it (torch < 0.4.1 files)."""
    prefix, _, leaf = key.rpartition(".")
    return leaf == "num_batches_tracked" and f"{prefix}.running_mean" in sd


def state_dict_mismatch(model: nn.Module, sd: Mapping[str, torch.Tensor]) -> tuple[list[str], list[str], list[str]]:
    """(missing keys, unexpected keys, shape mismatches as ``key is (a, b) in the file, (c, d) in the model``)."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd and not _defaulted(k, sd)]
    unexpected = [k for k in sd if k not in own]
    shapes = [
        f"{k} is {_shape(sd[k])} in the file, {_shape(own[k])} in the model"
        for k in own
        if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)
    ]
    return missing, unexpected, shapes


def apply_state_dict(
    model: nn.Module, sd: Mapping[str, torch.Tensor], *, spec: str, path: str | os.PathLike = "<state dict>"
) -> nn.Module:
    """Load ``sd`` into ``model`` strictly; on any mismatch raise one WeightsError naming the first offenders."""
    missing, unexpected, shapes = state_dict_mismatch(model, sd)
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {_listing(missing)}")
        if unexpected:
            parts.append(f"unexpected {_listing(unexpected)}")
        if shapes:
            hint = " (another class count? set it with --num-classes N)" if len(shapes) <= 2 else ""
            parts.append(f"shape of {_listing(shapes)}{hint}")
        raise WeightsError(f"weights file {path} does not fit {spec}: " + "; ".join(parts))
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:200]
        raise WeightsError(f"weights file {path} does not fit {spec}: {detail}") from exc
    return model

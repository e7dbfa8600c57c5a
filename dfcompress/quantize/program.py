"""A quantized program as an ordinary classifier module, and the ``.pt2`` file it is saved in.

An exported program's module refuses ``.eval()`` and ``.train()`` ("not supported"), which every evaluation
helper calls; :class:`QuantizedClassifier` holds it, accepts both (there is nothing to switch: BatchNorm was
folded and dropout removed at export), and runs it through the backend's lowering (``runner``). A compiled
program is specialised to the batch sizes it has seen, so the wrapper feeds it only two: 1, and ``chunk``
(larger batches are split, a shorter last chunk is padded with zeros and its padding dropped).

The file is a ``torch.export`` archive with a ``dfcompress.json`` entry (format, quantizer, backend, arch,
input spec, torch and torchao versions). :func:`load_quantized` rebuilds the classifier; like any
``torch.export`` archive it unpickles, so load only files you made or trust.
"""
from __future__ import annotations

import importlib.metadata as md
import io
import json
import os
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..errors import WeightsError
from ..io import atomic_write_bytes

FORMAT = "dfcompress-quantized"
VERSION = 1
META = "dfcompress.json"
#: node metadata that only tracebacks read (where each node came from), left out of the saved program
DEBUG_METADATA = ("stack_trace", "from_node")


class QuantizedClassifier(nn.Module):
    """A quantized program that takes normalised images on any device and returns float32 logits there (it runs
    on the CPU). ``runner`` turns the program into what is called (``torch.compile``, or the program itself)."""

    def __init__(self, program: nn.Module, runner: Callable[[nn.Module], Callable] | None = None, *,
                 chunk: int = 64) -> None:
        super().__init__()
        self.program = program
        self.chunk = int(chunk)
        self._runner = runner
        self._fn: Callable | None = None

    def train(self, mode: bool = True) -> "QuantizedClassifier":
        self.training = mode  # the program has no train mode; do not recurse into it (it would raise)
        return self

    @property
    def fn(self) -> Callable:
        if self._fn is None:
            self._fn = self._runner(self.program) if self._runner is not None else self.program
        return self._fn

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        device = x.device
        x = x.detach().to("cpu", torch.float32).contiguous()
        n = x.shape[0]
        if n == 1:
            return self.fn(x).float().to(device)
        outputs = []
        for start in range(0, n, self.chunk):
            part = x[start:start + self.chunk]
            short = self.chunk - part.shape[0]
            if short:
                part = torch.cat([part, part.new_zeros((short, *part.shape[1:]))])
            out = self.fn(part)
            outputs.append(out[:out.shape[0] - short] if short else out)
        return torch.cat(outputs).float().to(device)


def versions() -> dict[str, str | None]:
    found = {}
    for package in ("torch", "torchao"):
        try:
            found[package] = md.version(package)
        except md.PackageNotFoundError:
            found[package] = None
    return found


def save_program(program: torch.export.ExportedProgram, path: str | os.PathLike, meta: dict[str, Any]) -> Path:
    """Write ``program`` atomically as a ``torch.export`` archive with the ``dfcompress.json`` entry."""
    payload = json.dumps({"format": FORMAT, "version": VERSION, **versions(), **meta}, default=str)
    for node in program.graph_module.graph.nodes:  # debugging metadata: half of the archive's graph for small nets
        for key in DEBUG_METADATA:
            node.meta.pop(key, None)
    buffer = io.BytesIO()  # torch.export.save wants a name ending in .pt2 or a buffer, not atomic_write's temp name
    torch.export.save(program, buffer, extra_files={META: payload})
    return atomic_write_bytes(path, buffer.getvalue())


def read_meta(path: str | os.PathLike) -> tuple[torch.export.ExportedProgram, dict[str, Any]]:
    """The program and its ``dfcompress.json``, checked for the format and the torch version it was made with."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such quantized-program file")
    extra = {META: ""}
    try:
        program = torch.export.load(path, extra_files=extra)
        meta = json.loads(extra[META] or "{}")
    except Exception as exc:
        raise WeightsError(f"{path}: not a readable torch.export archive ({type(exc).__name__}: {exc})") from None
    if meta.get("format") != FORMAT:
        raise WeightsError(f"{path}: not a dfcompress quantized program (no {META} entry)")
    now = versions()["torch"]
    if meta.get("torch") != now:
        raise WeightsError(f"{path} was made with torch {meta.get('torch')}, this is torch {now}: torch.export "
                           "archives are not portable across versions; quantize again")
    return program, meta


def load_quantized(path: str | os.PathLike, *, registry: Any = None) -> QuantizedClassifier:
    """The saved quantized classifier, ready to call (lowered by the quantizer that made it, on first call)::

        from dfcompress.quantize import load_quantized
        model = load_quantized("runs/my-run/final-int8.pt2")   # then model(normalised_images) -> logits
    """
    from ..plugins import get_registry

    path = Path(path)
    name = _peek_quantizer(path)
    cls = (registry or get_registry()).get("quantizers", name)
    quantizer = cls()
    quantizer.check_environment()  # imports the backend (its ops and lowering passes) before deserialising
    program, meta = read_meta(path)
    return QuantizedClassifier(program.module(), quantizer.compile, chunk=int(meta.get("chunk", 64)))


def _peek_quantizer(path: Path) -> str:
    """The quantizer name in a ``.pt2`` archive's ``dfcompress.json``, read from the zip without loading."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            entry = next((n for n in archive.namelist() if n.endswith(f"extra/{META}") or n.endswith(META)), None)
            meta = json.loads(archive.read(entry)) if entry else {}
    except (OSError, zipfile.BadZipFile, ValueError) as exc:
        raise WeightsError(f"{path}: not a dfcompress quantized program ({type(exc).__name__}: {exc})") from None
    if meta.get("format") != FORMAT or not meta.get("quantizer"):
        raise WeightsError(f"{path}: not a dfcompress quantized program (no {META} entry)")
    return str(meta["quantizer"])

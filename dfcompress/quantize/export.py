"""``torch.export`` of a classifier with a dynamic batch dimension, and one clear line when it fails.

Export (non-strict, the default) runs the model's real ``forward`` on fake tensors, so a failure surfaces at
the Python line that cannot be traced (data-dependent control flow, a fixed batch size, an op without a fake
kernel). :func:`export_classifier` turns any failure into an :class:`~dfcompress.errors.UnsupportedModelError`
that names the innermost module whose ``forward`` was running, found by walking the traceback's frames for a
``self`` that is one of the model's submodules; the full traceback goes to the log at DEBUG.
"""
from __future__ import annotations

import contextlib
import io
import logging
import traceback
from types import TracebackType
from typing import Iterator

import torch
from torch import nn

from ..errors import UnsupportedModelError

logger = logging.getLogger(__name__)

#: exception class name -> what it means for a user, and the fix
HINTS = {
    "GuardOnDataDependentSymNode": "data-dependent control flow (a Python branch on a tensor's values); rewrite "
                                   "it with torch.cond or without the branch",
    "DataDependentOutputException": "an operator whose output depends on tensor values (e.g. .item(), .tolist())",
    "DynamicOutputShapeException": "an operator whose output shape depends on tensor values (nonzero, unique, "
                                   "masked_select)",
    "UnsupportedOperatorException": "an operator without a fake-tensor kernel (a custom op: register one)",
    "UnsupportedFakeTensorException": "a tensor leaving torch inside forward (e.g. .numpy())",
    "UserError": "the model fixes its batch size or uses an unsupported construct",
    "ConstraintViolationError": "the model fixes its batch size (e.g. view(64, -1)); use x.shape[0] or flatten",
}


def _frames(exc: BaseException) -> Iterator[TracebackType]:
    """The traceback entries of ``exc`` and the exceptions it was raised from, outermost first."""
    seen: set[int] = set()
    chain: list[BaseException] = []
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    for item in reversed(chain):  # the original error first: its frames are the model's
        tb = item.__traceback__
        while tb is not None:
            yield tb
            tb = tb.tb_next


def failing_module(model: nn.Module, exc: BaseException) -> tuple[str, str] | None:
    """(qualified name, class name) of the innermost submodule of ``model`` whose code was running when ``exc``
    was raised ("" for the model itself), or None when no frame of the model's modules is in the traceback."""
    names = {id(m): name for name, m in model.named_modules()}
    found = None
    for tb in _frames(exc):
        owner = tb.tb_frame.f_locals.get("self")
        if owner is not None and id(owner) in names:
            found = owner
    if found is None:
        return None
    return names[id(found)], type(found).__name__


def _kind(exc: BaseException) -> tuple[str, str]:
    """(exception class name, hint) of the most specific known exception in the chain of ``exc``."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        name = type(exc).__name__
        if name in HINTS and name != "UserError":
            return name, HINTS[name]
        exc = exc.__cause__ or exc.__context__
    return "", ""


def describe_failure(model: nn.Module, exc: BaseException, *, label: str = "") -> str:
    """One line: which model, which module, what kind of problem, the first line of the error."""
    where = failing_module(model, exc)
    module = f" in module '{where[0]}' ({where[1]})" if where and where[0] else (
        f" in {where[1]}.forward" if where else "")
    kind, hint = _kind(exc)
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    cause = hint or HINTS.get(type(exc).__name__, "")
    what = f"{cause} ({kind or type(exc).__name__}: {first})" if cause else f"{type(exc).__name__}: {first}"
    return (f"{label or type(model).__name__} cannot be quantized: torch.export failed{module}: {what}; "
            "or leave this model in float32")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Export's own error log (an exportdb hint at ERROR) and stderr prints, kept out of the user's terminal."""
    noisy = logging.getLogger("torch.export._trace")
    level = noisy.level
    noisy.setLevel(logging.CRITICAL)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        noisy.setLevel(level)


def batch_dim(max_batch: int) -> tuple[dict[int, object], ...]:
    """The ``dynamic_shapes`` of a one-input classifier whose batch size may vary in [1, max_batch]."""
    return ({0: torch.export.Dim("batch", min=1, max=max_batch)},)


def export_classifier(model: nn.Module, example: torch.Tensor, *, max_batch: int = 1024,
                      label: str = "") -> torch.export.ExportedProgram:
    """``torch.export`` of ``model`` (which must be in eval mode) on ``example`` (a batch of at least 2) with a
    dynamic batch dimension; an UnsupportedModelError naming the failing module when it cannot be exported."""
    try:
        with _quiet():
            return torch.export.export(model, (example,), dynamic_shapes=batch_dim(max_batch))
    except Exception as exc:  # any failure of export means the model cannot go this way: say where and why
        logger.debug("torch.export failed:\n%s", "".join(traceback.format_exception(exc)))
        raise UnsupportedModelError(describe_failure(model, exc, label=label)) from None

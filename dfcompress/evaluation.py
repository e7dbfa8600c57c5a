"""Evaluation of a run's models and synthetic images: the functions the tasks call, and the measures of
:mod:`dfcompress.metrics` they are built from (re-exported here)."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .metrics import (
    accuracy,
    agreement,
    count_macs,
    count_params,
    disk_size,
    feature_frechet_distance,
    find_classifier,
    frechet_distance,
    latency,
    synthetic_quality,
)

if TYPE_CHECKING:
    from .run import Run

logger = logging.getLogger(__name__)

__all__ = [
    "accuracy", "agreement", "assess_synthetic", "count_macs", "count_params", "disk_size", "evaluate_model",
    "eval_predictions_of", "feature_frechet_distance", "find_classifier", "frechet_distance", "latency", "save_student",
    "synthetic_quality",
]


def evaluate_model(run: Run, name: str, model: nn.Module, *, compare_to_teacher: bool = False,
                   cost: dict[str, Any] | None = None, device: torch.device | str | None = None) -> dict[str, Any]:
    """Size, MACs and CPU latency (measured, or given as ``cost``, e.g. for a quantized program whose modules
    the counters cannot see); on real data (if any) top-1 (top-5 above 10 classes) and, with
    ``compare_to_teacher``, top-1 agreement with the teacher. Each model sees the data once (on ``device``,
    by default the run's); its top-1 predictions are kept for the run (:func:`eval_predictions_of`). In a run of
    several processes rank 0 evaluates and the others return an empty result."""
    from .metrics.classification import topk_accuracy

    if not run.is_main:
        return {}
    spec = run.teacher.input
    model.eval()
    result: dict[str, Any] = dict(cost) if cost is not None else {
        "params": count_params(model),
        "macs": count_macs(model, spec),
        "latency_b1_ms": round(1000 * latency(model, spec, batch_size=1), 3),
        "latency_b64_ms": round(1000 * latency(model, spec, batch_size=64), 3),
    }
    data = run.eval_data
    if data is not None:
        logits = _eval_logits(run, model, device=device)
        run.cache[f"predictions:{name}"] = logits.argmax(1)
        result.update(topk_accuracy(logits, data.labels, (1, 5) if logits.shape[1] > 10 else (1,)))
        if compare_to_teacher:
            teacher = run.cache.get("teacher_logits")
            if teacher is None:
                teacher = run.cache["teacher_logits"] = _eval_logits(run, run.teacher.model)
            result["agreement"] = round(logits.argmax(1).eq(teacher.argmax(1)).float().mean().item(), 4)
        elif model is run.teacher.model:
            run.cache["teacher_logits"] = logits
    run.metrics.setdefault("models", {})[name] = result
    logger.info("%s: %s", name, result)
    return result


def eval_predictions_of(run: Run, name: str) -> torch.Tensor | None:
    """The real-data top-1 predictions of the model :func:`evaluate_model` evaluated as ``name``, or None."""
    return run.cache.get(f"predictions:{name}")


def _eval_logits(run: Run, model: nn.Module, device: torch.device | str | None = None) -> torch.Tensor:
    from .metrics.features import logits_and_features

    logits, _ = logits_and_features(model, run.eval_data.images, run.teacher.input, device=device or run.ctx.device,
                                    features=False)
    return logits


def assess_synthetic(run: Run, data: Any) -> None:
    """Quality of the synthetic set, without real data and, when there is some, against it (rank 0's work)."""
    if not run.is_main:
        return
    with run.stage("assess synthetic"):
        quality = synthetic_quality(run.teacher, data.images, data.labels, device=run.ctx.device)
        real = run.eval_data
        if real is not None and len(data) >= 2:  # a Frechet distance needs two images per set
            quality["feature_fd"] = feature_frechet_distance(
                run.teacher, data.images, real.images, device=run.ctx.device
            )
    quality["num_images"] = len(data)
    run.metrics["synthetic"] = quality
    _save_grid(run, data)


def _save_grid(run: Run, data: Any, per_class: int = 8) -> None:
    from torchvision.utils import save_image

    picks = []
    for c in range(run.teacher.input.num_classes):
        idx = (data.labels == c).nonzero().flatten()[:per_class]
        picks.append(idx)
    idx = torch.cat(picks)
    if idx.numel() == 0:
        return
    path = run.out_dir / "images" / "synthetic-grid.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(data.images[idx].float() / 255, str(path), nrow=per_class, padding=1)
    run.artifacts["grid"] = str(path.relative_to(run.out_dir))


def _record_size(run: Run, name: str, path: Any) -> None:
    """The saved model's file size, and the teacher's weights file for comparison."""
    models = run.metrics.setdefault("models", {})
    models.setdefault(name, {})["size_mb"] = round(disk_size(path) / 1e6, 4)
    from .models.base import RANDOM_WEIGHTS

    if run.config.weights and run.config.weights != RANDOM_WEIGHTS and "teacher" in models:
        models["teacher"]["size_mb"] = round(disk_size(run.config.weights) / 1e6, 4)


def save_student(run: Run, model: nn.Module, spec: str) -> str:
    """Save a trained model as a state dict with its spec: it reloads as ``--teacher SPEC --weights FILE``."""
    from .io import atomic_write

    path = run.out_dir / "student.pt"
    state = {"spec": spec, "input": run.teacher.input.as_dict(),
             "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    atomic_write(path, lambda tmp: torch.save(state, tmp))
    return path.name

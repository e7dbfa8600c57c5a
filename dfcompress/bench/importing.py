"""``dfcompress data import``: real labelled images written in the synthetic-data format, so that a reference
row ("real images through the same recipe") runs as ``dfcompress run --synthetic DIR``."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from ..data import synthetic as synthdata
from ..errors import DataError

logger = logging.getLogger(__name__)

SHARD_SIZE = 256


def _loaders() -> tuple[Any, Any]:
    from ..data.real import load_data
    from ..models import load_teacher

    return load_data, load_teacher


@torch.no_grad()
def _teacher_scores(teacher: Any, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's softmax probability of each image's label, and whether its top-1 is the label."""
    device = next(iter(teacher.model.parameters()), torch.empty(0)).device
    confidence, correct = [], []
    for start in range(0, len(labels), batch_size):
        x = teacher.input.normalize(images[start:start + batch_size].float().div(255)).to(device)
        probs = teacher.model(x).float().softmax(1).cpu()
        y = labels[start:start + batch_size]
        confidence.append(probs.gather(1, y.view(-1, 1)).flatten())
        correct.append(probs.argmax(1) == y)
    return torch.cat(confidence), torch.cat(correct)


def import_real(spec: str, out: str | Path, *, per_class: int, seed: int = 0, teacher: str = "demo",
                weights: str | None = None, trust_weights: bool = False) -> dict:
    """Draw ``per_class`` images of each class of ``spec`` (with ``seed``) at ``teacher``'s input size and write
    them to ``out`` as a synthetic-format data set; re-running the same command finishes an interrupted one.

    Returns a summary: images, classes, the teacher's accuracy and mean confidence on them, the directory."""
    if per_class < 1:
        raise DataError(f"--per-class must be at least 1, got {per_class}")
    load_data, load_teacher = _loaders()
    started = time.perf_counter()
    model = load_teacher(teacher, weights=weights, trust_weights=trust_weights)
    data = load_data(spec, model.input, teacher=teacher)
    subset = data.subset_per_class(per_class, seed)
    if len(subset) == 0:
        raise DataError(f"{spec} holds no images")
    counts = torch.bincount(subset.labels, minlength=len(subset.classes)).tolist()
    short = [subset.classes[i] for i, n in enumerate(counts) if n < per_class]
    if short:
        logger.warning("%s has fewer than %d images in class(es) %s; taking all of them", spec, per_class,
                       ", ".join(short[:10]))
    generator = torch.Generator().manual_seed(int(seed))
    order = torch.randperm(len(subset), generator=generator)  # mix the classes across shards
    images, labels = subset.images[order].contiguous(), subset.labels[order].long().contiguous()
    request = {
        "source": "import", "data": spec, "data_name": getattr(data, "name", spec), "per_class": per_class,
        "teacher": teacher, "weights": str(weights) if weights is not None else None,
        "classes": list(subset.classes), "image_shape": list(images.shape[1:]),
    }
    writer = synthdata.SyntheticWriter(out, request, num_images=len(labels), batch_size=SHARD_SIZE, seed=int(seed))
    correct_all, conf_all = [], []
    for plan in writer.plan():
        lo = plan.index * SHARD_SIZE
        x, y = images[lo:lo + plan.count], labels[lo:lo + plan.count]
        confidence, correct = _teacher_scores(model, x, y)
        conf_all.append(confidence)
        correct_all.append(correct)
        if plan in writer.pending():
            writer.add(plan, x, y, confidence=confidence,
                       metrics={"teacher_acc": float(correct.float().mean()), "iterations": 0.0, "seconds": 0.0})
    confidence, correct = torch.cat(conf_all), torch.cat(correct_all)
    summary = {
        "images": int(len(labels)), "classes": len(subset.classes), "per_class": counts,
        "teacher_acc": round(float(correct.float().mean()), 4),
        "teacher_confidence": round(float(confidence.mean()), 4), "directory": str(out),
        "seconds": round(time.perf_counter() - started, 1),
    }
    logger.info("imported %d images of %s into %s: teacher accuracy %.3f", summary["images"], spec, out,
                summary["teacher_acc"])
    return summary

"""The built-in tasks: distill a student, or prune the teacher and fine-tune it, on synthetic images."""
from __future__ import annotations

import copy
import logging
import math
from typing import Any, ClassVar

import torch
from torch import nn

from .components import Task
from .errors import ConfigError
from .pipeline import Run

logger = logging.getLogger(__name__)


def _train_copy(model: nn.Module) -> nn.Module:
    """A trainable copy of a frozen model."""
    model = copy.deepcopy(model)
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def evaluate_model(run: Run, name: str, model: nn.Module, *, compare_to_teacher: bool = False) -> dict[str, Any]:
    """Size, MACs and CPU latency always; on real data (if any) top-1 (top-5 above 10 classes) and, with
    ``compare_to_teacher``, top-1 agreement with the teacher. Each model sees the data once; the teacher's
    predictions are computed once per run."""
    from . import evaluate as ev
    from .metrics.classification import topk_accuracy

    spec = run.teacher.input
    model.eval()
    result: dict[str, Any] = {
        "params": ev.count_params(model),
        "macs": ev.count_macs(model, spec),
        "latency_b1_ms": round(1000 * ev.latency(model, spec, batch_size=1), 3),
        "latency_b64_ms": round(1000 * ev.latency(model, spec, batch_size=64), 3),
    }
    data = run.eval_data
    if data is not None:
        logits = _eval_logits(run, model)
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


def _eval_logits(run: Run, model: nn.Module) -> torch.Tensor:
    from .metrics.features import logits_and_features

    logits, _ = logits_and_features(model, run.eval_data.images, run.teacher.input, device=run.ctx.device,
                                    features=False)
    return logits


def assess_synthetic(run: Run, data: Any) -> None:
    """Quality of the synthetic set, without real data and, when there is some, against it."""
    from . import evaluate as ev

    with run.stage("assess synthetic"):
        quality = ev.synthetic_quality(run.teacher, data.images, data.labels, device=run.ctx.device)
        real = run.eval_data
        if real is not None:
            quality["feature_fd"] = ev.feature_frechet_distance(
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
    from .evaluate import disk_size

    models = run.metrics.setdefault("models", {})
    models.setdefault(name, {})["size_mb"] = round(disk_size(path) / 1e6, 4)
    if run.config.weights and "teacher" in models:
        models["teacher"]["size_mb"] = round(disk_size(run.config.weights) / 1e6, 4)


def save_student(run: Run, model: nn.Module, spec: str) -> str:
    """Save a trained model as a state dict with its spec: it reloads as ``--teacher SPEC --weights FILE``."""
    from .io import atomic_write

    path = run.out_dir / "student.pt"
    state = {"spec": spec, "input": run.teacher.input.as_dict(),
             "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    atomic_write(path, lambda tmp: torch.save(state, tmp))
    return path.name


def _evaluator(run: Run) -> Any:
    """top-1 of a model on the run's real data, for the learning curve (None without real data)."""
    if run.eval_data is None:
        return None
    from .metrics.classification import topk_accuracy

    def top1(model: nn.Module) -> float:
        model.eval()
        return topk_accuracy(_eval_logits(run, model), run.eval_data.labels, (1,))["top1"]

    return top1


def scheduled_training(run: Run, mode: str, synth: Any, student: nn.Module, distiller: Any, name: str) -> Any:
    """Train ``student`` under the online schedule or a time budget (:mod:`dfcompress.schedule`); return the pool."""
    from . import synthdata
    from .schedule import Schedule, plot_curve
    from .synthesis import open_writer

    config = run.config
    writer = data = None
    if synth is None:
        data = run.synthetic_data()
    else:
        writer = open_writer(run.out_dir / "synthetic", run.teacher, synth, num_images=config.num_images,
                             batch_size=config.batch_size, seed=config.seed, labels=config.labels,
                             extra={"schedule": mode})
    schedule = Schedule(run, mode=mode, student=student, distiller=distiller, name=name, synth=synth, writer=writer,
                        data=data, evaluate=_evaluator(run) if config.eval_every else None)
    result = schedule.execute()
    run.metrics[name] = result
    run.timings["synthesize"] = result["synthesis_s"]
    run.timings[name] = result["training_s"]
    curve = plot_curve({f"{config.synth} {mode}": result["curve"]}, run.out_dir / "images" / "learning-curve.png",
                       title=f"{name}: top-1 against wall time")
    if curve is not None:
        run.artifacts["curve"] = str(curve.relative_to(run.out_dir))
    if writer is None:
        return data
    run.artifacts["synthetic"] = str(writer.directory)
    return synthdata.load(writer.directory)


class DistillTask(Task):
    name = "distill"
    summary = "synthesize, distill a student from the teacher, evaluate"
    distill_defaults: ClassVar[dict] = {}

    def run(self, run: Run) -> dict[str, Any]:
        from .schedule import choose_schedule

        teacher = run.teacher
        student_spec = run.config.student or run.config.teacher
        student = run.build_model(student_spec)
        run.metrics["student"] = student_spec
        distiller = run.distiller(self.distill_defaults)
        synth = None if run.config.synthetic else run.synthesizer()
        mode = choose_schedule(run.config, synth, distiller)
        if mode == "online" or run.config.budget_seconds is not None:
            data = scheduled_training(run, mode, synth, student, distiller, "distill")
            assess_synthetic(run, data)
        else:
            data = run.synthetic_data(synth)
            assess_synthetic(run, data)
            checkpoint = run.out_dir / "checkpoints" / "distill.pt"
            with run.stage("distill"):
                run.metrics["distill"] = distiller.fit(student, teacher, data.images, data.labels, checkpoint=checkpoint)
        with run.stage("evaluate"):
            evaluate_model(run, "teacher", teacher.model)
            evaluate_model(run, "student", student, compare_to_teacher=True)
        run.artifacts["model"] = save_student(run, student, student_spec)
        _record_size(run, "student", run.out_dir / run.artifacts["model"])
        return run.metrics


class PruneTask(Task):
    name = "prune"
    summary = "synthesize, prune the teacher, fine-tune it by distillation, evaluate"
    #: NaturalInversion's pruning study fine-tunes 20 epochs with SGD at lr 0.001
    distill_defaults: ClassVar[dict] = {"epochs": 20, "lr": 0.001}

    def run(self, run: Run) -> dict[str, Any]:
        from .schedule import choose_schedule

        teacher = run.teacher
        pruner = run.pruner()
        distiller = run.distiller(self.distill_defaults)
        synth = None if run.config.synthetic else run.synthesizer()
        mode = choose_schedule(run.config, synth, distiller)
        scheduled = mode == "online" or run.config.budget_seconds is not None
        if scheduled and pruner.needs_data:
            raise ConfigError(f"pruner {pruner.name} needs images before pruning, which an online or time-bounded run "
                              "makes only while fine-tuning; use --schedule offline without --time-budget, or a "
                              "data-free criterion (e.g. --pruner l1)")
        data = None if scheduled else run.synthetic_data(synth)
        if data is not None:
            assess_synthetic(run, data)
        model = _train_copy(teacher.model)
        batches = None
        if pruner.needs_data:
            batches = list(_batches(run, data, batch_size=min(64, len(data)), limit=4))
        with run.stage("prune"):
            result = pruner.prune(model, teacher.input, ratio=run.config.ratio, ratio_of=run.config.ratio_of,
                                  batches=batches)
        pruned = result.model
        run.metrics["prune"] = {"pruner": pruner.name, "ratio": run.config.ratio, "ratio_of": run.config.ratio_of,
                                **result.as_dict()}
        with run.stage("evaluate"):
            evaluate_model(run, "teacher", teacher.model)
            evaluate_model(run, "pruned", copy.deepcopy(pruned), compare_to_teacher=True)
        pruned.train()
        if scheduled:
            data = scheduled_training(run, mode, synth, pruned, distiller, "distill")
            assess_synthetic(run, data)
        else:
            with run.stage("fine-tune"):
                run.metrics["distill"] = distiller.fit(pruned, teacher, data.images, data.labels,
                                                       checkpoint=run.out_dir / "checkpoints" / "finetune.pt")
        with run.stage("evaluate"):
            evaluate_model(run, "final", pruned, compare_to_teacher=True)
        from .prune import save_pruned

        path = run.out_dir / "pruned.pt"
        save_pruned(pruned, path, arch=run.config.teacher, input_spec=teacher.input)
        run.artifacts["model"] = path.name
        _record_size(run, "final", path)
        return run.metrics


def _batches(run: Run, data: Any, *, batch_size: int, limit: int):
    """Normalised (images, labels) batches of the synthetic set for data-driven pruning criteria."""
    generator = torch.Generator().manual_seed(run.config.seed)
    order = torch.randperm(len(data), generator=generator)
    for i in range(min(limit, math.ceil(len(data) / batch_size))):
        idx = order[i * batch_size:(i + 1) * batch_size]
        images = run.teacher.input.normalize(data.images[idx].float().div(255)).to(run.ctx.device)
        yield images, data.labels[idx].to(run.ctx.device)

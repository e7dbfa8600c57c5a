"""Hinton knowledge distillation on (synthetic) images, resumable from a per-epoch checkpoint.

loss = (1 - hard_weight) * KL(softmax(t / T) || softmax(s / T)) * T^2  +  hard_weight * CE(s, labels)

with the KL averaged over the batch (``batchmean``) and the teacher's logits ``t`` computed on the same
augmented batch as the student's ``s``. SGD with momentum and weight decay, cosine learning rate stepped
once per epoch.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..components import Distiller, Teacher
from ..context import check_finite
from ..errors import ConfigError, DataError, Interrupted
from ..metrics.features import model_device
from .augment import random_crop_flip
from .checkpoint import TrainingCheckpoint

logger = logging.getLogger(__name__)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(softmax(t / T) || softmax(s / T)) * T^2, averaged over the batch (Hinton et al. 2015), in float32.

    The T^2 factor keeps the gradient scale independent of T."""
    t = float(temperature)
    log_student = F.log_softmax(student_logits.float() / t, dim=1)
    log_teacher = F.log_softmax(teacher_logits.float() / t, dim=1)
    return F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True) * (t * t)


CROP_FILLS = ("black", "mean")  # colours of the random crop's padding


@dataclass(frozen=True)
class KDOptions:
    temperature: float = field(default=4.0, metadata={"help": "softmax temperature T of the KD term"})
    hard_weight: float = field(default=0.0, metadata={
        "help": "weight of cross-entropy on the target labels; loss = (1 - w) * KD + w * CE"})
    epochs: int = field(default=60, metadata={"help": "passes over the image set"})
    batch_size: int = field(default=128, metadata={"help": "images per SGD step"})
    lr: float = field(default=0.05, metadata={"help": "initial SGD learning rate (cosine decay to 0 per epoch)"})
    momentum: float = field(default=0.9, metadata={"help": "SGD momentum"})
    weight_decay: float = field(default=5e-4, metadata={"help": "SGD weight decay"})
    augment: bool = field(default=True, metadata={
        "help": "random crop (padding of colour crop_fill, in pixel space) and horizontal flip of every batch"})
    crop_padding: int = field(default=4, metadata={"help": "pixels of padding for the random crop"})
    crop_fill: str = field(default="black", metadata={
        "help": "colour of the crop padding: black (zero pixels, as the CIFAR teachers were trained) or mean "
                "(the normalisation mean: zero padding after normalisation)", "choices": CROP_FILLS})


@dataclass
class _Epoch:
    """Sums over the steps of one epoch, kept on the device (no host sync per step)."""

    loss: torch.Tensor
    kd: torch.Tensor
    ce: torch.Tensor
    images: int = 0
    steps: int = 0

    @classmethod
    def zeros(cls, device: torch.device) -> _Epoch:
        return cls(*(torch.zeros((), device=device, dtype=torch.float64) for _ in range(3)))

    def means(self) -> dict[str, float]:
        steps = max(1, self.steps)
        return {"loss": float(self.loss) / steps, "kd_loss": float(self.kd) / steps, "ce_loss": float(self.ce) / steps}


class KnowledgeDistillation(Distiller):
    name = "kd"
    summary = "Hinton knowledge distillation (KL at temperature T, optional hard-label term)"
    paper = "arXiv:1503.02531"
    Config = KDOptions

    def _check(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        cfg = self.config
        if images.dtype != torch.uint8 or images.dim() != 4 or len(images) < 2:
            raise DataError(f"kd needs at least 2 uint8 N x C x H x W images, got {images.dtype} {tuple(images.shape)}")
        if len(labels) != len(images):
            raise DataError(f"kd: {len(images)} images but {len(labels)} labels")
        problems = [
            (cfg.temperature > 0, "temperature must be > 0"),
            (0.0 <= cfg.hard_weight <= 1.0, "hard_weight must be in [0, 1]"),
            (cfg.epochs >= 1, "epochs must be >= 1"),
            (cfg.batch_size >= 2, "batch_size must be >= 2"),
            (cfg.lr > 0, "lr must be > 0"),
            (cfg.crop_padding >= 0, "crop_padding must be >= 0"),
            (cfg.crop_fill in CROP_FILLS, f"crop_fill must be one of {', '.join(CROP_FILLS)}"),
        ]
        for ok, message in problems:
            if not ok:
                raise ConfigError(f"distiller kd: {message}")

    def _epoch_generator(self, epoch: int) -> torch.Generator:
        """The generator of one epoch (shuffling and augmentation), derived from the run seed and the epoch."""
        return self.ctx.generator((self.ctx.seed * 1_000_003 + 7919 * (epoch + 1)) % (2**63))

    def fit(self, student: nn.Module, teacher: Teacher, images: torch.Tensor, labels: torch.Tensor, *,
            checkpoint: Any = None) -> dict[str, float]:
        """Train ``student`` in place on uint8 ``images``; see the module docstring for the loss.

        With ``checkpoint`` (a path) the full training state is saved atomically after every epoch and on
        interruption, and a run finds and resumes it: an interrupted and resumed run ends with the same
        weights as an uninterrupted one on the same machine. A checkpoint written with other options, images
        or seed is refused (ConfigError)."""
        self._check(images, labels)
        cfg, ctx = self.config, self.ctx
        device = ctx.device
        student.to(device)
        was_training = student.training
        trainable = [p for p in student.parameters() if p.requires_grad]
        if not trainable:
            raise ConfigError("kd: the student has no trainable parameters (requires_grad is False everywhere)")
        optimizer = torch.optim.SGD(trainable, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
        scaler = ctx.grad_scaler()
        n = len(images)
        num_steps = n // cfg.batch_size + (1 if n % cfg.batch_size >= 2 else 0)  # a last batch of 1 is dropped
        fingerprint = {"options": dataclasses.asdict(cfg), "num_images": n, "seed": ctx.seed,
                       "student_params": sum(p.numel() for p in student.parameters())}
        store = TrainingCheckpoint(Path(checkpoint), fingerprint) if checkpoint is not None else None
        state = store.restore(student, optimizer, scheduler, scaler) if store is not None else None
        epoch, step = (state.epoch, state.step) if state else (0, 0)
        history: list[float] = list(state.history) if state else []
        teacher_device = model_device(teacher.model)
        spec = teacher.input
        labels_dev = labels.to(device).long()
        start, seen, global_step = time.perf_counter(), 0, epoch * num_steps + step
        sums = state.sums_on(device) if state and step else _Epoch.zeros(device)
        if state and epoch < cfg.epochs:
            logger.info("kd: resuming from %s at epoch %d step %d", checkpoint, epoch + 1, step)

        student.train()
        try:
            while epoch < cfg.epochs:
                if step == 0:
                    generator = self._epoch_generator(epoch)
                    perm = torch.randperm(n, generator=generator, device=generator.device).cpu()
                else:  # resumed inside an epoch
                    generator = self._epoch_generator(epoch)
                    generator.set_state(state.generator_state)
                    perm = state.perm
                bar = ctx.progress(range(step, num_steps), total=num_steps, desc=f"kd epoch {epoch + 1}/{cfg.epochs}")
                for step in bar:
                    if ctx.stop_requested:
                        self._interrupt(store, student, optimizer, scheduler, scaler, epoch, step, num_steps,
                                        generator, perm, sums, history)
                    idx = perm[step * cfg.batch_size:(step + 1) * cfg.batch_size]
                    pixels = images[idx].to(device, non_blocking=True).float().div_(255)
                    if cfg.augment:
                        pixels = random_crop_flip(pixels, padding=cfg.crop_padding, flip=True, generator=generator,
                                                  fill=spec.mean if cfg.crop_fill == "mean" else None)
                    x = spec.normalize(pixels)
                    target = labels_dev[idx.to(device)]
                    with torch.no_grad(), ctx.autocast():
                        teacher_logits = teacher.model(x.to(teacher_device)).to(device)
                    with ctx.autocast():
                        student_logits = student(x)
                    kd = kd_loss(student_logits, teacher_logits, cfg.temperature)
                    ce = F.cross_entropy(student_logits.float(), target)
                    loss = (1.0 - cfg.hard_weight) * kd + cfg.hard_weight * ce
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                    sums.loss += loss.detach()
                    sums.kd += kd.detach()
                    sums.ce += ce.detach()
                    sums.images += len(idx)
                    sums.steps += 1
                    seen += len(idx)
                    global_step += 1
                    if global_step % ctx.log_every == 0:
                        check_finite({"kd": kd, "ce": ce}, step=global_step, where="distiller kd",
                                     hint="lower the learning rate (--distill-opt lr=...) or use --precision 32-true")
                        logger.info("kd step %d: loss %.4f (kd %.4f, ce %.4f), lr %.4g", global_step, loss.item(),
                                    kd.item(), ce.item(), optimizer.param_groups[0]["lr"])
                means = sums.means()
                check_finite({"loss": torch.tensor(means["loss"])}, step=global_step, where="distiller kd",
                             hint="lower the learning rate (--distill-opt lr=...) or use --precision 32-true")
                history.append(means["loss"])
                scheduler.step()
                epoch, step = epoch + 1, 0
                sums = _Epoch.zeros(device)
                logger.info("kd epoch %d/%d: loss %.4f (kd %.4f, ce %.4f)", epoch, cfg.epochs, means["loss"],
                            means["kd_loss"], means["ce_loss"])
                if store is not None:
                    store.save(student, optimizer, scheduler, scaler, epoch=epoch, step=0, generator=None,
                               perm=None, sums=None, history=history)
        finally:
            student.train(was_training)
        seconds = time.perf_counter() - start
        return {
            "loss": history[-1] if history else math.nan,
            "first_epoch_loss": history[0] if history else math.nan,
            "epochs": cfg.epochs,
            "seconds": round(seconds, 3),
            "images_per_s": round(seen / seconds, 1) if seen and seconds > 0 else 0.0,
            "lr_final": optimizer.param_groups[0]["lr"],
        }

    def _interrupt(self, store: TrainingCheckpoint | None, student: nn.Module, optimizer: torch.optim.Optimizer,
                   scheduler: Any, scaler: Any, epoch: int, step: int, num_steps: int, generator: torch.Generator,
                   perm: torch.Tensor, sums: _Epoch, history: list[float]) -> None:
        where = f"distillation interrupted at epoch {epoch + 1} of {self.config.epochs} (step {step} of {num_steps})"
        if store is None:
            raise Interrupted(where, resume_hint="no checkpoint path was given, so training restarts from scratch")
        store.save(student, optimizer, scheduler, scaler, epoch=epoch, step=step, generator=generator, perm=perm,
                   sums=sums, history=history)
        raise Interrupted(where, resume_hint=f"run the same command again to resume from {os.fspath(store.path)}")

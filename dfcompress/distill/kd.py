"""Hinton knowledge distillation on (synthetic) images, resumable from a per-epoch checkpoint.

loss = (1 - hard_weight) * KL(softmax(t / T) || softmax(s / T)) * T^2  +  hard_weight * CE(s, labels)
       + feature_weight * hint          (hint: feature hints, ``hints.py``; off by default)

with the KL averaged over the batch (``batchmean``) and the teacher's logits ``t`` computed on the same
augmented batch as the student's ``s``. SGD with momentum and weight decay, cosine learning rate stepped
once per epoch.
"""
from __future__ import annotations

import contextlib
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
from .hints import FeatureHints
from .sums import StepSums

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
    feature_weight: float = field(default=0.0, metadata={
        "help": "weight of the feature-hint term added to the loss: the student's intermediate outputs against "
                "the teacher's, relative squared error (0 = off; for pruned models, whose blocks keep the "
                "teacher's names and output shapes)"})
    feature_layers: str = field(default="auto", metadata={
        "help": "modules whose outputs the hint term matches, comma-separated names from named_modules(), or "
                "auto: every block both models have under one name with outputs of equal shape"})


class KnowledgeDistillation(Distiller):
    name = "kd"
    summary = "Hinton knowledge distillation (KL at temperature T, optional hard-label term)"
    paper = "arXiv:1503.02531"
    Config = KDOptions
    can_train_online = True

    def _check(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4 or len(images) < 2:
            raise DataError(f"kd needs at least 2 uint8 N x C x H x W images, got {images.dtype} {tuple(images.shape)}")
        if len(labels) != len(images):
            raise DataError(f"kd: {len(images)} images but {len(labels)} labels")
        self.check_options()

    def check_options(self) -> None:
        cfg = self.config
        problems = [
            (cfg.temperature > 0, "temperature must be > 0"),
            (0.0 <= cfg.hard_weight <= 1.0, "hard_weight must be in [0, 1]"),
            (cfg.epochs >= 1, "epochs must be >= 1"),
            (cfg.batch_size >= 2, "batch_size must be >= 2"),
            (cfg.lr > 0, "lr must be > 0"),
            (cfg.crop_padding >= 0, "crop_padding must be >= 0"),
            (cfg.crop_fill in CROP_FILLS, f"crop_fill must be one of {', '.join(CROP_FILLS)}"),
            (cfg.feature_weight >= 0, "feature_weight must be >= 0"),
        ]
        for ok, message in problems:
            if not ok:
                raise ConfigError(f"distiller kd: {message}")

    def _epoch_generator(self, epoch: int) -> torch.Generator:
        """The generator of one epoch (shuffling and augmentation), derived from the run seed and the epoch."""
        return self.ctx.generator((self.ctx.seed * 1_000_003 + 7919 * (epoch + 1)) % (2**63))

    def train_step(self, student: nn.Module, teacher: Teacher, optimizer: torch.optim.Optimizer, scaler: Any,
                   images: torch.Tensor, labels: torch.Tensor, idx: torch.Tensor, generator: torch.Generator
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One SGD step on ``images[idx]`` (uint8, any device; ``labels`` on the run's device): augment,
        teacher and student forward, KD (+ CE) loss, backward, step. Returns the detached (loss, kd, ce)."""
        cfg, ctx, spec = self.config, self.ctx, teacher.input
        device = ctx.device
        pixels = images[idx].to(device, non_blocking=True).float().div_(255)
        if cfg.augment:
            pixels = random_crop_flip(pixels, padding=cfg.crop_padding, flip=True, generator=generator,
                                      fill=spec.mean if cfg.crop_fill == "mean" else None)
        world = ctx.world
        x = world.part(spec.normalize(pixels))  # augmented as one global batch, then this rank's slice of it
        target = world.part(labels[idx.to(device)])
        hints = self._feature_hints(teacher.model, student) if cfg.feature_weight > 0 else None
        with hints.capture() if hints is not None else contextlib.nullcontext():
            with torch.no_grad(), ctx.autocast():
                teacher_logits = teacher.model(x.to(model_device(teacher.model))).to(device)
            with ctx.autocast():
                student_logits = student(x)
            kd = kd_loss(student_logits, teacher_logits, cfg.temperature)
            ce = F.cross_entropy(student_logits.float(), target)
            loss = (1.0 - cfg.hard_weight) * kd + cfg.hard_weight * ce
            if hints is not None:
                loss = loss + cfg.feature_weight * hints.loss()
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return loss.detach(), kd.detach(), ce.detach()

    def _feature_hints(self, teacher_model: nn.Module, student: nn.Module) -> FeatureHints:
        """The hooks of the hint term for this teacher and student, made on first use and kept."""
        key = (id(teacher_model), id(student))
        cached = getattr(self, "_hints", None)
        if cached is None or cached[0] != key:
            if cached is not None:
                cached[1].remove()
            self._hints = (key, FeatureHints(teacher_model, student, self.config.feature_layers))
        return self._hints[1]

    def make_optimizer(self, student: nn.Module) -> torch.optim.Optimizer:
        trainable = [p for p in student.parameters() if p.requires_grad]
        if not trainable:
            raise ConfigError("kd: the student has no trainable parameters (requires_grad is False everywhere)")
        cfg = self.config
        return torch.optim.SGD(trainable, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)

    def online_trainer(self, student: nn.Module, teacher: Teacher) -> OnlineKD:
        return OnlineKD(self, student, teacher)

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
        optimizer = self.make_optimizer(student)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
        scaler = ctx.grad_scaler()
        n = len(images)
        world = ctx.world
        # a last batch that would give a rank fewer than 2 images (1 in a single process) is dropped
        num_steps = n // cfg.batch_size + (1 if n % cfg.batch_size >= 2 * world.size else 0)
        fingerprint = {"options": dataclasses.asdict(cfg), "num_images": n, "seed": ctx.seed,
                       "student_params": sum(p.numel() for p in student.parameters())}
        store = TrainingCheckpoint(Path(checkpoint), fingerprint) if checkpoint is not None else None
        state = store.restore(student, optimizer, scheduler, scaler) if store is not None else None
        if not world.is_main:
            store = None  # rank 0 writes the checkpoint; every rank resumes from it
        model = data_parallel(student, ctx)
        epoch, step = (state.epoch, state.step) if state else (0, 0)
        history: list[float] = list(state.history) if state else []
        labels_dev = labels.to(device).long()
        start, seen, global_step = time.perf_counter(), 0, epoch * num_steps + step
        sums = state.sums_on(device) if state and step else StepSums.zeros(device)
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
                    if world.any(ctx.stop_requested, "a stop request"):  # every rank stops at the same step
                        self._interrupt(store, student, optimizer, scheduler, scaler, epoch, step, num_steps,
                                        generator, perm, sums, history)
                    idx = perm[step * cfg.batch_size:(step + 1) * cfg.batch_size]
                    loss, kd, ce = self.train_step(model, teacher, optimizer, scaler, images, labels_dev, idx,
                                                   generator)
                    sums.add(loss, kd, ce, len(idx))
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
                sums = StepSums.zeros(device)
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
                   perm: torch.Tensor, sums: StepSums, history: list[float]) -> None:
        where = f"distillation interrupted at epoch {epoch + 1} of {self.config.epochs} (step {step} of {num_steps})"
        if store is None:
            if not self.ctx.world.is_main:
                raise Interrupted(where)
            raise Interrupted(where, resume_hint="no checkpoint path was given, so training restarts from scratch")
        store.save(student, optimizer, scheduler, scaler, epoch=epoch, step=step, generator=generator, perm=perm,
                   sums=sums, history=history)
        raise Interrupted(where, resume_hint=f"run the same command again to resume from {os.fspath(store.path)}")


def data_parallel(student: nn.Module, ctx: Any) -> nn.Module:
    """``student`` wrapped in DistributedDataParallel in a world of several processes (rank 0's weights broadcast
    to all at the start, gradients averaged every step), else itself. BatchNorm statistics stay per process (its
    slice of each batch), as in plain DDP: SyncBatchNorm works only on GPUs."""
    if not ctx.world.distributed:
        return student
    from torch.nn.parallel import DistributedDataParallel

    device = ctx.device
    return DistributedDataParallel(student, device_ids=[device] if device.type == "cuda" else None)


class OnlineKD:
    """KD steps over a pool that grows between calls (the online schedule and time budgets).

    The SGD state lasts across calls; each step's learning rate is ``lr * (1 + cos(pi * p)) / 2`` with ``p``
    the run's progress in [0, 1] given by the caller (steps done over steps planned, or time spent over the
    budget), so that a time-bounded run still ends its cosine schedule at the budget. Each step draws its batch
    uniformly without replacement from the whole pool."""

    def __init__(self, distiller: KnowledgeDistillation, student: nn.Module, teacher: Teacher) -> None:
        cfg = distiller.config
        distiller.check_options()
        self.distiller, self.student, self.teacher = distiller, student, teacher
        self.optimizer = distiller.make_optimizer(student)
        self.scaler = distiller.ctx.grad_scaler()
        self.steps = 0
        self.images_seen = 0
        self.batch_size = cfg.batch_size

    def batch_size_for(self, pool_size: int) -> int:
        return min(self.batch_size, pool_size)

    def train(self, images: torch.Tensor, labels: torch.Tensor, steps: int, *, generator: torch.Generator,
              progress: Any) -> dict[str, float]:
        """Up to ``steps`` SGD steps on uint8 ``images``; stops early when ``progress()`` reaches 1.
        Raises Interrupted (the caller's round is then redone on resume) when a stop was requested."""
        distiller, ctx = self.distiller, self.distiller.ctx
        cfg, device = distiller.config, ctx.device
        n = len(images)
        if n < 2:
            raise DataError(f"kd needs at least 2 images to train on, the pool has {n}")
        batch = self.batch_size_for(n)
        labels_dev = labels.to(device).long()
        sums = StepSums.zeros(device)
        self.student.train()
        for _ in range(steps):
            if ctx.stop_requested:
                raise Interrupted(f"online training interrupted after {self.steps} steps")
            p = min(1.0, max(0.0, float(progress())))
            if p >= 1.0:
                break
            lr = cfg.lr * 0.5 * (1.0 + math.cos(math.pi * p))
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            idx = torch.randperm(n, generator=generator, device=generator.device)[:batch].cpu()
            loss, kd, ce = distiller.train_step(self.student, self.teacher, self.optimizer, self.scaler, images,
                                                labels_dev, idx, generator)
            sums.add(loss, kd, ce, batch)
            self.steps += 1
            self.images_seen += batch
            if self.steps % ctx.log_every == 0:
                check_finite({"kd": kd, "ce": ce}, step=self.steps, where="distiller kd (online)",
                             hint="lower the learning rate (--distill-opt lr=...) or use --precision 32-true")
        result = sums.means() if sums.steps else {}
        result.update(steps=sums.steps, lr=self.optimizer.param_groups[0]["lr"])
        return result

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(), "steps": self.steps,
                "images_seen": self.images_seen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.steps, self.images_seen = int(state["steps"]), int(state["images_seen"])

"""Training schedules shared by every task and synthesizer: online rounds, and the time budget.

*Offline* (the default of the pixel-optimising synthesizers) synthesizes the whole data set, then trains on
it. *Online* (the default of ``fast``, and of any synthesizer configured to use the student) alternates
rounds::

    synthesize round_batches batches (against the current student) -> add them to the pool
    -> round_steps training steps, each on a batch drawn from the whole pool

The first ``warmup_rounds`` rounds only synthesize, and the synthesizer gets no student then. With a time
budget (``--time-budget``) the rounds go on until the budget is spent (training-only rounds once the pool has
``num_images`` images); an offline run with a budget spends ``synthesis_share`` of it synthesizing and the rest
training. Training's cosine learning rate follows the run's progress: steps done over steps planned for a
run bounded by rounds, seconds spent over the training window for a time-bounded run.

Every round ends with a checkpoint (student, optimizer, synthesizer state, clock, learning curve), written
atomically after the round's shards; a run killed at any point resumes from the last finished round (shards of
an unfinished round are dropped and made again, identically). A run bounded by rounds ends bit-identical to an
uninterrupted one; a time-bounded one continues with the time it had left. Time spent evaluating the learning
curve is not counted against the budget.
"""
from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .components import SCHEDULES, Synthesizer
from .errors import ConfigError, WeightsError
from .io import atomic_write

logger = logging.getLogger(__name__)

FORMAT = "dfcompress-online-checkpoint"
VERSION = 1


def choose_schedule(config: Any, synth: Synthesizer | None, distiller: Any) -> str:
    """The schedule of a run: ``--schedule``, else the synthesizer's own; checked before any work."""
    mode = config.schedule or (synth.schedule() if synth is not None else "offline")
    if mode not in SCHEDULES:
        raise ConfigError(f"--schedule {mode!r} is not one of {', '.join(SCHEDULES)}")
    if mode == "online" and synth is None:
        raise ConfigError("--schedule online synthesizes while training, so it cannot train on --synthetic data; "
                          "drop --synthetic or use --schedule offline")
    if (mode == "online" or config.budget_seconds is not None) and not distiller.can_train_online:
        raise ConfigError(f"distiller {distiller.name} cannot train step by step, which --schedule online and "
                          "--time-budget need; use --distiller kd")
    if mode == "online" and synth is not None and config.budget_seconds is None:
        rounds = math.ceil(math.ceil(config.num_images / config.batch_size) / config.round_batches)
        if config.warmup_rounds >= rounds:
            raise ConfigError(f"--warmup-rounds {config.warmup_rounds} leaves no training round: {config.num_images} "
                              f"images in batches of {config.batch_size} make {rounds} round(s); lower it, raise "
                              "--num-images, or bound the run with --time-budget")
    if mode == "offline" and synth is not None and synth.wants_student():
        logger.warning("%s uses the student, which the offline schedule does not give it: its student term is off "
                       "(use --schedule online to keep it)", synth.name)
    return mode


def round_seed(run_seed: int, round_index: int) -> int:
    digest = hashlib.sha256(f"dfcompress-round:{run_seed}:{round_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class Clock:
    """Wall seconds spent by the run, across resumes, with pauses (evaluation) left out."""

    def __init__(self, spent: float = 0.0) -> None:
        self.spent = float(spent)
        self._since = time.perf_counter()

    def elapsed(self) -> float:
        return self.spent + time.perf_counter() - self._since

    def pause(self) -> "_Paused":
        return _Paused(self)


class _Paused:
    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def __enter__(self) -> None:
        self.clock.spent = self.clock.elapsed()

    def __exit__(self, *exc: object) -> None:
        self.clock._since = time.perf_counter()


class Pool:
    """The images the student trains on: uint8 in memory, grown shard by shard (never re-decoded)."""

    def __init__(self, capacity: int, shape: tuple[int, ...]) -> None:
        self.images = torch.empty((capacity, *shape), dtype=torch.uint8)
        self.labels = torch.empty(capacity, dtype=torch.long)
        self.size = 0

    def add(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        n = len(labels)
        if self.size + n > len(self.labels):  # a fixed data set larger than planned: grow once
            grow = self.size + n - len(self.labels)
            self.images = torch.cat([self.images, self.images.new_empty((grow, *self.images.shape[1:]))])
            self.labels = torch.cat([self.labels, self.labels.new_empty(grow)])
        self.images[self.size:self.size + n] = images
        self.labels[self.size:self.size + n] = labels
        self.size += n

    def view(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[:self.size], self.labels[:self.size]

    def __len__(self) -> int:
        return self.size


@dataclass
class Progress:
    """What a schedule has done so far; saved in every round's checkpoint."""

    round: int = 0
    shards: int = 0
    spent: float = 0.0
    train_start: float | None = None
    synthesis_seconds: float = 0.0
    training_seconds: float = 0.0
    work: dict[str, int] = field(default_factory=lambda: dict.fromkeys(WORK_KEYS, 0))
    curve: list[dict[str, float]] = field(default_factory=list)
    last: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


#: machine-independent work counts, in images through a model (forward + backward unless named forward)
WORK_KEYS = ("synthesis_teacher", "synthesis_student", "synthesis_generator", "train_teacher_forward",
             "train_student")


class Schedule:
    """Runs the rounds of one training stage (distillation, or a pruned model's fine-tuning).

    ``writer`` and ``synth`` make the pool (None for a fixed data set given as ``data``); ``student`` trains
    in place through ``distiller.online_trainer``; ``evaluate(model) -> top-1`` draws the learning curve."""

    def __init__(self, run: Any, *, mode: str, student: nn.Module, distiller: Any, name: str,
                 synth: Synthesizer | None = None, writer: Any = None, data: Any = None,
                 evaluate: Callable[[nn.Module], float] | None = None) -> None:
        self.run, self.mode, self.student, self.distiller = run, mode, student, distiller
        self.synth, self.writer, self.data, self.evaluate = synth, writer, data, evaluate
        self.config = run.config
        self.checkpoint = run.out_dir / "checkpoints" / f"{name}-rounds.pt"
        self.budget = run.config.budget_seconds
        self.fingerprint = {"mode": mode, "name": name, "config": run.config.to_dict(),
                            "student_params": sum(p.numel() for p in student.parameters())}

    # -- the plan ------------------------------------------------------------------------------------
    @property
    def planned_rounds(self) -> int:
        """Rounds of a run bounded by rounds: enough to synthesize every shard (online), or 1 + training rounds."""
        if self.writer is None:
            return 1
        return math.ceil(len(self.writer.plan()) / self.config.round_batches)

    def _total_steps(self) -> int:
        return max(1, (self.planned_rounds - self.config.warmup_rounds) * self.config.round_steps)

    # -- running -------------------------------------------------------------------------------------
    def execute(self) -> dict[str, Any]:
        cfg, run = self.config, self.run
        spec = run.teacher.input
        capacity = cfg.num_images if self.data is None else len(self.data)
        pool = Pool(capacity, (spec.channels, *spec.image_size))
        trainer = self.distiller.online_trainer(self.student, run.teacher)
        progress = self._restore(trainer)
        if self.data is not None:
            pool.add(self.data.images, self.data.labels)
        else:
            for shard in self.writer.manifest["shards"]:
                self._add_shard(pool, shard)
        clock = Clock(progress.spent)
        bar = run.ctx.progress(total=int(self.budget) if self.budget else self.planned_rounds,
                               desc=f"{self.mode} ({self.synth.name if self.synth else 'data'})")
        try:
            while not self._finished(progress, clock):
                did = self._round(progress, pool, trainer, clock)
                if not did:
                    break
                progress.round += 1
                if self.evaluate is not None and cfg.eval_every and progress.round % cfg.eval_every == 0:
                    self._evaluate(progress, pool, trainer, clock)
                progress.spent = clock.elapsed()
                self._save(progress, trainer)
                bar.n = min(int(progress.spent), int(self.budget)) if self.budget else progress.round
                bar.set_postfix(self._postfix(progress, pool), refresh=True)
        finally:
            bar.close()
            if self.synth is not None:
                self.synth.close()
        if self.evaluate is not None and cfg.eval_every and (not progress.curve or progress.curve[-1]["round"] != progress.round):
            self._evaluate(progress, pool, trainer, clock)
        progress.spent = clock.elapsed()
        if self.writer is not None and not self.writer.complete:
            self.writer.finalize(f"the time budget ended the run after {len(self.writer.manifest['shards'])} shard(s)")
        return self._summary(progress, pool, trainer)

    def _finished(self, progress: Progress, clock: Clock) -> bool:
        if self.budget is not None:
            return clock.elapsed() >= self.budget
        return progress.round >= self.planned_rounds

    def _synthesis_open(self, progress: Progress, clock: Clock) -> bool:
        if self.writer is None or not self.writer.pending():
            return False
        return self.mode == "online" or self.budget is None or clock.elapsed() < self.config.synthesis_share * self.budget

    def _round(self, progress: Progress, pool: Pool, trainer: Any, clock: Clock) -> bool:
        """One round; False when it had nothing to do."""
        cfg, run = self.config, self.run
        did = False
        if self._synthesis_open(progress, clock):
            online = self.mode == "online" and progress.round >= cfg.warmup_rounds
            student = self.student if online and self.synth.wants_student() else None
            start = clock.elapsed()
            for _ in range(cfg.round_batches):
                if not self._synthesis_open(progress, clock):
                    break
                self._synthesize_one(pool, progress, student)
                did = True
            progress.synthesis_seconds += clock.elapsed() - start
        training = progress.round >= cfg.warmup_rounds if self.mode == "online" else not self._synthesis_open(progress, clock)
        if training and len(pool) >= 2 and not self._finished(progress, clock):
            if progress.train_start is None:
                progress.train_start = clock.elapsed()
            start = clock.elapsed()
            images, labels = pool.view()
            generator = run.ctx.generator(round_seed(cfg.seed, progress.round))
            result = trainer.train(images, labels, cfg.round_steps, generator=generator,
                                   progress=self._lr_progress(progress, trainer, clock))
            steps = int(result.get("steps", 0))
            progress.work["train_teacher_forward"] += steps * trainer.batch_size_for(len(pool))
            progress.work["train_student"] += steps * trainer.batch_size_for(len(pool))
            progress.training_seconds += clock.elapsed() - start
            progress.last = {k: float(v) for k, v in result.items()}
            did = did or steps > 0
        return did

    def _lr_progress(self, progress: Progress, trainer: Any, clock: Clock) -> Callable[[], float]:
        if self.budget is None:
            total = self._total_steps()
            return lambda: trainer.steps / total
        start = progress.train_start or 0.0
        window = max(1e-9, self.budget - start)
        return lambda: (clock.elapsed() - start) / window

    def _synthesize_one(self, pool: Pool, progress: Progress, student: nn.Module | None) -> None:
        from .synth.driver import run_synthesis

        run = self.run
        collected: list[dict] = []
        run_synthesis(self.synth, run.teacher, self.writer, run.ctx, labels=self.config.labels, student=student,
                      max_shards=1, on_shard=lambda plan, metrics: collected.append(metrics))
        shard = self.writer.manifest["shards"][-1]
        self._add_shard(pool, shard)
        progress.shards = len(self.writer.manifest["shards"])
        metrics = collected[-1] if collected else {}
        for key in ("teacher", "student", "generator"):
            progress.work[f"synthesis_{key}"] += int(metrics.get(f"work_{key}", 0))

    def _add_shard(self, pool: Pool, shard: dict) -> None:
        from .data.synthetic import read_shard

        tensors = read_shard(self.writer.directory, shard)
        pool.add(tensors["images"], tensors["labels"])

    def _evaluate(self, progress: Progress, pool: Pool, trainer: Any, clock: Clock) -> None:
        with clock.pause():
            top1 = float(self.evaluate(self.student))
            self.student.train()
        point = {"round": progress.round, "seconds": round(clock.elapsed(), 2), "steps": trainer.steps,
                 "pool": len(pool), "top1": round(top1, 4)}
        progress.curve.append(point)
        logger.info("round %d: top-1 %.4f after %.0f s, %d steps, pool %d", progress.round, top1,
                    point["seconds"], trainer.steps, len(pool))

    def _postfix(self, progress: Progress, pool: Pool) -> dict:
        post = {"round": progress.round, "pool": len(pool)}
        if "loss" in progress.last:
            post["loss"] = f"{progress.last['loss']:.3g}"
        if self.budget:
            post["time"] = f"{progress.spent / 60:.1f}/{self.budget / 60:.1f} min"
        if progress.curve:
            post["top1"] = f"{progress.curve[-1]['top1']:.3f}"
        return post

    def _summary(self, progress: Progress, pool: Pool, trainer: Any) -> dict[str, Any]:
        return {
            "schedule": self.mode,
            "rounds": progress.round,
            "images": len(pool),
            "steps": trainer.steps,
            "time_budget_s": self.budget,
            "synthesis_s": round(progress.synthesis_seconds, 2),
            "training_s": round(progress.training_seconds, 2),
            "total_s": round(progress.spent, 2),
            "work_images": dict(progress.work),
            "curve": list(progress.curve),
            **{k: v for k, v in progress.last.items() if k in ("loss", "kd_loss", "ce_loss")},
        }

    # -- checkpoints ---------------------------------------------------------------------------------
    def _save(self, progress: Progress, trainer: Any) -> None:
        payload = {
            "format": FORMAT, "version": VERSION, "fingerprint": self.fingerprint,
            "progress": progress.as_dict(),
            "student": self.student.state_dict(),
            "trainer": trainer.state_dict(),
            "synth": self.synth.state_dict() if self.synth is not None else {},
        }
        atomic_write(self.checkpoint, lambda tmp: torch.save(payload, tmp))

    def _restore(self, trainer: Any) -> Progress:
        if self.synth is not None:
            self.synth.setup(self.run.teacher)
        if not self.checkpoint.exists():
            if self.writer is not None:
                self.writer.truncate(0)
            return Progress()
        try:
            payload = torch.load(self.checkpoint, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise WeightsError(f"checkpoint {self.checkpoint} is unreadable ({type(exc).__name__}: {exc}); "
                               "delete it to start over") from exc
        if not isinstance(payload, dict) or payload.get("format") != FORMAT or payload.get("version") != VERSION:
            raise WeightsError(f"{self.checkpoint} is not a dfcompress online checkpoint of version {VERSION}")
        if payload["fingerprint"] != self.fingerprint:
            raise ConfigError(f"checkpoint {self.checkpoint} belongs to another run; delete it to start over")
        progress = Progress(**payload["progress"])
        self.student.load_state_dict(payload["student"])
        trainer.load_state_dict(payload["trainer"])
        if self.synth is not None:
            self.synth.load_state_dict(payload["synth"])
        if self.writer is not None:
            self.writer.truncate(progress.shards)
        logger.info("resuming %s after round %d (%.0f s spent, pool of %d shard(s))", self.checkpoint.parent.parent,
                    progress.round, progress.spent, progress.shards)
        return progress


def plot_curve(curves: dict[str, list[dict]], path: Path, *, title: str = "") -> Path | None:
    """Top-1 against minutes, one line per run; None when there is nothing to draw."""
    if not any(curves.values()):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, points in curves.items():
        if points:
            ax.plot([p["seconds"] / 60 for p in points], [100 * p["top1"] for p in points], marker=".", label=label)
    ax.set_xlabel("minutes (synthesis + training)")
    ax.set_ylabel("student top-1 (%)")
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path

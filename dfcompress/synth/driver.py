"""The synthesis driver: runs a synthesizer shard by shard into a resumable data set on disk."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..components import Synthesizer, Teacher
from ..context import RunContext
from ..data.synthetic import ShardPlan, SyntheticWriter
from ..errors import Interrupted, PluginError

logger = logging.getLogger(__name__)


@torch.no_grad()
def teacher_confidence(teacher: Teacher, images: torch.Tensor, labels: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The teacher's softmax probability of each image's target label (images in pixel space)."""
    x = teacher.input.normalize(images.to(device).float())
    probs = teacher.model(x).float().softmax(dim=1)
    return probs.gather(1, labels.to(device).view(-1, 1)).squeeze(1).cpu()


class SynthesisProgress:
    """The synthesis progress bar: it advances per iteration of the synthesizer's loop (through
    ``ctx.on_step``) when the synthesizer iterates, else per batch, with the live loss values as postfix."""

    def __init__(self, synth: Synthesizer, ctx: RunContext, batches: int) -> None:
        option = synth.iterations_option
        self.steps = max(1, int(getattr(synth.config, option))) if option is not None else 1
        self.bar = ctx.progress(total=batches * self.steps, desc=f"synthesize ({synth.name})")
        self.batches_done = 0

    def on_step(self, step: int, total: int, values: dict[str, float] | None) -> None:
        """``RunContext.on_step``: move to ``step`` of the current batch; show ``values`` when given."""
        self.bar.update(self.batches_done * self.steps + min(step, self.steps) - self.bar.n)
        if values:
            self.bar.set_postfix({k: f"{v:.3g}" for k, v in values.items()}, refresh=False)

    def batch_done(self, metrics: dict) -> None:
        """The end of a batch (also for synthesizers that do not report their steps)."""
        self.batches_done += 1
        self.bar.update(self.batches_done * self.steps - self.bar.n)
        self.bar.set_postfix({k: f"{v:.3g}" for k, v in metrics.items() if k in ("loss", "teacher_acc")})

    def close(self) -> None:
        self.bar.close()


def check_batch(synth: Synthesizer, batch: Any, targets: torch.Tensor, teacher: Teacher) -> None:
    """Refuse, before it is written, a batch that breaks the contract (:mod:`dfcompress.synth.contract`: shape,
    dtype, pixels in [0, 1], the requested labels, CPU tensors, finite metrics), naming the synthesizer's class."""
    from .contract import batch_problems

    problems = batch_problems(batch, targets.cpu(), teacher.input, "synthesize_batch()")
    if problems:
        cls = type(synth)
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise PluginError(f"synthesizer '{synth.name}' ({cls.__module__}.{cls.__qualname__}) broke its contract: "
                          f"{problems[0]}{more}; nothing of this batch was written")


def run_synthesis(
    synth: Synthesizer,
    teacher: Teacher,
    writer: SyntheticWriter,
    ctx: RunContext,
    *,
    labels: str = "balanced",
    student: nn.Module | None = None,
    max_shards: int | None = None,
    on_shard: Callable[[ShardPlan, dict], None] | None = None,
) -> int:
    """Synthesize the pending shards of ``writer`` (at most ``max_shards``); return how many were written.

    Each shard draws its labels and every random number from its own seed; in a world of several processes
    this one makes only the shards it owns (:meth:`dfcompress.distributed.World.owns`). On SIGINT/SIGTERM the shard in
    progress is dropped and :class:`Interrupted` is raised; finished shards stay on disk. Unless ``ctx.quiet``,
    a progress bar advances per iteration (:class:`SynthesisProgress`, through ``ctx.on_step``)."""
    from .labels import make_labels

    pending = [plan for plan in writer.pending() if ctx.world.owns(plan.index)][:max_shards]
    if not pending:
        return 0
    if synth.stateful and ctx.world.distributed:
        logger.warning("%s keeps state across batches: each of the %d processes keeps its own, so this data set "
                       "differs from the one a single process makes (docs/distributed.md)", synth.name, ctx.world.size)
    written = 0
    progress = SynthesisProgress(synth, ctx, len(pending))
    previous_hook = ctx.on_step
    if not ctx.quiet:
        ctx.on_step = progress.on_step
    try:
        for plan in pending:
            generator = ctx.generator(plan.seed)
            label_gen = torch.Generator().manual_seed(plan.seed)
            targets = make_labels(plan.count, teacher.input.num_classes, labels, label_gen).to(ctx.device)
            start = time.perf_counter()
            batch = synth.synthesize_batch(targets, generator=generator, student=student)
            if ctx.stop_requested:
                raise Interrupted(f"synthesis interrupted during shard {plan.index}; {plan.index} shard(s) kept")
            check_batch(synth, batch, targets, teacher)
            metrics = dict(batch.metrics)
            metrics.setdefault("seconds", time.perf_counter() - start)
            confidence = teacher_confidence(teacher, batch.images, batch.labels, ctx.device)
            writer.add(plan, batch.images, batch.labels, confidence=confidence, metrics=metrics)
            written += 1
            progress.batch_done(metrics)
            logger.info(
                "shard %d/%d: %d images in %.1f s, %s", plan.index + 1, len(writer.plan()), plan.count,
                metrics["seconds"], ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float)),
            )
            if on_shard is not None:
                on_shard(plan, metrics)
    finally:
        ctx.on_step = previous_hook
        progress.close()
    return written


def synthesis_request(teacher: Teacher, synth: Synthesizer, labels: str) -> dict:
    """What defines a synthetic data set's content, for its manifest and resume check."""
    from ..options import as_dict

    return {
        "teacher": teacher.spec,
        "input": teacher.input.as_dict(),
        "synth": synth.name,
        "synth_options": as_dict(synth.config),
        "labels": labels,
    }


def open_writer(directory: Path, teacher: Teacher, synth: Synthesizer, *, num_images: int, batch_size: int,
                seed: int, labels: str, extra: dict | None = None, world: Any = None) -> SyntheticWriter:
    """The writer of a data set; with a ``world`` of several processes rank 0 opens (creates or resumes) it first."""
    from ..distributed import SINGLE

    world = world or SINGLE
    request = synthesis_request(teacher, synth, labels)
    if extra:
        request.update(extra)
    with world.main_first("open the synthetic data set"):
        return SyntheticWriter(directory, request, num_images=num_images, batch_size=batch_size, seed=seed,
                               world=world)


def finish_shards(writer: SyntheticWriter) -> None:
    """After every rank made its shards: rank 0 merges their records into the manifest before anyone reads it."""
    world = writer.world
    world.barrier("the end of synthesis")
    with world.main_first("merge the shards of all ranks"):
        if world.is_main and world.distributed:
            writer.collect()

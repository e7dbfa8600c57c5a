"""Training shared by the built-in tasks: the online schedule or time budget (:mod:`dfcompress.schedule`)
and its learning-curve evaluator."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import nn

from ..evaluation import _eval_logits

if TYPE_CHECKING:
    from ..run import Run


def _evaluator(run: Run) -> Any:
    """top-1 of a model on the run's real data, for the learning curve (None without real data)."""
    if run.eval_data is None:
        return None
    from ..metrics.classification import topk_accuracy

    def top1(model: nn.Module) -> float:
        model.eval()
        return topk_accuracy(_eval_logits(run, model), run.eval_data.labels, (1,))["top1"]

    return top1


def scheduled_training(run: Run, mode: str, synth: Any, student: nn.Module, distiller: Any, name: str) -> Any:
    """Train ``student`` under the online schedule or a time budget (:mod:`dfcompress.schedule`); return the pool."""
    from ..data import synthetic as synthdata
    from ..schedule import Schedule, plot_curve
    from ..synth.driver import open_writer

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

"""The ``prune`` task: synthesize, prune the teacher, fine-tune it by distillation, evaluate."""
from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, ClassVar

from torch import nn

from ..components import Task
from ..errors import ConfigError
from ..evaluation import _record_size, assess_synthetic, evaluate_model
from .training import scheduled_training

if TYPE_CHECKING:
    from ..run import Run


def _train_copy(model: nn.Module) -> nn.Module:
    """A trainable copy of a frozen model."""
    model = copy.deepcopy(model)
    for p in model.parameters():
        p.requires_grad_(True)
    return model


class PruneTask(Task):
    name = "prune"
    summary = "synthesize, prune the teacher, fine-tune it by distillation, evaluate"
    #: NaturalInversion's pruning study fine-tunes 20 epochs with SGD at lr 0.001
    distill_defaults: ClassVar[dict] = {"epochs": 20, "lr": 0.001}
    produces_model = True

    def check(self, run: Run) -> None:
        run.check_before_work(distill_defaults=self.distill_defaults, pruner=True)
        self._plan(run)

    def _plan(self, run: Run) -> tuple[Any, Any, Any, str, bool]:
        """(pruner, distiller, synthesizer or None, schedule, scheduled) of this run; refuses a pruner that needs
        images before pruning when the run makes them only while fine-tuning."""
        from ..schedule import choose_schedule

        pruner = run.pruner()
        distiller = run.distiller(self.distill_defaults)
        synth = None if run.config.synthetic else run.synthesizer()
        mode = choose_schedule(run.config, synth, distiller)
        scheduled = mode == "online" or run.config.budget_seconds is not None
        if scheduled and pruner.needs_data:
            raise ConfigError(f"pruner {pruner.name} needs images before pruning, which an online or time-bounded run "
                              "makes only while fine-tuning; use --schedule offline without --time-budget, or a "
                              "data-free criterion (e.g. --pruner l1)")
        return pruner, distiller, synth, mode, scheduled

    def run(self, run: Run) -> dict[str, Any]:
        teacher = run.teacher
        pruner, distiller, synth, mode, scheduled = self._plan(run)
        data = None if scheduled else run.synthetic_data(synth)
        if data is not None:
            assess_synthetic(run, data)
        model = _train_copy(teacher.model)
        batches = None
        if pruner.needs_data:
            from ..data.synthetic import random_batches

            size = min(64, len(data))
            batches = [(x.to(run.ctx.device), y.to(run.ctx.device)) for x, y in
                       random_batches(data, teacher.input, count=4 * size, batch_size=size, seed=run.config.seed)]
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
        if not run.is_main:  # the rest (evaluation, the saved model, --then) is rank 0's
            return run.metrics
        with run.stage("evaluate"):
            evaluate_model(run, "final", pruned, compare_to_teacher=True)
        from ..prune import save_pruned

        path = run.out_dir / "pruned.pt"
        save_pruned(pruned, path, arch=run.config.teacher, input_spec=teacher.input)
        run.artifacts["model"] = path.name
        _record_size(run, "final", path)
        run.metrics["result"] = "final"
        run.follow_up(pruned, source="final", data=data)
        return run.metrics


"""The ``distill`` task: synthesize, distill a student from the teacher, evaluate."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from ..components import Task
from ..evaluation import _record_size, assess_synthetic, evaluate_model, save_student
from .training import scheduled_training

if TYPE_CHECKING:
    from ..run import Run


class DistillTask(Task):
    name = "distill"
    summary = "synthesize, distill a student from the teacher, evaluate"
    distill_defaults: ClassVar[dict] = {}
    produces_model = True

    def model_spec(self, run: Run) -> str:
        return run.config.student or run.config.teacher

    def check(self, run: Run) -> None:
        run.check_before_work(distill_defaults=self.distill_defaults)

    def run(self, run: Run) -> dict[str, Any]:
        from ..schedule import choose_schedule

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
        if not run.is_main:  # the rest (evaluation, the saved model, --then) is rank 0's
            return run.metrics
        with run.stage("evaluate"):
            evaluate_model(run, "teacher", teacher.model)
            evaluate_model(run, "student", student, compare_to_teacher=True)
        run.artifacts["model"] = save_student(run, student, student_spec)
        _record_size(run, "student", run.out_dir / run.artifacts["model"])
        run.metrics["result"] = "student"
        run.follow_up(student, source="student", data=data)
        return run.metrics

"""The ``quantize`` task: post-training quantization calibrated on synthetic images, alone or after another task.

``--task quantize`` synthesizes the calibration images (or reads ``--synthetic DIR``), evaluates the teacher
and quantizes it. ``--task prune|distill --then quantize`` quantizes the fine-tuned model on the images it was
trained on (:meth:`QuantizeTask.follow`), so no image is synthesized twice. Either way the report gets a row
``<source>-<precision>`` (e.g. ``final-int8``), the saved program ``<row>.pt2``, and a latency table of the
float model eager, the float model through the backend's compiler, and the quantized program.
"""
from __future__ import annotations

import copy
import logging
from typing import TYPE_CHECKING, Any

from torch import nn

from ..components import Task
from ..errors import ConfigError
from ..data.synthetic import random_batches
from ..evaluation import _record_size, assess_synthetic, eval_predictions_of, evaluate_model

if TYPE_CHECKING:
    from ..run import Run

logger = logging.getLogger(__name__)


class QuantizeTask(Task):
    name = "quantize"
    summary = "synthesize calibration images, quantize the teacher to int8, evaluate (or --then quantize)"
    accepts_model = True

    def check(self, run: Run) -> None:
        cfg = run.config
        if cfg.schedule == "online" or cfg.budget_seconds is not None:
            raise ConfigError("--task quantize synthesizes its calibration images before quantizing; drop --schedule "
                              "online and --time-budget, or train first: --task distill|prune ... --then quantize")
        run.check_before_work()
        run.check_quantizer(cfg.teacher)

    def check_follow(self, run: Run, *, model_spec: str) -> None:
        run.check_quantizer(model_spec)

    def run(self, run: Run) -> dict[str, Any]:
        synth = None if run.config.synthetic else run.synthesizer()
        data = run.synthetic_data(synth)
        assess_synthetic(run, data)
        with run.stage("evaluate"):
            evaluate_model(run, "teacher", run.teacher.model)
        self.follow(run, run.teacher.model, source="teacher", data=data)
        return run.metrics

    def follow(self, run: Run, model: nn.Module, *, source: str, data: Any) -> None:
        from ..metrics.cost import count_macs, count_params, latency_table

        quantizer = run.quantizer()
        cfg = quantizer.config
        spec = run.teacher.input
        row = f"{source}-{quantizer.precision}"
        batches = [x for x, _ in random_batches(data, spec, count=cfg.calib_images, batch_size=cfg.calib_batch_size,
                                                seed=run.config.seed)]
        with run.stage("quantize"):
            result = quantizer.quantize(model, spec, batches=batches, label=source)
        path = run.out_dir / f"{row}.pt2"
        quantizer.save(result, path, meta={"source": source, "teacher": run.config.teacher,
                                           "input_spec": spec.as_dict(), "calib_images": result.calib_images})
        run.artifacts[row] = path.name
        before = run.metrics.get("models", {}).get(source, {})
        fp32 = copy.deepcopy(model).cpu().eval()
        cost = {"params": before.get("params", count_params(fp32)), "macs": before.get("macs", count_macs(fp32, spec))}
        table = None
        if cfg.latency:
            with run.stage("latency"):
                label = f"{quantizer.precision}_{'compiled' if cfg.lower else 'reference'}"
                variants = {"fp32_eager": fp32, "fp32_compiled": quantizer.compile(copy.deepcopy(fp32)),
                            label: result.model}
                table = latency_table(variants, spec)
                table["quantized"] = label
            cost.update(latency_b1_ms=table["b1"][label], latency_b64_ms=table["b64"][label])
        with run.stage("evaluate"):
            evaluate_model(run, row, result.model, compare_to_teacher=True, cost=cost, device="cpu")
        _record_size(run, row, path)
        summary: dict[str, Any] = {"quantizer": quantizer.name, "source": source,
                                   "calib_data": run.artifacts.get("synthetic", ""), **result.as_dict()}
        mine, theirs = eval_predictions_of(run, row), eval_predictions_of(run, source)
        if mine is not None and theirs is not None:
            summary["agreement_with_float"] = round(mine.eq(theirs).float().mean().item(), 4)
        if table is not None:
            summary["latency"] = table
            if table["threads"] and table["load_avg"] and table["load_avg"] > table["threads"]:
                summary["notes"].append(f"the load average ({table['load_avg']}) was above the {table['threads']} "
                                        "threads used: other work on this machine may have slowed the timings")
        run.metrics["quantize"] = summary
        run.metrics["result"] = row
        logger.info("quantize: %s", {k: v for k, v in summary.items() if k != "latency"})

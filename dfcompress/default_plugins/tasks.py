from dfcompress import hookimpl


@hookimpl
def register_tasks(register):
    register("dfcompress.tasks.distill:DistillTask", name="distill",
             summary="synthesize, distill a student from the teacher, evaluate")
    register("dfcompress.tasks.prune:PruneTask", name="prune",
             summary="synthesize, prune the teacher, fine-tune it by distillation, evaluate")
    register("dfcompress.tasks.quantize:QuantizeTask", name="quantize",
             summary="synthesize calibration images, quantize the teacher to int8, evaluate (or --then quantize)")

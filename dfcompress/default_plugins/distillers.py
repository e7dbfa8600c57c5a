from dfcompress import hookimpl


@hookimpl
def register_distillers(register):
    register("dfcompress.distill.kd:KnowledgeDistillation", name="kd",
             summary="Hinton knowledge distillation (KL at temperature T, optional hard-label term)")

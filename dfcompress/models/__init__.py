"""Models from specs: ``timm:<name>``, ``torchvision:<name>``, ``cifar:resnet56``, ``demo``, ``demo:small``.

    from dfcompress.models import create_model, load_teacher
    teacher = load_teacher("cifar:resnet56", weights="resnet56.th")
    student, input_spec = create_model("cifar:resnet20")

timm and torchvision are imported only when a spec uses them.
"""
from .base import RANDOM_WEIGHTS, ModelSource, ModelSpec, create_model, default_eval_data, load_teacher, parse_spec, run_defaults

__all__ = [
    "RANDOM_WEIGHTS",
    "ModelSource",
    "ModelSpec",
    "create_model",
    "default_eval_data",
    "load_teacher",
    "parse_spec",
    "run_defaults",
]

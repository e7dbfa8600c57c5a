"""The built-in model sources: timm, torchvision, the CIFAR ResNets and the demo CNN.

timm and torchvision are imported only when their source is used (importing timm takes seconds).
"""
from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path

from torch import nn

from ..components import InputSpec
from .base import ModelSource

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@lru_cache(maxsize=1)
def _timm_names() -> tuple[str, ...]:
    import timm

    return tuple(timm.list_models())


class TimmSource(ModelSource):
    """``timm:<name>``: ``timm.create_model(name, pretrained=False)``; input spec from its pretrained_cfg."""

    name = "timm"
    summary = "any timm model, e.g. timm:resnet18"
    examples = ("timm:resnet18", "timm:mobilenetv3_small_100", "timm:test_resnet")

    def names(self) -> list[str]:
        return list(_timm_names())

    def has(self, name: str) -> bool:
        import timm

        return bool(timm.is_model(name))  # also accepts pretrained tags: resnet18.a1_in1k

    def build(
        self, name: str, *, num_classes: int | None = None, image_size: tuple[int, int] | None = None
    ) -> tuple[nn.Module, InputSpec]:
        import timm

        kwargs: dict = {} if num_classes is None else {"num_classes": num_classes}
        model = timm.create_model(name, pretrained=False, **kwargs)
        cfg = dict(getattr(model, "pretrained_cfg", None) or {})
        channels, height, width = cfg.get("input_size", (3, 224, 224))
        size = tuple(image_size) if image_size is not None else (height, width)
        if image_size is not None and cfg.get("fixed_input_size") and size != (height, width):
            model = timm.create_model(name, pretrained=False, img_size=size, **kwargs)  # e.g. ViT position embeddings
        classes = num_classes if num_classes is not None else int(getattr(model, "num_classes", cfg.get("num_classes", 1000)))
        spec = InputSpec(
            image_size=(int(size[0]), int(size[1])),
            channels=int(channels),
            mean=tuple(float(m) for m in cfg.get("mean", IMAGENET_MEAN)),
            std=tuple(float(s) for s in cfg.get("std", IMAGENET_STD)),
            num_classes=int(classes),
        )
        return model, spec


@lru_cache(maxsize=1)
def _torchvision_names() -> tuple[str, ...]:
    import torchvision

    return tuple(torchvision.models.list_models(module=torchvision.models))


class TorchvisionSource(ModelSource):
    """``torchvision:<name>``: a torchvision classification model, ``weights=None``; ImageNet statistics."""

    name = "torchvision"
    summary = "torchvision.models.get_model, e.g. torchvision:resnet18"
    examples = ("torchvision:resnet18", "torchvision:mobilenet_v3_small")

    def names(self) -> list[str]:
        return list(_torchvision_names())

    def _default_size(self, name: str) -> int:
        """The crop size of the model's published weights (metadata only, nothing is downloaded); else 224."""
        import torchvision

        try:
            crop = torchvision.models.get_model_weights(name).DEFAULT.transforms().crop_size
            return int(crop[0])
        except (ValueError, KeyError, AttributeError, IndexError, TypeError):
            return 224

    def build(
        self, name: str, *, num_classes: int | None = None, image_size: tuple[int, int] | None = None
    ) -> tuple[nn.Module, InputSpec]:
        import torchvision

        kwargs: dict = {} if num_classes is None else {"num_classes": num_classes}
        size = tuple(image_size) if image_size is not None else (self._default_size(name),) * 2
        if image_size is not None and name.startswith("vit_"):
            kwargs["image_size"] = int(size[0])  # position embeddings depend on the size
        elif image_size is not None and name.startswith("maxvit"):
            kwargs["input_size"] = (int(size[0]), int(size[1]))  # its attention partitions depend on the size
        model = torchvision.models.get_model(name, weights=None, **kwargs)
        spec = InputSpec(
            image_size=(int(size[0]), int(size[1])),
            channels=3,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            num_classes=num_classes if num_classes is not None else 1000,
        )
        return model, spec


class CifarSource(ModelSource):
    """``cifar:resnet20|32|44|56|110``: He et al.'s CIFAR ResNets (option A), 32x32 RGB, 10 classes."""

    name = "cifar"
    summary = "CIFAR ResNets with option-A shortcuts: cifar:resnet20|32|44|56|110"
    examples = ("cifar:resnet20", "cifar:resnet56")

    def names(self) -> list[str]:
        from .cifar_resnet import DEPTHS

        return list(DEPTHS)

    def build(
        self, name: str, *, num_classes: int | None = None, image_size: tuple[int, int] | None = None
    ) -> tuple[nn.Module, InputSpec]:
        from .cifar_resnet import cifar_resnet

        classes = 10 if num_classes is None else num_classes
        model = cifar_resnet(name, num_classes=classes, in_chans=3)
        size = tuple(image_size) if image_size is not None else (32, 32)
        return model, InputSpec(
            image_size=(int(size[0]), int(size[1])), channels=3, mean=IMAGENET_MEAN, std=IMAGENET_STD,
            num_classes=classes,
        )


class DemoSource(ModelSource):
    """``demo``: the embedded teacher, trained on first use on scikit-learn's digits; ``demo:small``: a
    narrower, shallower student with the same 1x16x16 input."""

    name = "demo"
    summary = "small CNN trained on first use on scikit-learn's digits (the embedded default)"
    examples = ("demo", "demo:small")
    default_name = "teacher"
    #: the embedded default runs in a few minutes on 2 CPU cores (see README, "demo budget")
    run_defaults = {"num_images": 512, "iterations": 300, "student": "demo:small", "epochs": 60,
                    "distill_options": {"lr": 0.05}}

    def names(self) -> list[str]:
        from .demo import ARCHS

        return list(ARCHS)

    def build(
        self, name: str, *, num_classes: int | None = None, image_size: tuple[int, int] | None = None
    ) -> tuple[nn.Module, InputSpec]:
        from dataclasses import replace

        from .demo import DEMO_INPUT, build_demo

        classes = 10 if num_classes is None else num_classes
        spec = replace(DEMO_INPUT, num_classes=classes)
        if image_size is not None:
            spec = replace(spec, image_size=(int(image_size[0]), int(image_size[1])))
        return build_demo(name, num_classes=classes, in_chans=spec.channels), spec

    def default_weights(self, name: str) -> Path | None:
        from .demo import ensure_demo_teacher

        return ensure_demo_teacher() if name == self.default_name else None

    def default_eval_data(self, name: str) -> str | None:
        return "digits:test"

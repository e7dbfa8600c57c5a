from dfcompress import hookimpl


@hookimpl
def register_models(register):
    register("dfcompress.models.sources:TimmSource", name="timm", summary="any timm model, e.g. timm:resnet18")
    register("dfcompress.models.sources:TorchvisionSource", name="torchvision",
             summary="torchvision.models.get_model, e.g. torchvision:resnet18")
    register("dfcompress.models.sources:CifarSource", name="cifar",
             summary="CIFAR ResNets with option-A shortcuts: cifar:resnet20|32|44|56|110")
    register("dfcompress.models.sources:DemoSource", name="demo",
             summary="small CNN trained on first use on scikit-learn's digits (the embedded default)")

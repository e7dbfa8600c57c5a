from dfcompress import hookimpl


@hookimpl
def register_quantizers(register):
    register("dfcompress.quantize.x86:X86InductorPTQ", name="x86",
             summary="static int8 PTQ, per-channel weights (torchao PT2E, X86 Inductor quantizer, torch.compile)")

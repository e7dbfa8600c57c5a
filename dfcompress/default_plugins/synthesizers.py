from dfcompress import hookimpl


@hookimpl
def register_synthesizers(register):
    register("dfcompress.synth.noise:NoiseSynthesizer", name="noise",
             summary="Gaussian-noise images with balanced labels (baseline)")
    register("dfcompress.synth.deepinversion:DeepInversion", name="deepinversion", aliases=("di",),
             summary="DeepInversion: pixels optimised for CE + BatchNorm statistics + image priors (+ADI)")
    register("dfcompress.synth.natural:NaturalInversion", name="natural", aliases=("ni",),
             summary="NaturalInversion: one-to-one generator + Feature Transfer Pyramid + Adaptive Channel Scaling")
    register("dfcompress.synth.seeded:SeededInversion", name="seeded",
             summary="Seed-conditional inversion: class-conditional feature statistics from seed images")
    register("dfcompress.synth.fast:FastSynthesizer", name="fast",
             summary="Fast: a meta-learned generator that synthesizes while the student trains (online)")
    register("dfcompress.synth.imagine:Imagine", name="imagine",
             summary="IMAGINE: image-guided inversion, matching a guide image's features at every level + a patch GAN")

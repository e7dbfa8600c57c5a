"""Post-training quantization: the PT2E flow, the built-in x86 int8 backend, and the saved ``.pt2`` programs."""
from .export import UnsupportedModelError, export_classifier
from .program import QuantizedClassifier, load_quantized, read_meta, save_program

__all__ = ["QuantizedClassifier", "UnsupportedModelError", "export_classifier", "load_quantized", "read_meta",
           "save_program"]

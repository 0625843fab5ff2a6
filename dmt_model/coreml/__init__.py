"""Core ML export, a numpy evaluator and an updatable-model validator for Linux."""

from dmt_model.coreml._spec import load_spec, save_spec, spec_from_bytes
from dmt_model.coreml.evaluate import evaluate_spec, predict_frame
from dmt_model.coreml.export import UpdateSettings, build_spec, export_coreml
from dmt_model.coreml.weights import get_inner_product, set_inner_product, updatable_layers

__all__ = [
    "UpdateSettings",
    "build_spec",
    "evaluate_spec",
    "export_coreml",
    "get_inner_product",
    "load_spec",
    "predict_frame",
    "save_spec",
    "set_inner_product",
    "spec_from_bytes",
    "updatable_layers",
]

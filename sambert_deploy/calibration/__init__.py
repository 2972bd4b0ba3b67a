"""Precision conversions (FP16, static INT8) for exported vocoder graphs; see :mod:`.precision`."""

from .precision import (
    DEFAULT_INT8,
    INT8_RECIPES,
    Calibration,
    ConvLayer,
    Int8Recipe,
    QuantizeReport,
    conv_layers,
    convert_fp16,
    int8_recipe,
    quantize_int8,
)

__all__ = ["DEFAULT_INT8", "INT8_RECIPES", "Calibration", "ConvLayer", "Int8Recipe", "QuantizeReport", "conv_layers",
           "convert_fp16", "int8_recipe", "quantize_int8"]

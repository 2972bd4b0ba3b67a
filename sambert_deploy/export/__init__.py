"""Export: model directory -> ONNX bundle. Everything below this package needs the ``export`` extra.

This module itself stays free of torch/onnx/yaml so that callers (the CLI) can check for the extra
first and fail with an install hint instead of a ``ModuleNotFoundError`` from deep inside an import.
"""

from __future__ import annotations

import importlib.util
import sys

from ..errors import MissingExtraError

EXPORT_MODULES = ("torch", "onnx", "yaml")  # yaml is the import name of pyyaml


def _importable(module: str) -> bool:
    if module in sys.modules:
        # importlib marks a module it could not import (or a test blocked) with None.
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require_export_extra() -> None:
    """Raise :class:`MissingExtraError` naming the ``export`` extra if torch, onnx or pyyaml is missing."""
    for module in EXPORT_MODULES:
        if not _importable(module):
            raise MissingExtraError(module, "export")

"""One error hierarchy for the whole toolkit.

Every error a user can cause derives from :class:`SambertDeployError`; the CLI turns it into one line
and exit code 2, the HTTP server into a 4xx answer. Messages name the file or field and the fix.
"""

from __future__ import annotations


class SambertDeployError(Exception):
    """Base class: a problem the user can fix (bad input, bad files, missing backend)."""

    exit_code = 2


class ModelDirectoryError(SambertDeployError):
    """A model directory, voice or checkpoint file is missing or laid out wrongly."""


class ConfigError(SambertDeployError):
    """A config.yaml / configuration.json field is missing or has an unusable value."""


class UnsupportedModelError(SambertDeployError):
    """A model variant this toolkit does not handle (NSF, SE/personal voices, other model types)."""


class CheckpointError(SambertDeployError):
    """A checkpoint cannot be read safely or does not match the architecture built from its config."""


class InvalidInputError(SambertDeployError, ValueError):
    """Input text, symbols, voice, emotion or options are invalid. ``param`` names the request field
    at fault where one is known (the HTTP server reports it in OpenAI's ``error.param``)."""

    def __init__(self, message: str = "", param: str | None = None):
        super().__init__(message)
        self.param = param


class ExportError(SambertDeployError):
    """ONNX export failed or the output location is unusable."""


class ExportValidationError(ExportError):
    """The exported graphs disagree with torch (collects every failure of the parity gate)."""

    def __init__(self, failures: list[str]):
        self.failures = list(failures)
        lines = "\n  - ".join(self.failures)
        super().__init__(f"parity gate failed ({len(self.failures)} problem(s)):\n  - {lines}")


class BundleError(SambertDeployError):
    """An exported bundle is missing, corrupted or of an unknown schema/model type."""


class BackendUnavailableError(SambertDeployError):
    """A requested inference backend cannot be used on this machine."""


class MissingExtraError(SambertDeployError):
    """An optional dependency group is not installed."""

    def __init__(self, module: str, extra: str, install: str | None = None):
        command = install or f"pip install 'sambert-deploy[{extra}]'"
        super().__init__(f"'{module}' is not installed; it is needed here. Install it with: {command}")


class PrecisionError(InvalidInputError):
    """A requested precision cannot be used: the voice has no such variant, the variant failed its
    quality gate, or the chosen backend cannot run it. The message names the fix."""

    def __init__(self, message: str = ""):
        super().__init__(message, param="precision")


class BackendClosedError(SambertDeployError):
    """A backend (or the Synthesizer owning it) was used after ``close()``; it never reopens silently."""


class SynthesizerClosedError(SambertDeployError):
    """The Synthesizer was closed before or while a stream ran; the stream ends with this error."""


class StreamCancelledError(SambertDeployError):
    """Raised inside a cancelled stream's work to stop it between (or during) graph calls. A cancelled
    :class:`~sambert_deploy.runtime.stream.Stream` itself just ends; callers never see this error."""


class CudaError(BackendUnavailableError):
    """A CUDA runtime call failed (its name, code and CUDA's own text are in the message)."""


class EngineMismatchError(BundleError):
    """A TensorRT engine was built for another TensorRT, GPU, precision, profile or ONNX graph than the
    one in use now; the message names the field and the command that rebuilds it."""

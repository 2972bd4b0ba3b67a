"""The Triton Python-backend model: ``sambert-deploy triton-repo`` copies this file to ``<repo>/<model>/1/model.py``.

Each model instance (one stub process) opens the bundle once into one shared :class:`Synthesizer`.
The model is decoupled: ``execute`` parses each request and hands it to a thread of its own (at most
``max_concurrent`` at once, the rest wait in order) and returns at once, so streams of one instance run
concurrently on the Synthesizer's shared scheduler instead of one after another. Each stream sends one
response per audio chunk, then the final flag. A client that cancels (``response_sender.is_cancelled()``)
cancels its stream; an error ends only its own request, with the project's one-line message, and the
instance keeps serving.

Runs in the Python environment Triton gives the model (docs/triton.md): it needs the runtime only
(numpy + onnxruntime), never torch. The 24.10 (2.51) stub needs numpy < 2 in that environment.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

# Only importable inside Triton's Python backend (the stub puts it on the path).
import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]

from sambert_deploy import __version__
from sambert_deploy.errors import InvalidInputError, SambertDeployError
from sambert_deploy.runtime.synthesizer import Synthesizer
from sambert_deploy.serve.triton.protocol import (
    InFlight,
    ModelParams,
    TtsRequest,
    chunk_outputs,
    error_line,
    parse_request,
)

log = logging.getLogger("sambert_deploy.serve.triton.model")


class _TritonLog(logging.Handler):
    """The project's log records into Triton's log (the stub's own stdout is not the server log)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = f"{record.name}: {self.format(record)}"
            if record.levelno >= logging.ERROR:
                pb_utils.Logger.log_error(msg)
            elif record.levelno >= logging.WARNING:
                pb_utils.Logger.log_warn(msg)
            else:
                pb_utils.Logger.log_info(msg)
        except Exception:  # noqa: BLE001 - logging must never take a request down
            self.handleError(record)


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        try:
            self._initialize(args)
        except SambertDeployError as e:  # a bad bundle path or parameter: one line in the log, no traceback
            raise pb_utils.TritonModelException(error_line(e)) from None

    def _initialize(self, args: dict[str, Any]) -> None:
        self._handler = _TritonLog()
        root = logging.getLogger("sambert_deploy")
        root.addHandler(self._handler)
        root.setLevel(logging.INFO)
        root.propagate = False
        config = json.loads(args["model_config"])
        if not pb_utils.using_decoupled_model_transaction_policy(config):
            raise pb_utils.TritonModelException(
                "this model streams: its config.pbtxt needs model_transaction_policy { decoupled: true }; "
                "regenerate it with sambert-deploy triton-repo")
        params = config.get("parameters", {})
        self.params = ModelParams.from_parameters(params)
        _check_numpy(self.params.allow_numpy2)
        written_by = params.get("sambert_deploy_version", {}).get("string_value")
        if written_by and written_by != __version__:
            log.warning("repository written by sambert-deploy %s, running %s: regenerate it with this version's "
                        "sambert-deploy triton-repo if the model misbehaves", written_by, __version__)
        bundle = Path(self.params.bundle)
        if not bundle.is_absolute():
            bundle = Path(args["model_repository"]) / args["model_version"] / bundle
        self.name = args.get("model_instance_name", "sambert")
        t0 = time.perf_counter()
        self.synth = Synthesizer(bundle, backend=self.params.backend, precision=self.params.precision,
                                 threads=self.params.threads)
        self.synth.load("*")
        log.info("%s: bundle %s loaded in %.2f s: voices %s, backends %s, vocoder precision %s, CPU budget %d, "
                 "%d stream(s) at once", self.name, bundle, time.perf_counter() - t0, self.synth.voices(),
                 self.synth.backends(), self.synth.precisions(), self.synth.cpu_budget, self.params.max_concurrent)
        self.in_flight = InFlight()
        # Both kept: a MetricFamily that is garbage-collected leaves Triton's registry with its metrics.
        self._gauge_family, self._gauge = _in_flight_gauge(args.get("model_name", "sambert"), self.name)
        self.pool = ThreadPoolExecutor(self.params.max_concurrent, thread_name_prefix="sambert-triton")
        self._ids = itertools.count(1)

    def execute(self, requests: list[Any]) -> None:
        for request in requests:
            sender = request.get_response_sender()
            rid = request.request_id() or f"#{next(self._ids)}"
            try:
                req = parse_request(functools.partial(_input, request), self.params.max_input_chars)
            except SambertDeployError as e:
                log.info("request %s: refused: %s", rid, error_line(e))
                _send_error(sender, error_line(e), e)
                continue
            self.pool.submit(self._serve, rid, req, sender)
        return None  # decoupled: every response goes through the senders

    def _serve(self, rid: str, req: TtsRequest, sender: Any) -> None:
        n = self.in_flight.enter()
        self._set_gauge(n)
        log.info("request %s: started; %d in flight", rid, n)
        outcome, detail, chunks, stream = "failed", "", 0, None
        try:
            if sender.is_cancelled():  # cancelled while it waited for a thread
                outcome = "cancelled"
            else:
                o = req.options
                if req.symbols:
                    stream = self.synth.stream(symbols=req.text, options=o)
                else:
                    stream = self.synth.stream(req.text, options=o)
                with stream:
                    outcome = "done"
                    for chunk in stream:
                        # Checked per chunk: a cancelled client is noticed within one chunk, and the
                        # cancel stops the stream's running graph calls at once.
                        if sender.is_cancelled():
                            stream.cancel()
                            outcome = "cancelled"
                            break
                        sender.send(pb_utils.InferenceResponse(
                            output_tensors=[pb_utils.Tensor(name, a) for name, a in chunk_outputs(chunk)]))
                        chunks += 1
            if outcome == "cancelled":
                _send_error(sender, "the client cancelled the request", None, cancelled=True)
            else:
                sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        except Exception as e:  # noqa: BLE001 - one request's failure must not take the instance down
            if not isinstance(e, SambertDeployError):
                log.exception("request %s: unexpected error", rid)
            # Past parsing, an input error that names no field is about the text (a symbol line, no
            # speakable text), the one input the Synthesizer reads as it goes.
            line = error_line(e, default_param="input")
            outcome, detail = "failed", f" ({line})"
            _send_error(sender, line, e)
        finally:
            left = self.in_flight.leave()
            self._set_gauge(left)
            info = stream.info if stream is not None else None
            if info is None:
                log.info("request %s: %s after %d chunk(s)%s; %d in flight", rid, outcome, chunks, detail, left)
            else:
                first = f"{info.first_audio_s * 1e3:.0f} ms" if info.first_audio_s is not None else "-"
                log.info("request %s: %s after %d chunk(s)%s, %.2f s audio in %.2f s (first audio %s), stream %s; "
                         "%d in flight", rid, outcome, chunks, detail, info.audio_s, info.elapsed_s, first, info.state,
                         left)

    def _set_gauge(self, value: int) -> None:
        if self._gauge is not None:
            try:
                self._gauge.set(value)
            except Exception:  # noqa: BLE001 - a metric must never fail a request
                pass

    def finalize(self) -> None:
        # Closing the Synthesizer ends running streams with SynthesizerClosedError (each sends its
        # error); requests still queued then fail at once, so shutdown waits for nothing long.
        self.synth.close()
        self.pool.shutdown(wait=True)
        log.info("%s: closed", self.name)
        logging.getLogger("sambert_deploy").removeHandler(self._handler)


def _check_numpy(allow_numpy2: bool) -> None:
    """Refuse numpy 2 in the model's Python unless the repository says the stub handles it. The 24.10
    (2.51) stub, built against numpy 1, reads numpy 2 arrays wrongly: a float32 input [1.5, -2, 3, 1e-3]
    arrives as [1.5, 1.5, 1.5, 1.5], outputs arrive empty, a string input crashes the stub. That must
    never become silently wrong audio; the Python side cannot ask the stub which numpy it was built for."""
    import sys

    import numpy as np

    log.info("model Python %s (%s), numpy %s", sys.version.split()[0], sys.prefix, np.__version__)
    if int(np.__version__.split(".")[0]) >= 2 and not allow_numpy2:
        raise pb_utils.TritonModelException(
            f"numpy {np.__version__} in the model's Python ({sys.prefix}): Triton 24.10's Python backend corrupts "
            "tensors under numpy 2; install numpy<2 there (docs/triton.md), or, for a Triton release whose stub "
            "supports numpy 2, write the repository with triton-repo --allow-numpy2")


def _in_flight_gauge(model: str, instance: str) -> tuple[Any, Any]:
    """``sambert_streams_in_flight{model,instance}`` on Triton's metrics endpoint (an autoscaling
    signal); None where the server runs with metrics off or its backend has no custom metrics."""
    try:
        family = pb_utils.MetricFamily(name="sambert_streams_in_flight",
                                       description="Streams this model instance is synthesizing now",
                                       kind=pb_utils.MetricFamily.GAUGE)
        return family, family.Metric(labels={"model": model, "instance": instance})
    except Exception as e:  # noqa: BLE001 - metrics are optional
        log.info("no in-flight metric (%s: %s); the log lines still count streams", type(e).__name__, e)
        return None, None


def _input(request: Any, name: str) -> Any:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


def _send_error(sender: Any, message: str, error: BaseException | None, cancelled: bool = False) -> None:
    code = None
    if cancelled:
        code = getattr(pb_utils.TritonError, "CANCELLED", None)
    elif isinstance(error, InvalidInputError):
        code = getattr(pb_utils.TritonError, "INVALID_ARG", None)
    err = pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)
    try:
        sender.send(pb_utils.InferenceResponse(error=err), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
    except Exception as e:  # noqa: BLE001 - the client is gone (cancelled): nobody left to tell
        log.info("could not send the final response (%s): %s", type(e).__name__, e)


__all__ = ["TritonPythonModel"]

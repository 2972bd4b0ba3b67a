"""The one gate framework: a comparator that judges outputs case by case against bounds held as data
and collects typed failures (:class:`~sambert_deploy.runtime.manifest.GateFailure`: shape, tolerance,
duration flip, quality, error, graph).

It serves the three gates of this project alike:

* the export parity gate: each graph, torch vs ONNX Runtime on sizes never traced, and the whole
  pipeline, torch vs the runtime on unit counts never traced (:mod:`sambert_deploy.export`);
* the precision gate of a reduced-precision vocoder on the voice's own mels
  (:mod:`sambert_deploy.calibration.bundle`);
* the same recipe on a real pretrained vocoder with real speech (:mod:`sambert_deploy.quality`).

The rules are the same for all three:

* shapes are compared first; a mismatch (for audio, a length mismatch) is a failure of its own, and
  nothing is truncated to make two signals fit;
* every case (clip, unit count, axis sizes) is judged, and a gate passes only if its WORST case meets
  every bound: a mean over cases hides one bad clip;
* every failure is collected before anything is raised;
* a check that could not run is a verdict of its own (``not_run``) and never a pass.

Torch-free (numpy only): the runtime reads the records this writes (``manifest.json``) and the CLI
describes them with :func:`describe_quality` and :func:`describe_parity`. The perceptual metrics
themselves are measured by :mod:`sambert_deploy.quality.metrics`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .errors import ExportValidationError
from .runtime.manifest import (
    FAILED,
    HIGHER_IS_BETTER,
    NOT_RUN,
    PASSED,
    ClipScore,
    DurationFlip,
    DurationFlipFailure,
    GateFailure,
    GateRecord,
    QualityFailure,
    QualityRecord,
    RunFailure,
    ShapeMismatch,
    ToleranceExceeded,
    Verdict,
)

# ----------------------------------------------------------------------------------------------
# bounds, as data
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bound:
    """``metric`` must stay at or below ``limit`` (a distance) or at or above it (PESQ, SNR: the
    metrics of :data:`~sambert_deploy.runtime.manifest.HIGHER_IS_BETTER`). NaN never holds."""

    metric: str
    limit: float

    @property
    def higher_is_better(self) -> bool:
        return self.metric in HIGHER_IS_BETTER

    @property
    def key(self) -> str:
        """The name of the bound in a manifest's ``thresholds`` (``logmel_l1_max``, ``pesq_vs_fp32_min``)."""
        return f"{self.metric}_{'min' if self.higher_is_better else 'max'}"

    def holds(self, value: float) -> bool:
        if not math.isfinite(value):
            return value == math.inf and self.higher_is_better  # identical signals: SNR inf
        return value >= self.limit if self.higher_is_better else value <= self.limit


@dataclass(frozen=True)
class Gate:
    """Named bounds over per-clip metrics. A bound applies to a clip where its metric was measured:
    PESQ against the recording exists only for real recordings, PESQ against FP32 only where PESQ
    finds speech (not on random weights); a metric measured as NaN (PESQ could not score real
    speech) fails its bound."""

    name: str
    bounds: tuple[Bound, ...]

    @property
    def thresholds(self) -> dict[str, float]:
        return {b.key: b.limit for b in self.bounds}

    def judge(self, case: str, subject: str, metrics: Mapping[str, float]) -> list[GateFailure]:
        return [QualityFailure(case, subject, b.metric, float(metrics[b.metric]), b.limit)
                for b in self.bounds if b.metric in metrics and not b.holds(float(metrics[b.metric]))]


# The precision gates, against the FP32 output of the same network, for the voice's own mels and for
# the real vocoder alike. pesq_drop: how far PESQ against the recording falls below FP32's own.
PRECISION_GATES: dict[str, Gate] = {
    "fp16": Gate("fp16", (Bound("logmel_l1", 0.10), Bound("pesq_vs_fp32", 4.3), Bound("pesq_drop", 0.10))),
    "bf16": Gate("bf16", (Bound("logmel_l1", 0.10), Bound("pesq_vs_fp32", 4.3), Bound("pesq_drop", 0.10))),
    "int8": Gate("int8", (Bound("logmel_l1", 0.15), Bound("pesq_vs_fp32", 4.0), Bound("pesq_drop", 0.20))),
}


def worse(metric: str, a: float, b: float) -> float:
    """The worse of two values of ``metric`` (NaN, unmeasurable, is the worst)."""
    if a != a or b != b:
        return math.nan
    return min(a, b) if metric in HIGHER_IS_BETTER else max(a, b)


def worst_metrics(clips: Iterable[ClipScore]) -> dict[str, float]:
    """The worst value of each metric over ``clips`` (each metric's own worst clip)."""
    out: dict[str, float] = {}
    for c in clips:
        for k, v in c.metrics.items():
            out[k] = worse(k, out[k], float(v)) if k in out else float(v)
    return out


# ----------------------------------------------------------------------------------------------
# the comparator
# ----------------------------------------------------------------------------------------------


class Comparator:
    """Judges cases one at a time and collects what failed.

    Tensors: :meth:`same_shape`, :meth:`allclose` and :meth:`exact` carry their own bounds;
    :meth:`durations` and :meth:`error` record what the export gate finds. Clips (a sentence or a
    recording, measured by the caller once its shape matched): :meth:`add`, judged by ``gate``.
    Nothing raises: :meth:`verdict` sums it up, or the caller raises :class:`GateError` with ``failures``.
    """

    def __init__(self, gate: Gate | None = None):
        self.gate = gate
        self.failures: list[GateFailure] = []
        self.clips: list[ClipScore] = []

    # -- tensors -------------------------------------------------------------------------------
    def same_shape(self, case: str, subject: str, got: Sequence[int], want: Sequence[int]) -> bool:
        if tuple(got) == tuple(want):
            return True
        self.failures.append(ShapeMismatch(case, subject, tuple(int(x) for x in got), tuple(int(x) for x in want)))
        return False

    def allclose(self, case: str, subject: str, got: np.ndarray, want: np.ndarray, atol: float,
                 rtol: float = 0.0) -> float:
        """Max-abs of ``got - want`` against ``atol + rtol * max|want|``; inf (and a shape failure)
        where the shapes differ, inf (and a tolerance failure) where a value is not finite."""
        got, want = np.asarray(got), np.asarray(want)
        if not self.same_shape(case, subject, got.shape, want.shape):
            return math.inf
        err = float(np.abs(got - want).max()) if want.size else 0.0
        err = err if math.isfinite(err) else math.inf
        bound = atol + rtol * (float(np.abs(want).max()) if want.size else 0.0)
        if not err <= bound:
            self.failures.append(ToleranceExceeded(case, subject, "max_abs", err, bound))
        return err

    def exact(self, case: str, subject: str, metric: str, got: float, want: float) -> bool:
        """An integer or setting that must be equal (e.g. the attention band width)."""
        if got == want:
            return True
        self.failures.append(ToleranceExceeded(case, subject, metric, abs(float(got) - float(want)), 0.0))
        return False

    def durations(self, case: str, subject: str, flips: Iterable[DurationFlip]) -> None:
        """Every flipped rounded duration that is not a rounding-boundary case is a failure."""
        self.failures += [DurationFlipFailure(case, subject, f) for f in flips if not f.boundary]

    def error(self, case: str, subject: str, error: BaseException | str) -> None:
        text = error if isinstance(error, str) else (str(error).splitlines() or [type(error).__name__])[0]
        self.failures.append(RunFailure(case, subject, text))

    # -- clips --------------------------------------------------------------------------------
    def add(self, clip: ClipScore, subject: str | None = None) -> None:
        """A clip measured elsewhere, judged by the gate; failures name ``subject`` (default: the backend)."""
        self.clips.append(clip)
        if self.gate is not None:
            self.failures += self.gate.judge(clip.clip, subject or clip.backend, clip.metrics)

    # -- outcome -------------------------------------------------------------------------------
    def verdict(self, data: str = "") -> Verdict:
        """The gate's verdict over everything compared so far (see :func:`verdict_of`)."""
        return verdict_of(self.gate, self.clips, self.failures, data)


def verdict_of(gate: Gate | None, clips: Sequence[ClipScore], failures: Sequence[GateFailure],
               data: str = "") -> Verdict:
    """Passed (no failure) or failed, with the worst clip's value of each metric; ``not_run`` where
    nothing was compared at all (nothing compared is nothing passed)."""
    if not clips and not failures:
        return Verdict.not_run("nothing was compared", data)
    return Verdict(FAILED if failures else PASSED, worst_metrics(clips), gate.thresholds if gate else {},
                   tuple(failures), tuple(clips), data)


class GateError(ExportValidationError):
    """A gate failed: ``gate_failures`` are the typed failures, ``failures`` their messages."""

    def __init__(self, failures: Sequence[GateFailure]):
        self.gate_failures: tuple[GateFailure, ...] = tuple(failures)
        super().__init__([f.message() for f in self.gate_failures])


# ----------------------------------------------------------------------------------------------
# text for people (the CLI and scripts; the runtime only reads the records)
# ----------------------------------------------------------------------------------------------


def _f(m: Mapping[str, float], key: str, fmt: str) -> str:
    return format(m[key], fmt) if key in m else "—"


def describe_verdict(v: Verdict) -> str:
    if v.status == NOT_RUN:
        return f"not run ({v.reason})"
    m = v.metrics
    parts = [f"log-mel L1 {_f(m, 'logmel_l1', '.3f')} nats (quiet {_f(m, 'logmel_l1_quiet', '.3f')})"]
    if "pesq_vs_fp32" in m:
        parts.append(f"PESQ vs fp32 {m['pesq_vs_fp32']:.2f}")
    if "pesq_vs_recording" in m:
        parts.append(f"PESQ vs recording {m['pesq_vs_recording']:.2f} (drop {_f(m, 'pesq_drop', '.2f')})")
    if "snr_db" in m:
        parts.append(f"SNR {m['snr_db']:.1f} dB")
    clips = len({c.clip for c in v.clips})
    return ", ".join(parts) + (f" (worst of {clips} clips)" if clips else "")


def describe_quality(q: QualityRecord) -> str:
    """One line: each verdict with its worst-clip numbers, then the overall verdict and why."""
    line = f"own mels: {describe_verdict(q.own)}; real vocoder: {describe_verdict(q.reference)}"
    if q.passed:
        return f"{line}; gate passed"
    head = "gate FAILED" if q.status == FAILED else "gate not passed (a check did not run)"
    return f"{line}; {head}: " + "; ".join(q.reasons())


def describe_parity(gate: GateRecord | None) -> str:
    """The export parity gate of a voice, one line (``sambert-deploy info``)."""
    if gate is None:
        return "not recorded (bundle exported before gate records)"
    if not gate.checked:
        return "not run: skipped at export (--no-check)"
    worst_mel = max((c.mel_err for c in gate.cases), default=0.0)
    worst_wav = max((c.wav_err for c in gate.cases), default=0.0)
    flips = sum(len(c.flips) for c in gate.cases)
    units = "/".join(str(c.units) for c in gate.cases)
    line = (f"{'passed' if gate.passed else 'FAILED'} on {units} units: mel max-abs {worst_mel:.2e}, wav max-abs "
            f"{worst_wav:.2e}" + (f", {flips} rounded duration(s) flipped at x.5" if flips else ""))
    return line + ("".join(f"; {f.message()}" for f in gate.failures))


def describe(record: GateRecord | QualityRecord | None) -> str:
    """One line for any gate record: a voice's export parity gate (None: not recorded) or a variant's
    quality record."""
    return describe_quality(record) if isinstance(record, QualityRecord) else describe_parity(record)

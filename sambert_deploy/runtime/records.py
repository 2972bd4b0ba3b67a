"""Gate records: what a gate compared, its verdict and its typed failures (torch-free).

Written by :mod:`sambert_deploy.gates` into the manifest; the runtime refuses a variant that did not pass.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

PASSED, FAILED, NOT_RUN = "passed", "failed", "not_run"
STATUSES = (PASSED, FAILED, NOT_RUN)

# Metrics where a larger value is better (PESQ, SNR); every other metric is an error, smaller is better.
HIGHER_IS_BETTER = frozenset({"pesq_vs_fp32", "pesq_vs_recording", "fp32_pesq_vs_recording", "snr_db"})
METRIC_LABELS = {"logmel_l1": "log-mel L1", "logmel_l1_quiet": "quiet log-mel L1", "pesq_vs_fp32": "PESQ vs fp32",
                 "pesq_drop": "PESQ-vs-recording drop from fp32's", "snr_db": "SNR", "max_abs": "max-abs",
                 "pesq_vs_recording": "PESQ vs recording", "x_band_width": "x-attention band width"}
METRIC_UNITS = {"logmel_l1": " nats", "logmel_l1_quiet": " nats", "snr_db": " dB"}


def _num(x: Any) -> float:
    return float("nan") if x is None else float(x)


@dataclass(frozen=True)
class DurationFlip:
    """A unit whose rounded duration differs between torch and ONNX Runtime in a gate case.

    ``boundary`` is true where both unrounded durations sit on a rounding boundary (x.5) and agree
    to float precision: that flip is noise, not an error.
    """

    unit: int
    torch_d: float
    onnx_d: float
    boundary: bool

    def to_json(self) -> dict[str, Any]:
        return {"unit": self.unit, "torch_d": self.torch_d, "onnx_d": self.onnx_d, "boundary": self.boundary}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> DurationFlip:
        return cls(int(d["unit"]), float(d["torch_d"]), float(d["onnx_d"]), bool(d["boundary"]))


@dataclass(frozen=True)
class GateFailure(ABC):
    """One comparison a gate did not pass. ``case`` is what was run (a clip, a unit count, a set of
    axis sizes), ``subject`` what was compared (an output tensor, a variant on a backend). Subclasses,
    one per ``kind``, carry the measured values; :meth:`message` is the one line for people."""

    kind: ClassVar[str] = ""
    case: str
    subject: str

    def message(self) -> str:
        return f"{self.subject} ({self.case}): {self.detail()}"

    @abstractmethod
    def detail(self) -> str:
        """What was measured against what it had to be (each failure kind says it its own way)."""

    def __str__(self) -> str:
        return self.message()

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind}
        for f in fields(self):
            v = getattr(self, f.name)
            d[f.name] = v.to_json() if isinstance(v, DurationFlip) else list(v) if isinstance(v, tuple) else v
        return d

    @staticmethod
    def from_json(d: dict[str, Any] | str) -> GateFailure:
        """A recorded failure; a plain string is one written by an earlier version (parsed back to its
        typed form where its wording is known, else kept as a :class:`QualityFailure` with its text)."""
        if isinstance(d, str):
            return _legacy_failure(d)
        kind = d.get("kind")
        case, subject = str(d.get("case", "")), str(d.get("subject", ""))
        if kind == ShapeMismatch.kind:
            return ShapeMismatch(case, subject, tuple(int(x) for x in d["got"]), tuple(int(x) for x in d["want"]))
        if kind == ToleranceExceeded.kind:
            return ToleranceExceeded(case, subject, str(d["metric"]), _num(d["value"]), _num(d["bound"]))
        if kind == DurationFlipFailure.kind:
            return DurationFlipFailure(case, subject, DurationFlip.from_json(d["flip"]))
        if kind == QualityFailure.kind:
            return QualityFailure(case, subject, str(d["metric"]), _num(d["value"]), _num(d["bound"]),
                                  str(d.get("text", "")))
        if kind == RunFailure.kind:
            return RunFailure(case, subject, str(d.get("error", "")))
        if kind == GraphProblem.kind:
            return GraphProblem(case, subject, str(d.get("problem", "")))
        raise ValueError(f"unknown gate failure kind {kind!r}")


@dataclass(frozen=True)
class ShapeMismatch(GateFailure):
    """The output has another shape than the reference (for audio: another length): nothing is
    compared past it, and nothing is truncated to make it fit."""

    kind: ClassVar[str] = "shape"
    got: tuple[int, ...]
    want: tuple[int, ...]

    def detail(self) -> str:
        if len(self.got) == len(self.want) == 1:
            return f"length {self.got[0]} != reference {self.want[0]} (a length mismatch fails; nothing is truncated)"
        return f"shape {self.got} != reference {self.want}"


@dataclass(frozen=True)
class ToleranceExceeded(GateFailure):
    """A numeric parity bound (``metric``, e.g. ``max_abs``) exceeded: ``value`` > ``bound``."""

    kind: ClassVar[str] = "tolerance"
    metric: str
    value: float
    bound: float

    def detail(self) -> str:
        return f"{METRIC_LABELS.get(self.metric, self.metric)} {self.value:.3g} > {self.bound:.3g}"


@dataclass(frozen=True)
class DurationFlipFailure(GateFailure):
    """A rounded duration that differs between torch and ONNX away from a rounding boundary."""

    kind: ClassVar[str] = "duration_flip"
    flip: DurationFlip

    def detail(self) -> str:
        f = self.flip
        return (f"rounded duration flipped at unit {f.unit} (torch d={f.torch_d:.6f}, onnx d={f.onnx_d:.6f}), "
                "not a rounding-boundary case")


@dataclass(frozen=True)
class QualityFailure(GateFailure):
    """A perceptual bound not met on one clip: ``value`` of ``metric`` against ``bound`` (a minimum
    for PESQ/SNR, a maximum for distances). NaN: the metric could not be measured, which fails too.
    ``text`` keeps the words of a failure recorded by an earlier version that could not be parsed."""

    kind: ClassVar[str] = "quality"
    metric: str
    value: float
    bound: float
    text: str = ""

    def message(self) -> str:
        return self.text or super().message()

    def detail(self) -> str:
        label, unit = METRIC_LABELS.get(self.metric, self.metric), METRIC_UNITS.get(self.metric, "")
        if self.value != self.value:  # NaN
            return f"{label} could not be measured (bound {self.bound:g}{unit})"
        op = "<" if self.metric in HIGHER_IS_BETTER else ">"
        return f"{label} {self.value:.3f}{unit} {op} {self.bound:g}{unit}"


@dataclass(frozen=True)
class RunFailure(GateFailure):
    """The candidate could not be run or measured at all (ONNX Runtime raised)."""

    kind: ClassVar[str] = "error"
    error: str

    def detail(self) -> str:
        return f"failed to run: {self.error}"


@dataclass(frozen=True)
class GraphProblem(GateFailure):
    """An exported graph that fails its audit (checker, shape inference, axes against the declaration)."""

    kind: ClassVar[str] = "graph"
    problem: str  # names the graph and tensor itself

    def message(self) -> str:
        return f"{self.problem} ({self.case})"

    def detail(self) -> str:
        return self.problem


_LEGACY = (  # wording of the previous version's failure strings -> (metric, value group, bound group)
    (re.compile(r"^(?:(?P<subject>.+?): )?log-mel L1 (?P<value>\S+?)(?: nats)? > (?P<bound>[\d.]+)(?: nats)?$"),
     "logmel_l1"),
    (re.compile(r"^(?:(?P<subject>.+?): )?PESQ vs (?:fp32|FP32) (?P<value>\S+) < (?P<bound>[\d.]+)$"), "pesq_vs_fp32"),
    (re.compile(r"^(?:(?P<subject>.+?): )?PESQ vs recording \S+ is (?P<value>\S+) below FP32's \S+ "
                r"\(allowed (?P<bound>[\d.]+)\)$"), "pesq_drop"),
)


def _legacy_failure(text: str) -> GateFailure:
    """An earlier version's failure string in its typed form (those gates judged means over clips)."""
    body = text.removeprefix("real vocoder: ")
    for pattern, metric in _LEGACY:
        m = pattern.match(body)
        if m:
            try:
                value, bound = float(m["value"]), float(m["bound"])
            except ValueError:
                break
            return QualityFailure("mean over clips", m["subject"] or "", metric, value, bound, text)
    return QualityFailure("mean over clips", "", "", float("nan"), float("nan"), text)


@dataclass(frozen=True)
class GateCase:
    """One whole-pipeline parity case: torch vs the runtime on ``units`` random units never traced."""

    case: str
    units: int
    frames: int
    mel_err: float  # max-abs over the mel [frames, num_mels]; inf where the shapes differ
    wav_err: float  # max-abs over the waveform [samples]; inf where the lengths differ
    note: str = ""
    flips: tuple[DurationFlip, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"case": self.case, "units": self.units, "frames": self.frames, "mel_err": self.mel_err,
                "wav_err": self.wav_err, "note": self.note, "flips": [f.to_json() for f in self.flips]}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> GateCase:
        return cls(str(d["case"]), int(d["units"]), int(d["frames"]), float(d["mel_err"]), float(d["wav_err"]),
                   str(d.get("note", "")), tuple(DurationFlip.from_json(f) for f in d.get("flips", [])))


@dataclass(frozen=True)
class GateRecord:
    """What the export-time parity gate checked for one voice.

    ``checked`` is false for ``export --no-check``: status ``not_run``, never a pass, no cases. A
    bundle whose gate failed is never written, so a checked record on disk has ``passed`` true and
    no ``failures`` (they are kept for records built in memory, e.g. by tests).
    """

    checked: bool
    passed: bool | None = None
    cases: tuple[GateCase, ...] = ()
    tolerances: dict[str, Any] = field(default_factory=dict)
    failures: tuple[GateFailure, ...] = ()

    @property
    def status(self) -> str:
        return NOT_RUN if not self.checked else PASSED if self.passed else FAILED

    def to_json(self) -> dict[str, Any]:
        if not self.checked:
            return {"checked": False, "status": NOT_RUN}
        d = {"checked": True, "status": self.status, "passed": self.passed, "cases": [c.to_json() for c in self.cases],
             "tolerances": self.tolerances}
        if self.failures:
            d["failures"] = [f.to_json() for f in self.failures]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> GateRecord:
        if not d.get("checked"):
            return cls(False)
        return cls(True, bool(d["passed"]), tuple(GateCase.from_json(c) for c in d.get("cases", [])),
                   dict(d.get("tolerances", {})), tuple(GateFailure.from_json(f) for f in d.get("failures", [])))



@dataclass(frozen=True)
class ClipScore:
    """One clip (a sentence of the voice's own mels, a real recording) of a variant on one backend:
    every metric measured against the FP32 output of the same network (and, for recordings, against
    the recording). Empty ``metrics``: the clip could not be measured (see the verdict's failures)."""

    clip: str
    backend: str
    metrics: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        return {"clip": self.clip, "backend": self.backend, "metrics": self.metrics}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ClipScore:
        return cls(str(d["clip"]), str(d["backend"]), {k: _num(v) for k, v in d["metrics"].items()})


@dataclass(frozen=True)
class Verdict:
    """One gate over a set of clips: it judges every clip, so ``passed`` means the WORST clip met every
    bound. ``metrics`` holds the worst clip's value of each metric (over clips and backends), ``clips``
    each clip's own. ``status`` ``not_run`` (``reason`` says why: a harness not installed, a check
    skipped on request) is a verdict of its own and never a pass."""

    status: str
    metrics: dict[str, float] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)
    failures: tuple[GateFailure, ...] = ()
    clips: tuple[ClipScore, ...] = ()
    data: str = ""  # what it was judged on
    reason: str = ""  # not_run: why

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"verdict status {self.status!r} is not one of {', '.join(STATUSES)}")
        if (self.status == FAILED) != bool(self.failures):
            raise ValueError(f"verdict {self.status} with {len(self.failures)} failure(s)")

    @property
    def passed(self) -> bool:
        return self.status == PASSED

    @classmethod
    def not_run(cls, reason: str, data: str = "") -> Verdict:
        return cls(NOT_RUN, data=data, reason=reason)

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "metrics": self.metrics, "thresholds": self.thresholds,
                "failures": [f.to_json() for f in self.failures], "clips": [c.to_json() for c in self.clips],
                "data": self.data, "reason": self.reason}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Verdict:
        return cls(str(d["status"]), {k: _num(v) for k, v in d.get("metrics", {}).items()},
                   {k: float(v) for k, v in d.get("thresholds", {}).items()},
                   tuple(GateFailure.from_json(f) for f in d.get("failures", [])),
                   tuple(ClipScore.from_json(c) for c in d.get("clips", [])), str(d.get("data", "")),
                   str(d.get("reason", "")))


_LEGACY_REFERENCE_METRICS = ("logmel_l1", "logmel_l1_quiet", "pesq_vs_fp32", "snr_db", "pesq_vs_recording",
                             "fp32_pesq_vs_recording")


@dataclass(frozen=True)
class QualityRecord:
    """How a reduced-precision variant compared with the FP32 graph it was made from: two verdicts.

    ``own``: on this voice's own mels (its acoustic model over a text corpus), per sentence: log-mel
    L1 (nats, all frames and the quietest 20%), PESQ-wb against the FP32 output (where PESQ finds
    speech: not on random weights) and SNR. ``reference``: the same recipe on a real pretrained
    vocoder with real speech (``sambert_deploy.quality``), per recording, also PESQ against the
    recording; ``not_run`` where that harness was not installed or the check was skipped.

    The variant passed only when both verdicts passed: a reference check that did not run is not a
    pass (the runtime then never picks the variant).
    """

    own: Verdict
    reference: Verdict

    @property
    def passed(self) -> bool:
        return self.own.passed and self.reference.passed

    @property
    def status(self) -> str:
        statuses = (self.own.status, self.reference.status)
        return FAILED if FAILED in statuses else NOT_RUN if NOT_RUN in statuses else PASSED

    def reasons(self) -> tuple[str, ...]:
        """Why the variant did not pass, one line each (empty when it passed)."""
        out = [f.message() for f in self.own.failures]
        out += [f"real vocoder: {f.message()}" for f in self.reference.failures]
        for name, v in (("own-mel check", self.own), ("real-vocoder check", self.reference)):
            if v.status == NOT_RUN:
                out.append(f"{name} not run: {v.reason or 'no reason recorded'}")
        return tuple(out)

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "passed": self.passed, "own": self.own.to_json(),
                "reference": self.reference.to_json()}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> QualityRecord:
        if "own" in d:
            return cls(Verdict.from_json(d["own"]), Verdict.from_json(d["reference"]))
        return cls._from_legacy(d)

    @classmethod
    def _from_legacy(cls, d: dict[str, Any]) -> QualityRecord:
        """A record written by the previous version: means over sentences/recordings, failures as
        strings (the real vocoder's prefixed "real vocoder: "), ``reference`` a dict or None (not run,
        which that version counted as a pass; here it is ``not_run``)."""
        mean = "; metrics are means over clips (recorded by an earlier version: re-run sambert-deploy quantize)"
        texts = [str(f) for f in d.get("failures", ())]
        own_failures = tuple(_legacy_failure(t) for t in texts if not t.startswith("real vocoder: "))
        own = Verdict(FAILED if own_failures else PASSED, {k: _num(v) for k, v in d["metrics"].items()},
                      {k: float(v) for k, v in d["thresholds"].items()}, own_failures, (),
                      str(d.get("data", "")) + mean)
        ref = d.get("reference")
        if not ref:
            return cls(own, Verdict.not_run("not recorded: quantized by an earlier version without the real-vocoder "
                                            "check; re-run sambert-deploy quantize"))
        ref_failures = tuple(_legacy_failure(str(t)) for t in ref.get("failures", ()))
        speech = ", ".join(str(s) for s in ref.get("speech", ()))
        data = f"{ref.get('vocoder', 'real vocoder')}; speech: {speech}; worst backend {ref.get('backend', '?')}{mean}"
        metrics = {k: _num(ref[k]) for k in _LEGACY_REFERENCE_METRICS if k in ref}
        return cls(own, Verdict(FAILED if ref_failures else PASSED, metrics, {}, ref_failures, (), data))

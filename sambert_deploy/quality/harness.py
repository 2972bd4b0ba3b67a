"""Run any vocoder variant graph on any backend over real speech and score it, recording by
recording, against the FP32 output of the same network and against the recording itself; the
precision gate (:data:`sambert_deploy.gates.PRECISION_GATES`) judges every recording, so a report
passes only if its worst recording does.

BF16 is not a graph: it is the FP32 graph on OpenVINO with ``precision_hint="bf16"``. OpenVINO's
CPU default hint is bf16 on CPUs with avx512_bf16, so every other OpenVINO run here asks for
``"f32"`` explicitly.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidInputError
from ..gates import PRECISION_GATES, Comparator, worse
from ..runtime.backends import Backend, BackendOptions, make_backend
from ..runtime.manifest import ClipScore, GateFailure
from .audio import Recording
from .metrics import logmel_l1, pesq_or_nan, snr_db

# ----------------------------------------------------------------------------------------------
# records
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordingScore:
    """One recording: the variant against FP32 (log-mel L1, PESQ, SNR) and both against the recording.
    NaN where it could not be measured (a length mismatch: see the report's failures)."""

    name: str
    seconds: float
    logmel_l1: float
    logmel_l1_quiet: float
    pesq_vs_fp32: float
    snr_db: float
    pesq_vs_recording: float
    fp32_pesq_vs_recording: float
    logmel_l1_vs_recording: float
    fp32_logmel_l1_vs_recording: float

    @property
    def pesq_drop(self) -> float:
        """How much PESQ against the recording this variant loses relative to FP32 (positive = worse)."""
        return self.fp32_pesq_vs_recording - self.pesq_vs_recording

    def metrics(self) -> dict[str, float]:
        d = {k: v for k, v in asdict(self).items() if k not in ("name", "seconds")}
        d["pesq_drop"] = self.pesq_drop
        return d


@dataclass(frozen=True)
class QualityReport:
    """One variant on one backend over the recordings: each recording's scores, and the typed failures
    of the precision gate of ``precision`` (none for fp32, which has no gate). :meth:`worst` is what the
    gate judged; :meth:`mean` is for scale only."""

    variant: str
    backend: str
    recordings: tuple[RecordingScore, ...]
    failures: tuple[GateFailure, ...] = ()
    rtf_1t: float | None = None
    rtf_2t: float | None = None
    precision: str = ""

    @property
    def passed(self) -> bool:
        return not self.failures

    def worst(self, metric: str) -> float:
        """The worst recording's value of ``metric`` (NaN if any recording could not be measured)."""
        vals = [r.metrics()[metric] for r in self.recordings]
        out = vals[0]
        for v in vals[1:]:
            out = worse(metric, out, v)
        return float(out)

    def mean(self, metric: str) -> float:
        return float(np.mean([r.metrics()[metric] for r in self.recordings]))

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["recordings"] = [asdict(r) for r in self.recordings]
        d["failures"] = [f.to_json() for f in self.failures]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> QualityReport:
        d = dict(d)
        d["recordings"] = tuple(RecordingScore(**r) for r in d["recordings"])
        d["failures"] = tuple(GateFailure.from_json(f) for f in d.get("failures", ()))
        return cls(**d)

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=1)


# ----------------------------------------------------------------------------------------------
# backends
# ----------------------------------------------------------------------------------------------


def open_backend(kind: str, path: Path, threads: int, precision_hint: str | None = None) -> Backend:
    """The runtime's own backend for ``kind`` (``cpu`` = ORT CPU, ``openvino``: f32 unless hinted)."""
    return make_backend(kind, path, BackendOptions(threads=threads, precision_hint=precision_hint)).open()


@dataclass
class Fp32Reference:
    """The FP32 graph's output (ORT CPU) per recording, and its own error against each recording."""

    recordings: tuple[Recording, ...]
    audio: tuple[np.ndarray, ...]
    pesq_vs_recording: tuple[float, ...]
    logmel_l1_vs_recording: tuple[float, ...]
    extras: dict[str, Any] = field(default_factory=dict)


def _run_all(backend: Backend, recordings: Sequence[Recording]) -> tuple[list[np.ndarray], float]:
    """Outputs and RTF (wall / audio seconds) of one pass after one warm-up call."""
    backend.run(recordings[0].feed())
    outs: list[np.ndarray] = []
    t0 = time.perf_counter()
    for r in recordings:
        outs.append(np.asarray(backend.run(r.feed())["audio"]).reshape(-1))
    wall = time.perf_counter() - t0
    return outs, wall / sum(r.seconds for r in recordings)


def fp32_reference(path: Path, recordings: Sequence[Recording], threads: int = 2) -> Fp32Reference:
    if not recordings:
        raise InvalidInputError("the quality harness needs at least one recording", param="recordings")
    with open_backend("cpu", path, threads) as be:
        outs, _ = _run_all(be, recordings)
    return Fp32Reference(tuple(recordings), tuple(outs),
                         tuple(pesq_or_nan(r.audio, o) for r, o in zip(recordings, outs, strict=True)),
                         tuple(logmel_l1(r.audio, o)[0] for r, o in zip(recordings, outs, strict=True)))


def score(variant: str, backend_kind: str, outputs: Sequence[np.ndarray], ref: Fp32Reference,
          rtf_1t: float | None = None, rtf_2t: float | None = None, precision: str = "") -> QualityReport:
    """Score ``outputs`` (one per recording of ``ref``) and judge each recording by the gate of
    ``precision``. A length other than FP32's (or the recording's) is a shape failure and leaves that
    recording unmeasured (NaN): nothing is truncated."""
    comp = Comparator(PRECISION_GATES.get(precision))
    subject = f"{variant} on {backend_kind}"
    nan = math.nan
    rows: list[RecordingScore] = []
    for rec, out, ref_out, ref_pesq, ref_l1 in zip(ref.recordings, outputs, ref.audio, ref.pesq_vs_recording,
                                                   ref.logmel_l1_vs_recording, strict=True):
        out = np.asarray(out).reshape(-1)
        if not (comp.same_shape(rec.name, subject, out.shape, ref_out.shape)
                and comp.same_shape(rec.name, f"{subject} vs the recording", out.shape, rec.audio.shape)):
            rows.append(RecordingScore(rec.name, rec.seconds, nan, nan, nan, nan, nan, ref_pesq, nan, ref_l1))
            continue
        l1, quiet = logmel_l1(ref_out, out)
        row = RecordingScore(rec.name, rec.seconds, l1, quiet, pesq_or_nan(ref_out, out), snr_db(ref_out, out),
                             pesq_or_nan(rec.audio, out), ref_pesq, logmel_l1(rec.audio, out)[0], ref_l1)
        rows.append(row)
        comp.add(ClipScore(rec.name, backend_kind, row.metrics()), subject)
    return QualityReport(variant, backend_kind, tuple(rows), tuple(comp.failures), rtf_1t, rtf_2t, precision)


def evaluate(variant: str, path: Path, backend_kind: str, ref: Fp32Reference, precision_hint: str | None = None,
             measure_rtf: bool = True, threads: int = 2, precision: str = "") -> QualityReport:
    """Run ``path`` on ``backend_kind`` over the reference's recordings and score it. With
    ``measure_rtf`` it runs once with 1 thread and once with 2 (the 2-thread outputs are scored)."""
    rtf1 = rtf2 = None
    if measure_rtf:
        with open_backend(backend_kind, path, 1, precision_hint) as be:
            _, rtf1 = _run_all(be, ref.recordings)
        threads = 2
    with open_backend(backend_kind, path, threads, precision_hint) as be:
        outs, rtf = _run_all(be, ref.recordings)
    if measure_rtf:
        rtf2 = rtf
    return score(variant, backend_kind, outs, ref, rtf1, rtf2, precision)


# ----------------------------------------------------------------------------------------------
# tables
# ----------------------------------------------------------------------------------------------


def _f(x: float | None, fmt: str) -> str:
    return "—" if x is None else format(x, fmt)


def markdown_table(reports: Sequence[QualityReport]) -> str:
    """Each report's WORST recording per metric (what the gate judges)."""
    head = ("| variant | backend | log-mel L1 (nats) | quiet L1 | PESQ vs FP32 | SNR dB | PESQ vs rec | FP32 PESQ vs rec "
            "| PESQ drop | RTF 1t | RTF 2t | gate |\n|---|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in reports:
        w = r.worst
        gate = "—" if r.precision not in PRECISION_GATES else "pass" if r.passed else "FAIL"
        lines.append(f"| {r.variant} | {r.backend} | {w('logmel_l1'):.3f} | {w('logmel_l1_quiet'):.3f} "
                     f"| {w('pesq_vs_fp32'):.2f} | {w('snr_db'):.1f} | {w('pesq_vs_recording'):.2f} "
                     f"| {w('fp32_pesq_vs_recording'):.2f} | {w('pesq_drop'):+.2f} | {_f(r.rtf_1t, '.3f')} "
                     f"| {_f(r.rtf_2t, '.3f')} | {gate} |")
    return "\n".join(lines)


def clip_table(reports: Sequence[QualityReport]) -> str:
    """Every recording of every report: the numbers behind each worst-clip figure."""
    lines = ["| variant | backend | recording | log-mel L1 | PESQ vs FP32 | PESQ vs rec | FP32 PESQ vs rec | PESQ drop |",
             "|---|---|---|---|---|---|---|---|"]
    for r in reports:
        for c in r.recordings:
            lines.append(f"| {r.variant} | {r.backend} | {c.name} | {c.logmel_l1:.3f} | {c.pesq_vs_fp32:.2f} "
                         f"| {c.pesq_vs_recording:.2f} | {c.fp32_pesq_vs_recording:.2f} | {c.pesq_drop:+.2f} |")
    return "\n".join(lines)

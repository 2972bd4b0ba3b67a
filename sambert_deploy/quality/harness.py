"""Run any vocoder variant graph on any backend over real speech and score it against the FP32 output
of the same network; typed reports and the precision gates.

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
from ..runtime.backends import Backend, BackendOptions, make_backend
from .audio import Recording
from .metrics import logmel_l1, pesq_wb, snr_db

# ----------------------------------------------------------------------------------------------
# records
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordingScore:
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


@dataclass(frozen=True)
class QualityReport:
    """One variant on one backend, averaged over the recordings (each also listed)."""

    variant: str
    backend: str
    recordings: tuple[RecordingScore, ...]
    logmel_l1: float
    logmel_l1_quiet: float
    pesq_vs_fp32: float
    snr_db: float
    pesq_vs_recording: float
    fp32_pesq_vs_recording: float
    logmel_l1_vs_recording: float
    fp32_logmel_l1_vs_recording: float
    rtf_1t: float | None = None
    rtf_2t: float | None = None
    precision: str = ""

    @property
    def pesq_drop(self) -> float:
        """How much PESQ against the recording this variant loses relative to FP32 (positive = worse)."""
        return self.fp32_pesq_vs_recording - self.pesq_vs_recording

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["recordings"] = [asdict(r) for r in self.recordings]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> QualityReport:
        d = dict(d)
        d["recordings"] = tuple(RecordingScore(**r) for r in d["recordings"])
        return cls(**d)

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=1)


@dataclass(frozen=True)
class Gate:
    """Thresholds a precision must meet on the real vocoder, against FP32 of the same network."""

    name: str
    max_logmel_l1: float
    max_pesq_drop: float
    min_pesq_vs_fp32: float | None = None

    def check(self, report: QualityReport) -> list[str]:
        """Failures (empty = pass), each naming the measured value and the bound."""
        bad: list[str] = []
        tag = f"{report.variant} on {report.backend}"
        if not math.isfinite(report.logmel_l1) or report.logmel_l1 > self.max_logmel_l1:
            bad.append(f"{tag}: log-mel L1 {report.logmel_l1:.3f} nats > {self.max_logmel_l1}")
        if self.min_pesq_vs_fp32 is not None and not report.pesq_vs_fp32 >= self.min_pesq_vs_fp32:
            bad.append(f"{tag}: PESQ vs FP32 {report.pesq_vs_fp32:.2f} < {self.min_pesq_vs_fp32}")
        if not report.pesq_drop <= self.max_pesq_drop:
            bad.append(f"{tag}: PESQ vs recording {report.pesq_vs_recording:.2f} is {report.pesq_drop:.2f} below "
                       f"FP32's {report.fp32_pesq_vs_recording:.2f} (allowed {self.max_pesq_drop})")
        return bad


GATES: dict[str, Gate] = {
    "fp16": Gate("fp16", max_logmel_l1=0.10, max_pesq_drop=0.10, min_pesq_vs_fp32=4.3),
    "bf16": Gate("bf16", max_logmel_l1=0.10, max_pesq_drop=0.10, min_pesq_vs_fp32=4.3),
    "int8": Gate("int8", max_logmel_l1=0.15, max_pesq_drop=0.20),
}


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
                         tuple(pesq_wb(r.audio, o) for r, o in zip(recordings, outs, strict=True)),
                         tuple(logmel_l1(r.audio, o)[0] for r, o in zip(recordings, outs, strict=True)))


def score(variant: str, backend_kind: str, outputs: Sequence[np.ndarray], ref: Fp32Reference,
          rtf_1t: float | None = None, rtf_2t: float | None = None, precision: str = "") -> QualityReport:
    rows: list[RecordingScore] = []
    for rec, out, ref_out, ref_pesq, ref_l1 in zip(ref.recordings, outputs, ref.audio, ref.pesq_vs_recording,
                                                   ref.logmel_l1_vs_recording, strict=True):
        l1, quiet = logmel_l1(ref_out, out)
        rows.append(RecordingScore(rec.name, rec.seconds, l1, quiet, pesq_wb(ref_out, out), snr_db(ref_out, out),
                                   pesq_wb(rec.audio, out), ref_pesq, logmel_l1(rec.audio, out)[0], ref_l1))

    def mean(attr: str) -> float:
        return float(np.mean([getattr(r, attr) for r in rows]))

    return QualityReport(variant, backend_kind, tuple(rows), mean("logmel_l1"), mean("logmel_l1_quiet"),
                         mean("pesq_vs_fp32"), mean("snr_db"), mean("pesq_vs_recording"),
                         mean("fp32_pesq_vs_recording"), mean("logmel_l1_vs_recording"),
                         mean("fp32_logmel_l1_vs_recording"), rtf_1t, rtf_2t, precision)


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
    head = ("| variant | backend | log-mel L1 (nats) | quiet L1 | PESQ vs FP32 | SNR dB | PESQ vs rec | FP32 PESQ vs rec "
            "| RTF 1t | RTF 2t |\n|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in reports:
        lines.append(f"| {r.variant} | {r.backend} | {r.logmel_l1:.3f} | {r.logmel_l1_quiet:.3f} | {r.pesq_vs_fp32:.2f} "
                     f"| {r.snr_db:.1f} | {r.pesq_vs_recording:.2f} | {r.fp32_pesq_vs_recording:.2f} "
                     f"| {_f(r.rtf_1t, '.3f')} | {_f(r.rtf_2t, '.3f')} |")
    return "\n".join(lines)

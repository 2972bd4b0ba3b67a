"""Acoustic model runtime: encoded units -> mel frames, streamed, numpy + onnxruntime only.

Per sentence: the ``encoder`` graph once, the ``dur_step`` graph once per unit (the duration
predictor is autoregressive), then numpy length regulation / position encoding / decoder memory,
then ``decoder_step`` once per r-frame step with a fixed-size x-attention window and memory window,
and the postnet on chunks with its exact left/right context and LSTM state carried. Memory use does
not grow with the sentence beyond the per-unit/per-step tables (a few hundred bytes per step).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ..errors import InvalidInputError
from ..symbols import EncodedUnits
from .backends import Backend, BackendOptions, CancelToken, make_backend
from .batching import DEFAULT_MAX_BATCH, MASK_VALUE, DecodeGroup, StepInput, StepOutput, batched, run_steps
from .chunking import WindowCutter
from .manifest import Manifest, VoiceManifest

log = logging.getLogger(__name__)

AM_GRAPHS = ("encoder", "dur_step", "memory_kv", "decoder_step", "postnet_fsmn", "postnet_rnn")


def position_table(n: int, d: int) -> np.ndarray:
    """Encoder position rows [1, n, d]: 1-based positions, angles in float64, then float32 (the
    reference's SinusoidalPositionEncoder, regenerated at any length)."""
    half = d // 2
    pos = np.arange(1, n + 1, dtype=np.float64)[:, None]
    j = np.arange(half, dtype=np.float64)[None, :]
    angle = pos / np.power(10000.0, j / (half - 1))
    return np.concatenate([np.sin(angle), np.cos(angle)], axis=1).astype(np.float32)[None]


def dur_inv_timescales(depth: int) -> np.ndarray:
    i = np.arange(depth)
    return np.power(10000.0, 2 * (i // 2) / depth).astype(np.float32)


def dur_position_encoding(reps: np.ndarray, r: int, inv_timescales: np.ndarray) -> np.ndarray:
    """[Tp, depth]: per frame its 1-based index inside its unit (0 on the padding frames up to a
    multiple of r), scaled, sin on even and cos on odd columns (so padding rows are [0,1,0,1,...])."""
    total = int(reps.sum())
    starts = np.cumsum(reps) - reps
    pos = np.arange(total, dtype=np.int64) - np.repeat(starts, reps) + 1
    pos = np.concatenate([pos, np.zeros((-total) % r, np.int64)]).astype(np.float32)
    scaled = pos[:, None] / inv_timescales[None, :]
    out = np.empty_like(scaled)
    out[:, 0::2] = np.sin(scaled[:, 0::2])
    out[:, 1::2] = np.cos(scaled[:, 1::2])
    return out


def length_regulate(x: np.ndarray, reps: np.ndarray, r: int) -> np.ndarray:
    """x [U, D] -> [Tp, D]: row u repeated reps[u] times, zero rows up to a multiple of r."""
    out = np.repeat(x, reps, axis=0)
    pad = (-out.shape[0]) % r
    if pad:
        out = np.concatenate([out, np.zeros((pad, x.shape[1]), x.dtype)])
    return out


@dataclass
class SentencePlan:
    """Everything the decoder needs for one sentence (after encoder + duration prediction)."""

    num_units: int
    log_durations: np.ndarray  # f32 [U]
    durations: np.ndarray  # f32 [U], unrounded d = exp(logd) - 1 (times the duration scale)
    reps: np.ndarray  # int64 [U], trunc(d + 0.5)
    band: int
    valid_frames: int
    memory: np.ndarray  # f32 [M, d_mem]
    pitch: np.ndarray
    energy: np.ndarray

    @property
    def num_steps(self) -> int:
        return int(self.memory.shape[0])


class AcousticModel:
    """The acoustic graphs of one voice on one backend."""

    def __init__(self, manifest: Manifest, voice: VoiceManifest, backend: str = "cpu",
                 options: BackendOptions | None = None, max_batch: int = DEFAULT_MAX_BATCH):
        self.voice = voice
        self.info = voice.acoustic
        # The acoustic graphs are chains of small ops run step by step: intra-op threads only add
        # synchronisation (measured: RTF 0.36 -> 0.25 at 300 units on 2 cores with one thread here),
        # and the core they would take is the vocoder's.
        am_options = replace(options or BackendOptions(), threads=1,
                             extra_session_options={"session.intra_op.allow_spinning": "0",
                                                    **(options.extra_session_options if options else {})})
        self.sessions: dict[str, Backend] = {}
        try:
            for g in AM_GRAPHS:
                self.sessions[g] = make_backend(backend, manifest.graph_path(voice, g), am_options).open()
        except BaseException:
            self.close()
            raise
        self.inv_timescales = dur_inv_timescales(self.info.projection_units)
        # The decoder steps of this voice's streams that are ready together run as one call, except
        # where each new input shape is a compilation (OpenVINO: +20-60 ms per new batch and window
        # combination measured here, against a step of about 1 ms): there each stream keeps its own calls.
        dec = self.sessions["decoder_step"]
        self.decode_group = DecodeGroup(dec, 1 if dec.compiles_per_shape else max_batch)
        if not batched(dec):
            log.warning("voice %s: its decoder step was exported without the batch axis, so concurrent streams "
                        "run one decoder call each; re-export the bundle (sambert-deploy export) to batch them",
                        voice.name)

    def close(self) -> None:
        for s in self.sessions.values():
            s.close()

    # -- sentence level -------------------------------------------------------------------------
    def plan(self, units: EncodedUnits, durations: np.ndarray | None = None, duration_scale: float = 1.0,
             token: CancelToken | None = None) -> SentencePlan:
        """Encoder + autoregressive durations + memory. ``durations`` (unrounded, one per unit) forces
        the durations instead of predicting them (used by the parity gate when a rounding flips)."""
        info = self.info
        u = units.num_units
        if u == 0:
            raise InvalidInputError("a sentence needs at least one unit")
        if not duration_scale > 0:
            raise InvalidInputError(f"duration_scale must be > 0, got {duration_scale}")
        enc = self.sessions["encoder"].run({
            "ling": units.ling[None].astype(np.int64, copy=False), "emotion": units.emotion[None].astype(np.int64, copy=False),
            "speaker": units.speaker[None].astype(np.int64, copy=False),
            "position_enc": position_table(u, info.embedding_dim)}, token=token)
        cond = enc["dur_cond"]
        if durations is None:
            logd = self._durations(cond, token)
            d = np.exp(logd) - np.float32(1.0)
        else:
            if durations.shape != (u,):
                raise InvalidInputError(f"durations must have one value per unit ({u}), got shape {durations.shape}")
            logd = np.log1p(durations).astype(np.float32)
            d = durations.astype(np.float32)
        if duration_scale != 1.0:
            d = d * np.float32(duration_scale)
        reps = (d + np.float32(0.5)).astype(np.int64)
        r = info.outputs_per_step
        band = int(float(d.max()) / r + 0.5)
        lr_text = length_regulate(enc["text_aug"][0], reps, r) + dur_position_encoding(reps, r, self.inv_timescales)
        lr_spk = length_regulate(enc["spk_hid"][0], reps, r)
        lr_emo = length_regulate(enc["emo_hid"][0], reps, r)
        m = lr_text.shape[0] // r
        memory = np.concatenate([lr_text.reshape(m, r * lr_text.shape[1]), lr_spk[::r], lr_emo[::r]], axis=1)
        return SentencePlan(u, logd, d, reps, band, int(reps.sum()), np.ascontiguousarray(memory, np.float32),
                            enc["pitch"][0], enc["energy"][0])

    def _durations(self, cond: np.ndarray, token: CancelToken | None = None) -> np.ndarray:
        sess = self.sessions["dur_step"]
        units = self.info.dur_lstm_units
        h = np.zeros((self.info.dur_lstm_layers, 1, units), np.float32)
        c = np.zeros_like(h)
        y = np.zeros((1, 1, 1), np.float32)
        out = np.empty(cond.shape[1], np.float32)
        for t in range(cond.shape[1]):
            res = sess.run({"y_prev": y, "cond": cond[:, t:t + 1], "h": h, "c": c}, validate=t == 0, token=token)
            y, h, c = res["log_dur"], res["h_out"], res["c_out"]
            out[t] = y[0, 0, 0]
        return out

    def sentence(self, plan: SentencePlan, postnet_chunk: int = 48, kv_block: int = 64,
                 first_chunk: int | None = None) -> SentenceAcoustic:
        """The decoder and postnet state of one sentence, advanced one mel block at a time
        (``first_chunk``: a smaller first postnet chunk, where a listener waits for the first audio)."""
        return SentenceAcoustic(self, plan, postnet_chunk, kv_block, first_chunk)


class SentenceAcoustic:
    """Decoder steps and chunked postnet of one sentence, as explicit state (no generator, no thread):
    each :meth:`next_block` runs the decoder steps the next postnet chunk needs, then that chunk. A
    scheduler may instead run the decoder steps itself, batched with other streams' (:mod:`.batching`:
    :meth:`step_input` / :meth:`take_step` while :attr:`needs_step`), then call :meth:`next_block`.

    Decoder: one ``decoder_step`` call per r-frame step with a fixed-size x-attention window (newest
    step first) and memory window (keys/values of the memory computed ``kv_block`` steps at a time),
    so nothing grows with the sentence. Postnet: each chunk's window reaches ``postnet_left`` frames
    back and ``postnet_right`` ahead, exactly the frames the FSMN sees in a whole-sentence pass, so the
    output is the same; the LSTM state is carried between chunks.
    """

    def __init__(self, am: AcousticModel, plan: SentencePlan, postnet_chunk: int = 48, kv_block: int = 64,
                 first_chunk: int | None = None):
        info = am.info
        self.am, self.plan, self.kv_block = am, plan, kv_block
        self.r, self.n_mels = info.outputs_per_step, info.num_mels
        self._layers, self._heads, self._dh = info.decoder_layers, info.decoder_heads, info.decoder_head_dim
        self._xb = plan.band
        self._wx = max(plan.band, 1)
        self._wh = plan.band + 1
        dec = am.sessions["decoder_step"]
        x_k: Any = np.zeros((1, self._layers, self._heads, self._wx, self._dh), np.float32)
        x_v: Any = np.zeros_like(x_k)
        if dec.keeps_outputs_on_device and batched(dec):  # the x window stays on the device between steps
            x_k, x_v = dec.to_device(x_k), dec.to_device(x_v)
        self._x_k, self._x_v = x_k, x_v
        self._prev = np.zeros((1, 1, self.n_mels), np.float32)
        self._mem_k = np.zeros((self._layers, self._heads, 0, self._dh), np.float32)
        self._mem_v = np.zeros_like(self._mem_k)
        self._buf_start = 0
        self._step_index = 0
        self._decoded = 0
        self._cutter = WindowCutter(plan.valid_frames, postnet_chunk, info.postnet_left, info.postnet_right,
                                    first_chunk)
        self._h = np.zeros((1, 1, info.postnet_lstm_units), np.float32)
        self._c = np.zeros_like(self._h)
        self._blocks = 0
        self.emitted = 0  # mel frames returned so far

    @property
    def total(self) -> int:
        return self.plan.valid_frames

    @property
    def finished(self) -> bool:
        return self.emitted >= self.plan.valid_frames

    @property
    def needs_step(self) -> bool:
        """Whether the next postnet chunk needs another decoder step first."""
        return not self.finished and self._cutter.wanted > 0

    def next_block(self, token: CancelToken | None = None) -> np.ndarray:
        """The next postnet chunk of mel frames, f32 [n, num_mels]; call only while not ``finished``."""
        while self.needs_step:
            self.decode_step(token)
        win = self._cutter.pop()
        if win is None:
            raise RuntimeError("the postnet window is not complete after the decoder steps it asked for")
        fsmn, rnn = self.am.sessions["postnet_fsmn"], self.am.sessions["postnet_rnn"]
        first = self._blocks == 0
        feats = fsmn.run({"dec": win.frames[None]}, validate=first, token=token)["feats"]
        res = rnn.run({"feats": np.ascontiguousarray(feats[:, win.a:win.b]), "dec": win.frames[None, win.a:win.b],
                       "h": self._h, "c": self._c}, validate=first, token=token)
        self._h, self._c = res["h_out"], res["c_out"]
        self._blocks += 1
        mel = res["mel"][0]
        self.emitted += mel.shape[0]
        return mel

    def decode_step(self, token: CancelToken | None = None) -> None:
        """One decoder step of this sentence alone."""
        self.take_step(run_steps(self.am.sessions["decoder_step"], [self.step_input(token)], token)[0])

    def step_input(self, token: CancelToken | None = None) -> StepInput:
        """The inputs of the next decoder step (computing the memory's keys/values as it reaches them)."""
        plan, i = self.plan, self._step_index
        m = plan.num_steps
        if i >= m:
            raise RuntimeError(f"decoder stepped past the sentence's {m} steps")
        layers, heads, dh, wh, wx = self._layers, self._heads, self._dh, self._wh, self._wx
        need = min(m, i + wh)
        if self._buf_start + self._mem_k.shape[2] < need:
            lo = self._buf_start + self._mem_k.shape[2]
            hi = min(m, max(need, lo + self.kv_block))
            res = self.am.sessions["memory_kv"].run({"memory": plan.memory[None, lo:hi]}, validate=lo == 0, token=token)
            drop = i - self._buf_start
            self._mem_k = np.concatenate([self._mem_k[:, :, drop:], res["mem_k"]], axis=2)
            self._mem_v = np.concatenate([self._mem_v[:, :, drop:], res["mem_v"]], axis=2)
            self._buf_start = i
        off = i - self._buf_start
        h_k = self._mem_k[None, :, :, off:off + wh]
        h_v = self._mem_v[None, :, :, off:off + wh]
        h_bias = np.zeros((1, wh), np.float32)
        if h_k.shape[3] < wh:  # the memory ends inside the look-ahead window
            short = wh - h_k.shape[3]
            pad = np.zeros((1, layers, heads, short, dh), np.float32)
            h_k = np.concatenate([h_k, pad], axis=3)
            h_v = np.concatenate([h_v, pad], axis=3)
            h_bias[0, wh - short:] = MASK_VALUE
        # Slot 0 is this step; slots 1.. the past steps, newest first: those before the sentence's
        # start or beyond the band are masked.
        x_bias = np.zeros((1, wx + 1), np.float32)
        x_bias[0, 1 + min(self._xb, i):] = MASK_VALUE
        return StepInput(self._prev, plan.memory[None, i:i + 1], self._x_k, self._x_v, x_bias,
                         np.ascontiguousarray(h_k), np.ascontiguousarray(h_v), h_bias, validate=i == 0)

    def take_step(self, out: StepOutput) -> None:
        """Advance by the step ``out`` computed from :meth:`step_input`; its valid frames go to the postnet."""
        frames = out.frames.reshape(self.r, self.n_mels)
        self._x_k, self._x_v = out.x_k, out.x_v
        self._prev = frames[-1:][None]
        self._step_index += 1
        take = max(0, min(self.r, self.plan.valid_frames - self._decoded))
        self._decoded += take
        self._cutter.push(frames[:take])

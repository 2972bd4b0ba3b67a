"""The exported graphs, declared as data, and the torch wrappers they trace.

The split follows where streaming needs state (SPEC §f):

=============  ==============================================================  ==================
graph          what                                                            run
=============  ==============================================================  ==================
encoder        embeddings, text encoder, pitch/energy predictors               once per sentence
dur_step       one step of the autoregressive duration predictor (LSTM h/c)    once per unit
memory_kv      decoder memory keys/values of all 12 layers (position-wise)     per block of steps
decoder_step   one r-frame PNCA step; x-attention window cache in/out          once per step
postnet_fsmn   postnet FSMN over a window with its exact left/right context    per chunk
postnet_rnn    postnet LSTM (h/c carried) + residual add                       per chunk
vocoder        HiFiGAN over a mel window with receptive-field context          per chunk
=============  ==============================================================  ==================

No cache grows with the utterance: the x-attention window holds ``max(x_band, 1)`` past steps and the
memory window ``h_band + 1`` steps. Length regulation, duration position encoding and the decoder
memory are numpy in :mod:`sambert_deploy.runtime.acoustic` (exact integer work, no graph needed).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..errors import ExportError
from ..models.hifigan import Generator, export_layout_2d
from ..models.sambert import KanTtsSAMBERT, sinusoid_table
from ..runtime.batching import MASK_VALUE  # additive mask; exp() underflows to exactly 0 like -inf
from ..runtime.manifest import TensorSpec

# ----------------------------------------------------------------------------------------------
# Wrappers (shapes and dtypes in each docstring)
# ----------------------------------------------------------------------------------------------


class EncoderGraph(nn.Module):
    """ling int64 [1,U,4], emotion/speaker int64 [1,U], position_enc f32 [1,U,E] ->
    text_aug [1,U,P], spk_hid [1,U,S], emo_hid [1,U,Em], dur_cond [1,U,P+S+Em], pitch [1,U], energy [1,U].

    The position rows come from the runtime (numpy float64 -> float32, exactly as the reference
    builds its table), so inputs longer than ``max_len`` need no special case in the graph.
    """

    def __init__(self, am: KanTtsSAMBERT):
        super().__init__()
        self.am = am

    def forward(self, ling: Tensor, emotion: Tensor, speaker: Tensor, position_enc: Tensor):
        te = self.am.text_encoder
        e = te.sy_emb(ling[..., 0]) + te.tone_emb(ling[..., 1]) + te.syllable_flag_emb(ling[..., 2]) + te.ws_emb(ling[..., 3])
        x = e * math.sqrt(te.ling_enc.d_model) + position_enc
        for layer in te.ling_enc.fft:
            x, _ = layer(x)
        text_hid = te.ling_proj(te.ling_enc.ln(x))
        spk = self.am.spk_tokenizer(speaker)
        emo = self.am.emo_tokenizer(emotion)
        va = self.am.variance_adaptor.predict_no_duration(text_hid, spk, emo)
        dur_cond = torch.cat([va["text_aug"], spk, emo], dim=-1)
        return va["text_aug"], spk, emo, dur_cond, va["pitch_predictions"], va["energy_predictions"]


class DurStepGraph(nn.Module):
    """y_prev f32 [1,1,1], cond f32 [1,1,C], h/c f32 [2,1,U] -> log_dur [1,1,1], h_out, c_out."""

    def __init__(self, am: KanTtsSAMBERT):
        super().__init__()
        self.dp = am.variance_adaptor.duration_predictor

    def forward(self, y_prev: Tensor, cond: Tensor, h: Tensor, c: Tensor):
        return self.dp.step(y_prev, cond, h, c)


class MemoryKVGraph(nn.Module):
    """memory f32 [1,N,d_mem] -> mem_k, mem_v f32 [L,H,N,dh] (batch 1 folded away)."""

    def __init__(self, am: KanTtsSAMBERT):
        super().__init__()
        self.blocks = am.mel_decoder.mel_dec.pnca

    def forward(self, memory: Tensor):
        ks, vs = [], []
        for blk in self.blocks:
            k, v = blk.pnca_attn.memory_kv(memory)
            ks.append(k[0])
            vs.append(v[0])
        return torch.stack(ks), torch.stack(vs)


class DecoderStepGraph(nn.Module):
    """One autoregressive step of r frames for a batch of B streams of one voice.

    prev f32 [B,1,num_mels] (last frame of each stream's previous step), memory_i f32 [B,1,d_mem],
    x_k/x_v f32 [B,L,H,Wx,dh] (each stream's previous Wx steps' keys/values, newest first), x_bias f32
    [B,Wx+1] (slot 0 = this step; 0 = attend, MASK_VALUE = not), h_k/h_v f32 [B,L,H,Wh,dh] (memory window starting at each
    stream's step), h_bias f32 [B,Wh] -> frames f32 [B,1,r*num_mels], x_k_out/x_v_out [B,L,H,Wx,dh]
    (windows moved by one). Streams with narrower windows than the batch's are padded with masked
    slots (oldest end of the x window, far end of the memory window): exp(MASK_VALUE) is exactly 0,
    so a row's result does not depend on its neighbours beyond float reassociation (runtime/batching.py).

    The step runs once per r frames, so its cost is ONNX Runtime's per-node overhead, not FLOPs
    (every product is a matrix-vector one per stream); one call for B streams pays that overhead
    once. The same arithmetic is therefore written with fewer nodes than the module graph would
    export: 2-D rows (Gemm, no 3-D MatMul+Add), the k=1 FFN convolutions as Gemm (no Transpose/Conv
    layout changes), q/k/v split with one reshape, the score scale folded into the q rows (exact
    when sqrt(d_head) is a power of two, as for d_head 16), the two attention outputs projected by
    one Gemm over [ctx_x, ctx_h], head merges as pure reshapes (one query row), and the per-layer
    state taken with one Split and kept 5-D (no Squeeze/Unsqueeze per layer): 316 nodes after ORT's
    fusions (305 without the batch axis, the same 0.92 ms a step at batch 1). tests/test_export.py
    checks it against the step written with the model's modules, and the pipeline gate checks the
    exported runtime against the torch model as for every graph.
    """

    def __init__(self, am: KanTtsSAMBERT):
        super().__init__()
        self.dec = am.mel_decoder.mel_dec
        att0 = self.dec.pnca[0].pnca_attn
        self.heads, self.d_head = att0.n_head, att0.d_head
        self.d_model = self.dec.d_model
        inv_scale = 1.0 / float(np.power(self.d_head, 0.5))
        hd = self.heads * self.d_head
        qkv_w, qkv_b, out_w, out_b, w1, b1, w2, b2 = [], [], [], [], [], [], [], []
        with torch.no_grad():
            for blk in self.dec.pnca:
                att, ffn = blk.pnca_attn, blk.pos_ffn
                if ffn.w_1.kernel_size != (1,) or ffn.w_2.kernel_size != (1,):
                    raise ValueError("the decoder step graph assumes kernel-1 FFN convolutions (PNCA decoder)")
                w, b = att.w_x_qkv.weight.clone(), att.w_x_qkv.bias.clone()
                w[:hd] *= inv_scale
                b[:hd] *= inv_scale
                qkv_w.append(w)
                qkv_b.append(b)
                # Columns ordered like reshape([H, 1, 2*dh] -> [1, H*2*dh]) of cat([ctx_x, ctx_h], -1).
                fx = att.fc_x.weight.view(self.d_model, self.heads, self.d_head)
                fh = att.fc_h.weight.view(self.d_model, self.heads, self.d_head)
                out_w.append(torch.cat([fx, fh], dim=-1).reshape(self.d_model, 2 * hd))
                out_b.append(att.fc_x.bias + att.fc_h.bias)
                w1.append(ffn.w_1.weight[:, :, 0].clone())
                b1.append(ffn.w_1.bias.clone())
                w2.append(ffn.w_2.weight[:, :, 0].clone())
                b2.append(ffn.w_2.bias.clone())
        self.qkv_w, self.qkv_b = nn.ParameterList(qkv_w), nn.ParameterList(qkv_b)
        self.out_w, self.out_b = nn.ParameterList(out_w), nn.ParameterList(out_b)
        self.w1, self.b1 = nn.ParameterList(w1), nn.ParameterList(b1)
        self.w2, self.b2 = nn.ParameterList(w2), nn.ParameterList(b2)

    def forward(self, prev: Tensor, memory_i: Tensor, x_k: Tensor, x_v: Tensor, x_bias: Tensor,
                h_k: Tensor, h_v: Tensor, h_bias: Tensor):
        heads, dh = self.heads, self.d_head
        x = self.dec.step_input(prev, memory_i).reshape(-1, self.d_model)  # [B, U]
        # Per layer everything stays 5-D with the layer axis kept as 1 ([B,1,H,W,dh]): unbind/stack
        # would add a Squeeze/Unsqueeze per tensor per layer (+113 nodes, +11% a step at batch 1).
        xb, hb = x_bias[:, None, None, None, :], h_bias[:, None, None, None, :]  # over layer, heads, query row
        xk, xv = x_k.split(1, dim=1), x_v.split(1, dim=1)
        hk, hv = h_k.split(1, dim=1), h_v.split(1, dim=1)
        new_k, new_v = [], []
        for li, blk in enumerate(self.dec.pnca):
            att, ffn = blk.pnca_attn, blk.pos_ffn
            qkv = F.linear(att.layer_norm(x), self.qkv_w[li], self.qkv_b[li])
            q, k, v = qkv.reshape(-1, 3, heads, 1, dh).split(1, dim=1)  # [B,1,H,1,dh]
            kk = torch.cat([k, xk[li]], dim=3)  # newest first
            vv = torch.cat([v, xv[li]], dim=3)
            ctx_x = torch.matmul(torch.softmax(torch.matmul(q, kk.transpose(-1, -2)) + xb, dim=-1), vv)
            ctx_h = torch.matmul(torch.softmax(torch.matmul(q, hk[li].transpose(-1, -2)) + hb, dim=-1), hv[li])
            ctx = torch.cat([ctx_x, ctx_h], dim=-1).reshape(-1, 2 * heads * dh)
            x = F.linear(ctx, self.out_w[li], self.out_b[li]) + x
            h = F.relu(F.linear(ffn.layer_norm(x), self.w1[li], self.b1[li]))
            x = F.linear(h, self.w2[li], self.b2[li]) + x
            new_k.append(kk[:, :, :, :-1])
            new_v.append(vv[:, :, :, :-1])
        frames = self.dec.dec_out_proj(self.dec.ln(x))[:, None, :]
        return frames, torch.cat(new_k, dim=1), torch.cat(new_v, dim=1)


class PostnetFsmnGraph(nn.Module):
    """dec f32 [1,W,num_mels] -> feats f32 [1,W,d_mem] (FSMN over the window, zero beyond its edges)."""

    def __init__(self, am: KanTtsSAMBERT):
        super().__init__()
        self.fsmn = am.mel_postnet.fsmn

    def forward(self, dec: Tensor):
        return self.fsmn(dec)


class PostnetRnnGraph(nn.Module):
    """feats f32 [1,N,d_mem], dec f32 [1,N,num_mels], h/c f32 [1,1,U] -> mel f32 [1,N,num_mels], h_out, c_out."""

    def __init__(self, am: KanTtsSAMBERT):
        super().__init__()
        self.pn = am.mel_postnet

    def forward(self, feats: Tensor, dec: Tensor, h: Tensor, c: Tensor):
        out, (h2, c2) = self.pn.lstm(feats, (h, c))
        return self.pn.fc(out) + dec, h2, c2


class VocoderGraph(nn.Module):
    """mel f32 [B,num_mels,F] -> audio f32 [B,1,hop*F]; traced in the 2-D conv layout (faster on ORT CPU).
    The batch axis lets windows of several streams run as one call where launches dominate (a GPU);
    shorter windows are padded at their end, which a causal vocoder's earlier output never sees."""

    def __init__(self, gen: Generator):
        super().__init__()
        self.gen = gen

    def forward(self, mel: Tensor):
        with export_layout_2d(self.gen):
            return self.gen(mel)


# ----------------------------------------------------------------------------------------------
# Declarations
# ----------------------------------------------------------------------------------------------

SizeFn = Callable[[dict[str, int]], dict[str, np.ndarray]]


@dataclass(frozen=True)
class GraphSpec:
    """One exported graph: I/O with semantic axis names, opset, tolerance, dummy inputs.

    ``make_inputs(sizes)`` builds valid inputs for a dict of axis sizes; ``trace_sizes`` is what the
    exporter traces with and ``check_sizes`` are the other sizes the parity gate runs (never the traced ones).
    """

    name: str
    part: str  # "am" or "voc"
    build: Callable[[nn.Module], nn.Module]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    make_inputs: Callable[[nn.Module, dict[str, int], np.random.Generator], dict[str, np.ndarray]]
    trace_sizes: dict[str, int]
    check_sizes: tuple[dict[str, int], ...]
    atol: float = 1e-4
    rtol: float = 1e-4
    opset: int = 17
    extra: dict[str, str] = field(default_factory=dict)


def _f(*shape: int, rng: np.random.Generator, scale: float = 1.0) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def _as_am(model: nn.Module) -> KanTtsSAMBERT:
    if not isinstance(model, KanTtsSAMBERT):
        raise ExportError(f"an acoustic-model graph was given a {type(model).__name__}; pass the KanTtsSAMBERT "
                          "(GraphSpec.part 'am' takes the AM, 'voc' the vocoder)")
    return model


def _as_gen(model: nn.Module) -> Generator:
    if not isinstance(model, Generator):
        raise ExportError(f"the vocoder graph was given a {type(model).__name__}; pass the HiFiGAN Generator "
                          "(GraphSpec.part 'voc')")
    return model


def _dims(am: KanTtsSAMBERT) -> tuple[int, int, int]:
    dec = am.mel_decoder.mel_dec
    blk = dec.pnca[0].pnca_attn
    return len(dec.pnca), blk.n_head, blk.d_head


def _encoder_inputs(am: nn.Module, s: dict[str, int], rng: np.random.Generator) -> dict[str, np.ndarray]:
    am = _as_am(am)
    c = am.cfg
    u = s["num_units"]
    ling = np.stack([rng.integers(0, c.sy - 3, u), rng.integers(0, c.tone - 3, u),
                     rng.integers(0, c.syllable_flag - 3, u), rng.integers(0, c.word_segment - 3, u)], -1)
    return {"ling": ling[None].astype(np.int64), "emotion": rng.integers(0, c.emotion - 3, (1, u)).astype(np.int64),
            "speaker": rng.integers(0, c.speaker - 3, (1, u)).astype(np.int64),
            "position_enc": sinusoid_table(u, c.embedding_dim).numpy()}


def _dur_inputs(am: nn.Module, s: dict[str, int], rng: np.random.Generator) -> dict[str, np.ndarray]:
    am = _as_am(am)
    c = am.cfg
    u = c.dur_pred_lstm_units
    return {"y_prev": np.abs(_f(1, 1, 1, rng=rng)), "cond": _f(1, 1, c.vp_in, rng=rng),
            "h": _f(2, 1, u, rng=rng, scale=0.3), "c": _f(2, 1, u, rng=rng, scale=0.3)}


def _memkv_inputs(am: nn.Module, s: dict[str, int], rng: np.random.Generator) -> dict[str, np.ndarray]:
    am = _as_am(am)
    return {"memory": _f(1, s["num_steps"], am.cfg.d_mem, rng=rng)}


def _decoder_inputs(am: nn.Module, s: dict[str, int], rng: np.random.Generator) -> dict[str, np.ndarray]:
    am = _as_am(am)
    c = am.cfg
    layers, heads, dh = _dims(am)
    b, wx, wh = s["batch"], s["x_window"], s["h_window"]
    # Each row a stream at another place: some past slots masked (the start of an utterance, or a
    # narrower window padded to the batch's), the memory's end somewhere inside the window.
    x_bias = np.zeros((b, wx + 1), np.float32)
    h_bias = np.zeros((b, wh), np.float32)
    for i in range(b):
        x_bias[i, : max(0, wx - 1 - i)] = MASK_VALUE
        h_bias[i, max(1, wh - i) if i % 2 else wh // 2 + 1:] = MASK_VALUE
    return {"prev": _f(b, 1, c.num_mels, rng=rng), "memory_i": _f(b, 1, c.d_mem, rng=rng),
            "x_k": _f(b, layers, heads, wx, dh, rng=rng), "x_v": _f(b, layers, heads, wx, dh, rng=rng),
            "x_bias": x_bias, "h_k": _f(b, layers, heads, wh, dh, rng=rng), "h_v": _f(b, layers, heads, wh, dh, rng=rng),
            "h_bias": h_bias}


def _pfsmn_inputs(am: nn.Module, s: dict[str, int], rng: np.random.Generator) -> dict[str, np.ndarray]:
    am = _as_am(am)
    return {"dec": _f(1, s["num_frames"], am.cfg.num_mels, rng=rng)}


def _prnn_inputs(am: nn.Module, s: dict[str, int], rng: np.random.Generator) -> dict[str, np.ndarray]:
    am = _as_am(am)
    c = am.cfg
    n = s["num_frames"]
    u = c.postnet_lstm_units
    return {"feats": _f(1, n, c.postnet_num_memory_units, rng=rng), "dec": _f(1, n, c.num_mels, rng=rng),
            "h": _f(1, 1, u, rng=rng, scale=0.3), "c": _f(1, 1, u, rng=rng, scale=0.3)}


def _voc_inputs(gen: nn.Module, s: dict[str, int], rng: np.random.Generator) -> dict[str, np.ndarray]:
    gen = _as_gen(gen)
    return {"mel": _f(s.get("batch", 1), gen.cfg.in_channels, s["num_frames"], rng=rng)}


def _t(name: str, *axes: str | int, dtype: str = "float32") -> TensorSpec:
    return TensorSpec(name, dtype, tuple(axes))


GRAPHS: tuple[GraphSpec, ...] = (
    GraphSpec(
        "encoder", "am", lambda m: EncoderGraph(m),  # type: ignore[arg-type]
        inputs=(_t("ling", 1, "num_units", 4, dtype="int64"), _t("emotion", 1, "num_units", dtype="int64"),
                _t("speaker", 1, "num_units", dtype="int64"), _t("position_enc", 1, "num_units", "embedding_dim")),
        outputs=(_t("text_aug", 1, "num_units", "projection_units"), _t("spk_hid", 1, "num_units", "speaker_units"),
                 _t("emo_hid", 1, "num_units", "emotion_units"), _t("dur_cond", 1, "num_units", "cond_units"),
                 _t("pitch", 1, "num_units"), _t("energy", 1, "num_units")),
        make_inputs=_encoder_inputs, trace_sizes={"num_units": 23},
        check_sizes=({"num_units": 1}, {"num_units": 2}, {"num_units": 37}, {"num_units": 811})),
    GraphSpec(
        "dur_step", "am", lambda m: DurStepGraph(m),  # type: ignore[arg-type]
        inputs=(_t("y_prev", 1, 1, 1), _t("cond", 1, 1, "cond_units"), _t("h", 2, 1, "dur_lstm_units"),
                _t("c", 2, 1, "dur_lstm_units")),
        outputs=(_t("log_dur", 1, 1, 1), _t("h_out", 2, 1, "dur_lstm_units"), _t("c_out", 2, 1, "dur_lstm_units")),
        make_inputs=_dur_inputs, trace_sizes={}, check_sizes=({},)),
    GraphSpec(
        "memory_kv", "am", lambda m: MemoryKVGraph(m),  # type: ignore[arg-type]
        inputs=(_t("memory", 1, "num_steps", "memory_units"),),
        outputs=(_t("mem_k", "layers", "heads", "num_steps", "head_dim"),
                 _t("mem_v", "layers", "heads", "num_steps", "head_dim")),
        make_inputs=_memkv_inputs, trace_sizes={"num_steps": 13},
        check_sizes=({"num_steps": 1}, {"num_steps": 2}, {"num_steps": 64})),
    GraphSpec(
        "decoder_step", "am", lambda m: DecoderStepGraph(m),  # type: ignore[arg-type]
        inputs=(_t("prev", "batch", 1, "num_mels"), _t("memory_i", "batch", 1, "memory_units"),
                _t("x_k", "batch", "layers", "heads", "x_window", "head_dim"),
                _t("x_v", "batch", "layers", "heads", "x_window", "head_dim"),
                _t("x_bias", "batch", "x_window_plus_one"),
                _t("h_k", "batch", "layers", "heads", "h_window", "head_dim"),
                _t("h_v", "batch", "layers", "heads", "h_window", "head_dim"),
                _t("h_bias", "batch", "h_window")),
        outputs=(_t("frames", "batch", 1, "step_units"), _t("x_k_out", "batch", "layers", "heads", "x_window", "head_dim"),
                 _t("x_v_out", "batch", "layers", "heads", "x_window", "head_dim")),
        make_inputs=_decoder_inputs, trace_sizes={"batch": 2, "x_window": 3, "h_window": 4},
        check_sizes=({"batch": 1, "x_window": 1, "h_window": 1}, {"batch": 1, "x_window": 2, "h_window": 3},
                     {"batch": 3, "x_window": 5, "h_window": 6}, {"batch": 8, "x_window": 9, "h_window": 10})),
    GraphSpec(
        "postnet_fsmn", "am", lambda m: PostnetFsmnGraph(m),  # type: ignore[arg-type]
        inputs=(_t("dec", 1, "num_frames", "num_mels"),),
        outputs=(_t("feats", 1, "num_frames", "postnet_memory_units"),),
        make_inputs=_pfsmn_inputs, trace_sizes={"num_frames": 67},
        check_sizes=({"num_frames": 1}, {"num_frames": 2}, {"num_frames": 161}, {"num_frames": 1000})),
    GraphSpec(
        "postnet_rnn", "am", lambda m: PostnetRnnGraph(m),  # type: ignore[arg-type]
        inputs=(_t("feats", 1, "num_frames", "postnet_memory_units"), _t("dec", 1, "num_frames", "num_mels"),
                _t("h", 1, 1, "postnet_lstm_units"), _t("c", 1, 1, "postnet_lstm_units")),
        outputs=(_t("mel", 1, "num_frames", "num_mels"), _t("h_out", 1, 1, "postnet_lstm_units"),
                 _t("c_out", 1, 1, "postnet_lstm_units")),
        make_inputs=_prnn_inputs, trace_sizes={"num_frames": 19},
        check_sizes=({"num_frames": 1}, {"num_frames": 2}, {"num_frames": 97})),
    GraphSpec(
        "vocoder", "voc", lambda m: VocoderGraph(m),  # type: ignore[arg-type]
        inputs=(_t("mel", "batch", "num_mels", "num_frames"),),
        outputs=(_t("audio", "batch", 1, "num_samples"),),
        make_inputs=_voc_inputs, trace_sizes={"batch": 2, "num_frames": 29},
        check_sizes=({"batch": 1, "num_frames": 1}, {"batch": 1, "num_frames": 2}, {"batch": 1, "num_frames": 57},
                     {"batch": 3, "num_frames": 57}, {"batch": 1, "num_frames": 240})),
)

GRAPHS_BY_NAME = {g.name: g for g in GRAPHS}

"""Memory tiers: from the GPU memory a process may use, choose chunk sizes, graph calls in flight and
where each stage runs, instead of the seed's one-size "load everything on the GPU" that needs 7-14 GB.

Streaming keeps GPU memory bounded by the *window*, not the utterance: a vocoder call holds one window's
activations (the widest is the last upsampling stage, ``channels x window x hop`` floats), the acoustic
model one postnet chunk and a fixed key/value window per stream; a batched decoder call holds the windows
of up to ``decoder_batch`` streams (issue 20) and a batched vocoder call the windows of up to
``vocoder_batch`` streams. So memory is

    reserve (CUDA context, cuDNN/cuBLAS handles and workspaces) + weights
        + calls in flight x (vocoder call of vocoder_batch windows + decoder call of decoder_batch streams)

and a tier is the largest configuration whose estimate fits the budget. The estimates are upper bounds
from the architecture (see :func:`call_bytes`); ``scripts/gpu_run.sh`` measures the real peak.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace

from ..errors import InvalidInputError

log = logging.getLogger(__name__)

GB = 1 << 30
MB = 1 << 20
# A CUDA 12/13 context with cuDNN and cuBLAS loaded takes 400-600 MB on Ampere/Hopper before any tensor;
# ORT's arena rounds allocations up, TensorRT keeps its own workspace: 768 MB covers them.
RESERVE_BYTES = 768 * MB
# The decoder's windows reach one band back (x) and one band ahead (memory): the band is the longest unit's
# duration in r-frame steps, about 20 for speech (a 60-frame pause at r=3); +1 for the step itself.
DECODER_WINDOW_STEPS = 21
# Fraction of the free memory a plan may spend when no budget is given: other processes grow too.
FREE_FRACTION = 0.9


@dataclass(frozen=True)
class Tier:
    name: str
    min_budget: int  # bytes: the smallest budget this tier is chosen for
    vocoder_chunk: int
    postnet_chunk: int
    gpu_streams: int  # graph calls in flight on the GPU
    vocoder_on_gpu: bool
    decoder_batch: int  # streams whose decoder steps run as one graph call
    vocoder_batch: int  # streams whose vocoder windows run as one graph call
    note: str


# Smallest first. Chunk 256 is the CPU default (README: throughput flat above it); a GPU gains from
# longer windows only with many frames in flight, which big cards have room for. The batches are chosen,
# not measured (no GPU run yet: scripts/gpu_run.sh measures them): a GPU call of one window or one
# decoder step is launch-bound, so several streams' share one launch where memory allows.
TIERS = (
    Tier("cpu-offload", 0, 128, 48, 1, False, 8, 1,
         "under 2 GB: acoustic model on the GPU, vocoder on the CPU (the seed's 'CPU offload')"),
    Tier("edge", 2 * GB, 128, 48, 2, True, 8, 1, "2-6 GB (Jetson Orin Nano/NX, 4 GB cards): both stages on the GPU"),
    Tier("desktop", 6 * GB, 256, 48, 4, True, 16, 2, "6-12 GB: consumer cards"),
    Tier("workstation", 12 * GB, 256, 96, 8, True, 32, 4, "12-32 GB: 16-24 GB cards, A10, L4, A30"),
    # 32, not 40: 90% of a 40 GB A100's free memory is 36 GB.
    Tier("datacenter", 32 * GB, 512, 96, 16, True, 64, 4, "32 GB and more: A100, H100, H200"),
)


@dataclass(frozen=True)
class GpuPlan:
    """What the runtime does with a GPU of ``budget`` bytes: logged at start-up, each field overridable."""

    tier: str
    budget: int
    vocoder_chunk: int
    postnet_chunk: int
    gpu_streams: int
    vocoder_on_gpu: bool
    estimate: int  # bytes the plan is expected to use at most
    reason: str
    decoder_batch: int  # streams per decoder call: the tier's, or the caller's decoder_batch
    vocoder_batch: int = 1  # windows per vocoder call: the tier's, or the caller's vocoder_batch
    vocoder_bytes: int = 0  # the estimate's vocoder activations: calls in flight x vocoder_batch windows

    def describe(self) -> str:
        place = "GPU" if self.vocoder_on_gpu else "CPU"
        return (f"GPU memory tier '{self.tier}' for a {self.budget / GB:.1f} GB budget: vocoder on the {place}, "
                f"chunk {self.vocoder_chunk}, {self.gpu_streams} call(s) in flight, decoder steps of up to "
                f"{self.decoder_batch} stream(s) per call, vocoder windows of up to {self.vocoder_batch} per call, "
                f"estimated peak {self.estimate / MB:.0f} MB ({self.reason})")


def parse_bytes(value: str | int | float | None, field: str = "max_gpu_memory") -> int | None:
    """``4G``, ``512M``, ``2.5GB``, ``1073741824`` -> bytes; None stays None."""
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        n = float(value)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?b)?\s*", str(value).lower())
        if not m:
            raise InvalidInputError(f"{field} '{value}' is not a size; write it like 4G, 512M or 2.5GB", param=field)
        n = float(m.group(1)) * {"": 1, "k": 1 << 10, "m": MB, "g": GB, "t": 1 << 40}[m.group(2)]
    if n <= 0:
        raise InvalidInputError(f"{field} must be positive, got {value!r}", param=field)
    return int(n)


def call_bytes(window_frames: int, hop: int, last_channels: int = 32, live_tensors: int = 6) -> int:
    """Upper bound of one vocoder call's activations: the last upsampling stage is the widest tensor
    (``last_channels`` x samples) and a residual block keeps about ``live_tensors`` of them alive
    (input, two conv outputs, the sum, the leaky-ReLU output, the accumulator); earlier stages have
    more channels but proportionally fewer samples. FP32."""
    return window_frames * hop * last_channels * live_tensors * 4


def decoder_step_bytes(layers: int, heads: int, head_dim: int, window: int = DECODER_WINDOW_STEPS,
                       live_windows: int = 8) -> int:
    """Upper bound of one stream's share of a batched ``decoder_step`` call: its windows, each f32
    [layers, heads, window, head_dim]: x_k/x_v and h_k/h_v in, x_k_out/x_v_out out, and the x window
    concatenated with the step's own key/value (one per x tensor) inside the graph: ``live_windows``
    of them. The rest of a step (one frame's hidden state per layer) is a few KB."""
    return live_windows * layers * heads * window * head_dim * 4


def plan_gpu(free_bytes: int, weights_bytes: int, hop: int, max_gpu_memory: int | None = None,
             context_frames: int = 35, step_bytes: int = 0, decoder_batch: int | None = None,
             vocoder_batch: int | None = None) -> GpuPlan:
    """The tier for a GPU with ``free_bytes`` free (``cudaMemGetInfo``), the model's ``weights_bytes``
    (acoustic model and vocoder, as loaded) and the vocoder's ``hop``; ``max_gpu_memory`` caps the
    budget (it never raises it above what is free). ``step_bytes`` is one stream's share of a decoder
    call (:func:`decoder_step_bytes`); ``decoder_batch``/``vocoder_batch`` replace every tier's streams
    per decoder/vocoder call (the caller's overrides), so the estimate and the tier choice count what will run."""
    budget = int(free_bytes * FREE_FRACTION)
    why = f"{FREE_FRACTION:.0%} of {free_bytes / GB:.1f} GB free"
    if max_gpu_memory is not None:
        if max_gpu_memory < budget:
            why = f"--max-gpu-memory {max_gpu_memory / GB:.2f} GB"
        budget = min(budget, max_gpu_memory)
    tiers = [replace(t, decoder_batch=decoder_batch or t.decoder_batch, vocoder_batch=vocoder_batch or t.vocoder_batch)
             for t in TIERS]
    chosen = tiers[0]
    for tier in tiers:
        if budget >= tier.min_budget and _estimate(tier, weights_bytes, hop, context_frames, step_bytes) <= budget:
            chosen = tier
    estimate = _estimate(chosen, weights_bytes, hop, context_frames, step_bytes)
    if estimate > budget:
        why += f"; even this tier's estimate exceeds the budget ({estimate / MB:.0f} MB): expect out-of-memory errors"
    return GpuPlan(chosen.name, budget, chosen.vocoder_chunk, chosen.postnet_chunk, chosen.gpu_streams,
                   chosen.vocoder_on_gpu, estimate, why, chosen.decoder_batch, chosen.vocoder_batch,
                   _vocoder_bytes(chosen, hop, context_frames))


def _vocoder_bytes(tier: Tier, hop: int, context_frames: int) -> int:
    if not tier.vocoder_on_gpu:
        return 0
    return tier.gpu_streams * tier.vocoder_batch * call_bytes(tier.vocoder_chunk + context_frames, hop)


def _estimate(tier: Tier, weights_bytes: int, hop: int, context_frames: int, step_bytes: int = 0) -> int:
    # ORT's arenas are per session and keep their peak: the decoder's and the vocoder's peaks add up, each
    # reached with every call in flight being of that graph.
    decoder = tier.gpu_streams * tier.decoder_batch * step_bytes
    if not tier.vocoder_on_gpu:
        return RESERVE_BYTES + weights_bytes // 2 + decoder  # the acoustic model's share
    return RESERVE_BYTES + weights_bytes + _vocoder_bytes(tier, hop, context_frames) + decoder

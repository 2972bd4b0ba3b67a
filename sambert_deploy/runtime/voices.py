"""Opening a voice's placement: its acoustic model and vocoder sessions, walking each stage's fallback
chain with one rule, and the record of what actually opened (:class:`OpenedVoice`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import BackendUnavailableError, BundleError, PrecisionError
from .acoustic import AcousticModel
from .manifest import Manifest, VoiceManifest
from .placement import Placement, skips
from .vocoder import Vocoder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OpenedVoice:
    """What a voice runs on, as opened: the backends, the vocoder's precision, the most streams whose
    decoder steps share one graph call (the placement's, or 1 where the backend compiles each shape),
    and each fallback taken (``"vocoder not on tensorrt: <why>"``), in order."""

    voice: str
    am_backend: str
    voc_backend: str
    precision: str
    decoder_batch: int
    fallbacks: tuple[str, ...] = ()
    vocoder_batch: int = 1  # the most streams whose vocoder windows share one call

    def to_json(self) -> dict[str, Any]:
        return {"acoustic": self.am_backend, "vocoder": self.voc_backend, "precision": self.precision,
                "decoder_batch": self.decoder_batch, "vocoder_batch": self.vocoder_batch,
                "fallbacks": list(self.fallbacks)}


@dataclass
class LoadedVoice:
    """A voice's open sessions, shared by every stream of it; ``frontends`` caches one front end per
    user lexicon ('' = none)."""

    manifest: VoiceManifest
    am: AcousticModel
    voc: Vocoder
    opened: OpenedVoice
    frontends: dict[str, Any] = field(default_factory=dict)

    def close(self) -> None:
        self.am.close()
        self.voc.close()


def open_voice(manifest: Manifest, placement: Placement, name: str) -> LoadedVoice:
    """Open ``name`` as ``placement`` says, falling back along each stage's chain (logged with the reason);
    the last backend of a chain, and any failure under ``strict``, raises."""
    vp = placement.voice(name)
    vm = manifest.voices[name]
    strict = placement.request.strict
    opts = placement.backend_options
    fallbacks: list[str] = []
    am: AcousticModel | None = None
    am_kind = vp.am_chain[0]
    for i, am_kind in enumerate(vp.am_chain):
        try:
            # the batch follows where it opened: a fallback off the GPU gets the CPU's
            am = AcousticModel(manifest, vm, am_kind, opts, max_batch=placement.decoder_batch_on(am_kind))
            break
        except BackendUnavailableError as e:
            if strict or i + 1 == len(vp.am_chain):
                raise
            fallbacks.append(f"acoustic model not on {am_kind}: {e}")
            log.warning("voice %s: acoustic model not on %s: %s; falling back to %s", name, am_kind, e,
                        vp.am_chain[i + 1])
    if am is None:  # unreachable: the chain's last backend raised or opened
        raise BackendUnavailableError(f"voice {name}: no backend opened the acoustic model")
    try:
        voc = _open_vocoder(manifest, placement, vm, fallbacks)
    except BaseException:
        am.close()
        raise
    choice = voc.choice
    opened = OpenedVoice(name, am_kind, choice.backend, choice.precision, am.decode_group.max_batch, tuple(fallbacks),
                         voc.max_batch)
    log.info("voice %s: acoustic model on %s (decoder steps of up to %d streams per call), vocoder on %s in %s "
             "(windows of up to %d streams per call)", name, am_kind, opened.decoder_batch, choice.backend,
             choice.precision, opened.vocoder_batch)
    return LoadedVoice(vm, am, voc, opened)


def _open_vocoder(manifest: Manifest, placement: Placement, vm: VoiceManifest, fallbacks: list[str]) -> Vocoder:
    vp = placement.voice(vm.name)
    chain = vp.vocoder_chain
    for i, cand in enumerate(chain):
        error = cand.error
        if error is None and cand.choice is not None:
            try:
                opts = replace(placement.backend_options, threads=placement.request.vocoder_threads,
                               gpu_mem_limit=placement.vocoder_mem_limit)
                return Vocoder(manifest, vm, cand.choice.backend, opts, cand.choice, window_frames=vp.window_frames,
                               max_calls=placement.gpu_streams, max_batch=placement.vocoder_batch_on(cand.choice.backend))
            except (BackendUnavailableError, BundleError, PrecisionError) as e:
                error = e
        if error is None:  # a candidate has a choice or an error
            raise BackendUnavailableError(f"voice {vm.name}: vocoder candidate {cand.backend} has no graph")
        if placement.request.strict or i + 1 == len(chain) or not skips(cand, error):
            raise error
        fallbacks.append(f"vocoder not on {cand.backend}: {error}")
        log.warning("voice %s: vocoder not on %s: %s; falling back to %s", vm.name, cand.backend, error,
                    chain[i + 1].backend)
    raise BackendUnavailableError(f"voice {vm.name}: the vocoder's fallback chain is empty")

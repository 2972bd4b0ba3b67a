"""What a server does once before it accepts its first request (kept free of uvicorn and wyoming)."""

from __future__ import annotations

import gc
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..runtime.synthesizer import Synthesizer


def warm_up(synth: Synthesizer, text: str = "你好。", codecs: bool = True) -> float:
    """One short stream per voice and (``codecs``) one per codec, then ``gc.freeze()``; returns the seconds it
    took. ``serve`` and ``wyoming`` both call it: neither server imports the other.

    The stream loads what the first request would otherwise pay for (the front end's dictionaries,
    the first run of each graph). The freeze moves every object alive now (those dictionaries: a
    quarter of a million objects) out of the collector's reach: a full collection walked them all,
    ~36 ms idle and over 100 ms on busy cores, holding the GIL, and so the event loop, all along."""
    import numpy as np

    from ..frontend import polyphone
    from .encode import FORMATS, encoder, encoding

    t0 = time.perf_counter()
    # The polyphone model: "你好" has no polyphone, so the stream below would not load it.
    polyphone.load()
    for voice in synth.voices():
        with synth.stream(text, voice=voice) as stream:
            for _ in stream:
                pass
    # Each codec once: the first import of FFmpeg's libraries holds the GIL for a tenth of a second,
    # which a first mp3 request would otherwise take from the event loop.
    for fmt in FORMATS if codecs else ():
        g = encoder(encoding(fmt, synth.sample_rate), synth.sample_rate)
        next(g)
        g.send(np.zeros(synth.sample_rate // 10, np.float32))
        g.send(None)
        g.close()
    gc.collect()
    gc.freeze()
    return time.perf_counter() - t0

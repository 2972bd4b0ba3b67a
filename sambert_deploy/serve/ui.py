"""The Gradio page at ``/ui`` (the ``ui`` extra): text, voice, emotion, speaker and speed in, speech out
as it is made.

A thin shell like the HTTP routes: every press of Speak is one :meth:`Synthesizer.stream` on the
server's own Synthesizer, and it holds one slot of the server's :class:`~.admission.Admission` while it
synthesizes, so the page and ``/v1/audio/speech`` share ``max_concurrent`` (ModelScope's own Gradio
demo capped itself at 2; here the cap is the server's). Gradio's queue in front of it is sized from the
same config: ``concurrency_limit`` = ``max_concurrent``, ``max_size`` = ``max_queue``.

Two audio outputs: the streamed player (Gradio re-encodes every streamed chunk to AAC for its HLS
player, so what the browser plays is lossy, ~1 frame of priming) and, once the stream ends, the whole
utterance as a 16-bit WAV, bit-equal to ``AudioChunk.int16()`` of the Python API. Chunks are handed to
Gradio as int16 WAV bytes: a float array would be scaled by its own peak, chunk by chunk
(``gradio.processing_utils.convert_to_16_bit_audio``), and the loudness would jump at every chunk.

gradio is imported only here and only when the page is mounted: the base install and ``serve`` without
the extra never import it.
"""

from __future__ import annotations

import hmac
import io
import logging
import time
import wave
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InvalidInputError, MissingExtraError, SambertDeployError
from ..runtime.synthesizer import SPEED_RANGE, SpeechOptions, Synthesizer
from .admission import Admission, ApiError, Slot

log = logging.getLogger(__name__)

UI_PATH = "/ui"
OFF_LINE = "the Gradio page at /ui is off: gradio is not installed (pip install 'sambert-deploy[ui]' to get it)"
DEFAULT_EMOTION = ""  # the dropdown's "(default)": the voice's own default emotion
TEXT = "今天天气很好，我们一起去公园散步吧。这个页面一边合成，一边播放。"
ANALYTICS_ENV = "GRADIO_ANALYTICS_ENABLED"


@dataclass(frozen=True)
class VoiceChoices:
    """What the page offers for one voice: emotions without their ``emotion_`` prefix, speakers as
    the bundle names them (the first is the voice's default)."""

    name: str
    emotions: tuple[str, ...]
    speakers: tuple[str, ...]


@dataclass(frozen=True)
class UiConfig:
    """The page's limits, taken from the server's :class:`~.app.ServeConfig` by :func:`mount_ui`."""

    max_concurrent: int = 2
    max_queue: int = 8
    max_input_chars: int = 4096
    api_keys: tuple[str, ...] = ()


def catalogue(synth: Synthesizer) -> dict[str, VoiceChoices]:
    """Every voice of ``synth`` with its emotions and speakers, read from the bundle's manifest."""
    out = {}
    for name in synth.voices():
        vm = synth.manifest.voices[name]
        out[name] = VoiceChoices(name, tuple(e.removeprefix("emotion_") for e in vm.emotions), tuple(vm.speakers))
    return out


def emotion_choices(voices: Mapping[str, VoiceChoices], voice: str) -> list[tuple[str, str]]:
    """(label, value) pairs of the emotion dropdown for ``voice``: "(default)" first."""
    return [("(default)", DEFAULT_EMOTION)] + [(e, e) for e in _voice(voices, voice).emotions]


def _voice(voices: Mapping[str, VoiceChoices], voice: str) -> VoiceChoices:
    if voice not in voices:
        raise InvalidInputError(f"voice '{voice}' does not exist; this bundle has: {', '.join(voices)}", param="voice")
    return voices[voice]


def wav_bytes(pcm: np.ndarray, sample_rate: int) -> bytes:
    """``pcm`` (int16, mono) as a complete WAV file in memory."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(np.ascontiguousarray(pcm, "<i2").tobytes())
    return buf.getvalue()


def timing_line(queued_s: float, first_s: float | None, audio_s: float, elapsed_s: float, done: bool) -> str:
    """The line under the player, as the page at / shows it: time to first audio, audio so far, RTF."""
    first = "-" if first_s is None else f"{first_s * 1e3:.0f} ms"
    line = f"first audio {first} (queued {queued_s * 1e3:.0f} ms) · audio {audio_s:.2f} s"
    if done:
        rtf = f"{elapsed_s / audio_s:.3f}" if audio_s else "-"
        line += f" · RTF {rtf} · finished at {elapsed_s * 1e3:.0f} ms"
    else:
        line += " · synthesizing..."
    return line


class Speaker:
    """The Speak button's handler, :meth:`speak`: an async generator that Gradio iterates on the
    server's event loop.

    Yields (streamed chunk as WAV bytes or None, whole WAV as (rate, int16) or None, timing line).
    Every error a user can cause is raised as ``gradio.Error`` (a message on the page, the server
    unharmed)."""

    def __init__(self, synth: Synthesizer, admission: Admission, cfg: UiConfig, error: Callable[[str], Exception]):
        self.synth, self.admission, self.cfg, self.error = synth, admission, cfg, error
        self.voices = catalogue(synth)

    def options(self, text: Any, voice: Any, emotion: Any, speaker: Any, speed: Any) -> SpeechOptions:
        """The request checked before it waits for a slot: one clear message per mistake."""
        if not isinstance(text, str) or not text.strip():
            raise InvalidInputError("text: nothing to synthesize, the text is empty", param="input")
        if len(text) > self.cfg.max_input_chars:
            raise InvalidInputError(f"text: {len(text)} characters is over the limit of {self.cfg.max_input_chars}",
                                    param="input")
        vc = _voice(self.voices, voice)
        if isinstance(speed, int | float) and not isinstance(speed, bool):
            speed = float(speed)
        # Emotion and speaker by the Synthesizer's own rule (case-insensitive, per voice), before the wait.
        inv = self.synth.manifest.voices[vc.name].inventories
        if emotion:
            inv.resolve_emotion(emotion)
        if speaker:
            inv.resolve_speaker(speaker)
        return SpeechOptions(voice=vc.name, emotion=emotion or None, speaker=speaker or None, speed=speed)

    async def speak(self, text: Any, voice: Any, emotion: Any, speaker: Any,
                    speed: Any) -> AsyncIterator[tuple[Any, Any, str]]:
        t0 = time.perf_counter()
        try:
            opts = self.options(text, voice, emotion, speaker, speed)
        except SambertDeployError as e:
            raise self.error(str(e)) from None
        adm = self.admission
        busy = adm.running >= adm.active
        yield None, None, (f"waiting for a free slot ({adm.running} streams running, {adm.waiting} waiting)..."
                           if busy else "synthesizing...")
        slot = None
        try:
            slot = await self._slot()
            queued = time.perf_counter() - t0
            rate = self.synth.sample_rate
            parts: list[np.ndarray] = []
            samples = 0
            first = None
            try:
                stream = self.synth.stream(text, options=opts)
            except SambertDeployError as e:
                raise self.error(str(e)) from None
            with stream:
                try:
                    async for chunk in stream:
                        pcm = chunk.int16()
                        if first is None:
                            first = time.perf_counter() - t0
                        parts.append(pcm)
                        samples += len(pcm)
                        yield wav_bytes(pcm, rate), None, timing_line(queued, first, samples / rate,
                                                                      time.perf_counter() - t0, False)
                except SambertDeployError as e:  # found later in the text (a bad symbol in sentence 9)
                    raise self.error(str(e)) from None
            whole = np.concatenate(parts) if parts else np.zeros(0, np.int16)
            yield None, (rate, whole), timing_line(queued, first, samples / rate, time.perf_counter() - t0, True)
        finally:
            if slot is not None:
                slot.release()

    async def _slot(self) -> Slot:
        try:
            await self.admission.acquire()
        except ApiError as e:  # 429 (the queue is full) or 503 (the server is draining)
            raise self.error(e.message) from None
        return Slot(self.admission)


def build_ui(synth: Synthesizer, admission: Admission, cfg: UiConfig) -> Any:
    """The ``gradio.Blocks`` of the page (not mounted)."""
    import os

    os.environ.setdefault(ANALYTICS_ENV, "False")  # no calls home from a server (and none can be made offline)
    import gradio as gr

    handler = Speaker(synth, admission, cfg, gr.Error)
    voices = handler.voices
    first = next(iter(voices.values()))
    lo, hi = SPEED_RANGE

    def voice_changed(voice: str) -> tuple[Any, Any]:
        try:
            vc = _voice(voices, voice)
        except SambertDeployError as e:
            raise gr.Error(str(e)) from None
        return (gr.Dropdown(choices=emotion_choices(voices, voice), value=DEFAULT_EMOTION),
                gr.Dropdown(choices=list(vc.speakers), value=vc.speakers[0] if vc.speakers else None,
                            visible=len(vc.speakers) > 1))

    with gr.Blocks(title="sambert-deploy", analytics_enabled=False) as blocks:
        gr.Markdown("## sambert-deploy: streaming speech")
        text = gr.Textbox(TEXT, label="text", lines=4, max_length=cfg.max_input_chars, elem_id="sambert-text")
        with gr.Row():
            voice = gr.Dropdown(list(voices), value=first.name, label="voice", elem_id="sambert-voice")
            # Custom values allowed: Gradio checks a value against the choices the page started with, not
            # the ones the selected voice set; the Synthesizer checks it against the voice.
            emotion = gr.Dropdown(emotion_choices(voices, first.name), value=DEFAULT_EMOTION, label="emotion",
                                  allow_custom_value=True, elem_id="sambert-emotion")
            speaker = gr.Dropdown(list(first.speakers), value=first.speakers[0] if first.speakers else None,
                                  label="speaker", allow_custom_value=True, visible=len(first.speakers) > 1,
                                  elem_id="sambert-speaker")
            speed = gr.Slider(lo, hi, value=1.0, step=0.05, label="speed", elem_id="sambert-speed")
        with gr.Row():
            speak = gr.Button("Speak", variant="primary", elem_id="sambert-speak")
            stop = gr.Button("Stop", elem_id="sambert-stop")
        streamed = gr.Audio(label="speech (streamed as it is made)", streaming=True, autoplay=True,
                            interactive=False, elem_id="sambert-stream")
        timing = gr.Markdown("ready", elem_id="sambert-timing")
        whole = gr.Audio(label="whole utterance (16-bit WAV, when the stream ends)", type="numpy", format="wav",
                         interactive=False, elem_id="sambert-wav")
        voice.change(voice_changed, voice, [emotion, speaker], api_name="voice_choices", concurrency_limit=None)
        run = speak.click(handler.speak, [text, voice, emotion, speaker, speed], [streamed, whole, timing], api_name="speak",
                          concurrency_limit=cfg.max_concurrent, concurrency_id="speak")
        stop.click(None, None, None, cancels=[run])
    blocks.queue(max_size=gradio_queue_size(cfg), default_concurrency_limit=cfg.max_concurrent)
    return blocks


def gradio_queue_size(cfg: UiConfig) -> int:
    """Gradio counts an event in its queue before it runs, so max_size 0 would refuse every press: at least 1
    (the admission slot is still the gate, and answers "server busy" past --max-queue)."""
    return max(cfg.max_queue, 1)


def _key_check(api_keys: tuple[str, ...]) -> Callable[[str, str], bool]:
    keys = tuple(k.encode("utf-8") for k in api_keys)

    def check(_user: str, password: str) -> bool:
        token, ok = password.encode("utf-8"), False
        for k in keys:  # every key compared: no early exit to time
            ok |= hmac.compare_digest(token, k)
        return ok

    return check


def mount_ui(app: Any, synth: Synthesizer, admission: Admission, cfg: UiConfig, required: bool = False) -> bool:
    """Mounts the page at ``/ui`` of the FastAPI ``app``. Without gradio: raises when ``required``,
    else logs one line saying how to get it and returns False."""
    try:
        import gradio as gr
    except ImportError:
        if required:
            raise MissingExtraError("gradio", "ui") from None
        log.info("%s", OFF_LINE)
        return False
    import shutil

    if shutil.which("ffmpeg") is None:  # Gradio encodes its streamed audio with the ffmpeg program
        log.warning("the Gradio page's streamed player needs the ffmpeg program, which is not on PATH: Speak will "
                    "fail until it is installed (Debian: apt-get install ffmpeg)")
    blocks = build_ui(synth, admission, cfg)
    # The page speaks without /v1's Authorization header: its login asks for an API key as the password.
    auth = _key_check(cfg.api_keys) if cfg.api_keys else None
    gr.mount_gradio_app(app, blocks, path=UI_PATH, auth=auth,
                        auth_message="Any user name; the password is one of the server's API keys." if auth else None,
                        footer_links=["api"], run_history=False, ssr_mode=False, mcp_server=False)
    log.info("the Gradio page is at %s (at most %d streams at once, shared with /v1/audio/speech)", UI_PATH,
             cfg.max_concurrent)
    return True


__all__ = ["UI_PATH", "Speaker", "UiConfig", "VoiceChoices", "build_ui", "catalogue", "emotion_choices", "mount_ui",
           "timing_line", "wav_bytes"]

"""``sambert-deploy``: a thin click shell over the Python API.

Every user mistake surfaces as one line on stderr and exit code 2 (no traceback); ``--debug`` shows
tracebacks for bug reports.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from .errors import SambertDeployError

log = logging.getLogger("sambert_deploy")
F = TypeVar("F", bound=Callable[..., Any])
BACKEND_CHOICES = click.Choice(["auto", "tensorrt", "cuda", "openvino", "cpu"])
GPU_MEMORY_HELP = ("GPU memory budget, e.g. 4G or 512M (default: 90% of what is free); picks the memory tier "
                   "(chunk sizes, calls in flight, vocoder on GPU or CPU) and caps the CUDA EP's arena.")
DECODER_BATCH_HELP = ("Streams of a voice whose decoder steps run as one graph call (default: the GPU memory tier's "
                      "where the acoustic model runs on a GPU, else 8; 1: each stream alone).")
VOCODER_BATCH_HELP = ("Streams of a voice whose vocoder windows run as one graph call (default: the GPU memory "
                      "tier's on the CUDA EP, else 1: no faster on CPUs; OpenVINO and TensorRT run one).")
PRECISION_CHOICES = ["auto", "fp32", "fp16", "bf16", "int8"]
PRECISION_HELP = ("Vocoder precision: auto (the fastest variant that passed its quality gate and runs on the "
                  "vocoder's backend) or one of fp32, fp16, bf16, int8 (built by sambert-deploy quantize).")


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("jieba",):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that it unwinds like Ctrl-C: every ``finally`` runs (a
    partial output file is removed, sessions close) instead of the process vanishing mid-write."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


# uvicorn catches SIGTERM itself for its graceful shutdown (and re-raises it afterwards).
_OWN_SIGTERM = frozenset({"serve"})


def handle_errors(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kw: Any) -> Any:
        import signal
        import threading

        ctx = click.get_current_context()
        previous = None
        if fn.__name__ not in _OWN_SIGTERM and threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, _raise_terminated)
        try:
            return fn(*args, **kw)
        except Terminated:
            click.echo("terminated", err=True)
            sys.exit(143)  # 128 + SIGTERM, what a shell reports for a process SIGTERM ended
        except SambertDeployError as e:
            if ctx.find_root().params.get("debug"):
                raise
            first, *rest = str(e).splitlines() or [type(e).__name__]
            click.echo(f"error: {first}", err=True)
            for line in rest[:20]:
                click.echo(f"  {line.strip()}", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.version_option(package_name="sambert-deploy")
def main(verbose: int, quiet: bool, debug: bool) -> None:
    """Export KAN-TTS Sambert + HiFiGAN voices to ONNX and stream speech from them."""
    _setup_logging(verbose, quiet)


@main.command()
@click.argument("model_dir", required=False, type=click.Path(path_type=Path))
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path), help="Bundle folder to write.")
@click.option("--voice", "voices", multiple=True, help="Voice(s) to export (default: the model's default voice).")
@click.option("--all-voices", is_flag=True, help="Export every voice in voices/voices.json.")
@click.option("--am", "am_path", type=click.Path(path_type=Path), help="Explicit AM folder or checkpoint (instead of MODEL_DIR).")
@click.option("--voc", "voc_path", type=click.Path(path_type=Path), help="Explicit vocoder folder or checkpoint.")
@click.option("--name", default="voice", show_default=True, help="Voice name for --am/--voc exports.")
@click.option("--opset", default=17, show_default=True, type=click.IntRange(17, 23))
@click.option("--force", is_flag=True, help="Overwrite an existing bundle.")
@click.option("--no-check", is_flag=True, help="Skip the parity gate (not recommended).")
@handle_errors
def export(model_dir: Path | None, out: Path, voices: tuple[str, ...], all_voices: bool, am_path: Path | None,
           voc_path: Path | None, name: str, opset: int, force: bool, no_check: bool) -> None:
    """Export MODEL_DIR (a ModelScope model directory) to an ONNX bundle and prove parity with torch."""
    from .errors import InvalidInputError
    from .export import require_export_extra

    require_export_extra()  # before importing torch: a missing extra is named, not a ModuleNotFoundError
    from .export.bundle import ExportOptions, export_model
    from .models.loading import explicit_voice

    explicit = None
    if am_path or voc_path:
        if not (am_path and voc_path) or model_dir:
            raise InvalidInputError("explicit export needs both --am and --voc and no MODEL_DIR")
        explicit = explicit_voice(am_path, voc_path, name=name)
    elif model_dir is None:
        raise InvalidInputError("give MODEL_DIR (a ModelScope model directory) or --am and --voc")
    report = export_model(model_dir, out, list(voices) or None, all_voices,
                          ExportOptions(opset=opset, force=force, check=not no_check), explicit=explicit)
    click.echo(report.summary())


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--precision", "precisions", default="fp16,bf16,int8", show_default=True,
              help="Comma-separated vocoder variants to build: fp16, bf16, int8.")
@click.option("--voice", "voices", multiple=True, help="Voice(s) to quantize (default: every voice).")
@click.option("--corpus", type=click.Path(path_type=Path),
              help="UTF-8 text, one sentence a line, spoken by the voice to calibrate and judge (default: packaged).")
@click.option("--int8-recipe", help="Named INT8 recipe: res@1-2 (the default), res@1-2+res1@3, res@1-2+res1@3-p99.99 "
                                    "(docs/quality.md).")
@click.option("--int8-keep", help="Conv roles kept FP32, comma-separated (pre, post, up, res, res1, res2, role@stage, "
                                  "*@stage), replacing the recipe's (its calibration is kept).")
@click.option("--int8-symmetric", is_flag=True,
              help="INT8 with symmetric int8 activations (zero point 0), the only kind TensorRT builds engines from.")
@click.option("--no-reference", is_flag=True, help="Skip judging the recipe on the real pretrained vocoder.")
@handle_errors
def quantize(bundle: Path, precisions: str, voices: tuple[str, ...], corpus: Path | None, int8_recipe: str | None,
             int8_keep: str | None, int8_symmetric: bool, no_reference: bool) -> None:
    """Build reduced-precision vocoders in BUNDLE, each judged against FP32 and recorded with its quality.

    A variant that fails its gate is recorded as failed and never used (sambert-deploy info says why).
    """
    try:
        from .calibration.bundle import QuantizeOptions, quantize_bundle
        from .calibration.precision import DEFAULT_INT8
        from .calibration.precision import int8_recipe as named_recipe
    except ImportError as e:
        from .errors import MissingExtraError

        raise MissingExtraError(e.name or "onnx", "quantize") from None
    recipe = DEFAULT_INT8 if int8_recipe is None else named_recipe(int8_recipe)
    if int8_keep is not None:
        recipe = replace(recipe, keep_roles=tuple(r.strip() for r in int8_keep.split(",") if r.strip()), name="")
    if int8_symmetric:
        recipe = replace(recipe, symmetric=True)
    opts = QuantizeOptions(precisions=tuple(p.strip() for p in precisions.split(",") if p.strip()), voices=voices,
                           corpus=corpus, recipe=recipe, reference=not no_reference)
    results = quantize_bundle(bundle, opts)
    for name, res in results.items():
        for var in res.variants.values():
            click.echo(f"{name} {var.precision}: {_gate_line(var.quality)}")


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("text", required=False)
@click.option("--symbols-file", help="File of ttsfrd symbol lines ('<n>\\t<units>'), or - for stdin.")
@click.option("-o", "--output", "out", required=True, help="Output .wav, or - for raw s16le PCM on stdout.")
@click.option("--voice", help="Voice name (default: the bundle's first).")
@click.option("--emotion", help="Emotion, e.g. happy (the *_emo voices); any case.")
@click.option("--speaker", help="Speaker token (default: the voice's first).")
@click.option("--lexicon", type=click.Path(path_type=Path), help="User lexicon file (word -> pinyin) for the front end.")
@click.option("--backend", type=BACKEND_CHOICES, default="auto", show_default=True,
              help="cpu is ONNX Runtime's CPU provider; auto puts the vocoder on OpenVINO when installed.")
@click.option("--strict", is_flag=True, help="Fail instead of falling back to another backend.")
@click.option("--am-backend", type=BACKEND_CHOICES, help="Backend of the acoustic model only.")
@click.option("--voc-backend", type=BACKEND_CHOICES, help="Backend of the vocoder only.")
@click.option("--precision", default="auto", show_default=True, help=PRECISION_HELP)
@click.option("--threads", default=0, type=click.IntRange(0, 256), help="CPU thread budget (0: every CPU this process may use).")
@click.option("--chunk", default=None, type=click.IntRange(1, 100000), help="Vocoder chunk in mel frames.")
@click.option("--first-chunk", default=None, type=click.IntRange(1, 100000), help="First vocoder chunk of a sentence.")
@click.option("--max-units", default=300, show_default=True, type=click.IntRange(0, 10**9),
              help="Split longer sentences at prosodic breaks (0: never).")
@click.option("--speed", default=1.0, show_default=True, type=click.FloatRange(0.25, 4.0),
              help="Speaking rate (2.0 twice as fast).")
@click.option("--max-gpu-memory", help=GPU_MEMORY_HELP)
@click.option("--gpu-streams", type=click.IntRange(1, 256), help="Graph calls in flight on the GPU (default: the tier's).")
@click.option("--decoder-batch", type=click.IntRange(1, 4096), help=DECODER_BATCH_HELP)
@click.option("--vocoder-batch", type=click.IntRange(1, 4096), help=VOCODER_BATCH_HELP)
@click.option("--timestamps", "timestamps", type=click.Path(path_type=Path),
              help="Also write each syllable's/word's exact time: out.json (every mark), out.srt or out.vtt "
                   "(caption lines); the format is the suffix's.")
@handle_errors
def synth(bundle: Path, text: str | None, symbols_file: str | None, out: str, voice: str | None, emotion: str | None,
          speaker: str | None, lexicon: Path | None, backend: str, strict: bool, am_backend: str | None,
          voc_backend: str | None, precision: str, threads: int, chunk: int | None, first_chunk: int | None,
          max_units: int, speed: float, max_gpu_memory: str | None, gpu_streams: int | None,
          decoder_batch: int | None = None, vocoder_batch: int | None = None,
          timestamps: Path | None = None) -> None:
    """Synthesize TEXT (or '-' for stdin, or --symbols-file) with BUNDLE into a WAV file or stdout.

    Stdin is read as it arrives: each sentence is spoken as soon as it is complete. Text that
    begins with '-' goes after '--':  sambert-deploy synth BUNDLE -o out.wav -- "-5度"
    """
    from .errors import InvalidInputError
    from .runtime.manifest import read_manifest
    from .runtime.sinks import write_stream
    from .runtime.synthesizer import SpeechOptions, StreamOptions, Synthesizer

    if (text is None) == (symbols_file is None):
        raise InvalidInputError("give TEXT (or - for stdin) or --symbols-file, not both")
    if (text == "-" or symbols_file == "-") and sys.stdin.isatty():
        log.info("reading text from the terminal; end it with Ctrl-D")
    source: Any = None
    if symbols_file == "-":
        source = _stdin_lines()
    elif symbols_file is not None:
        try:
            source = Path(symbols_file).read_text("utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise InvalidInputError(f"cannot read --symbols-file {symbols_file}: {e}") from None
    elif text == "-":
        text = None
        source = _stdin_lines()
    fed: list[str] = []  # the text as fed, for the captions' own words (marks hold offsets into it)
    if timestamps is not None:
        from .runtime.captions import check_timestamps_path

        check_timestamps_path(timestamps)
        if text is None and symbols_file is None:
            source = _recorded(source, fed)
    # No chunk options given: None, so a GPU's memory tier may choose them.
    given = {k: v for k, v in (("vocoder_chunk", chunk), ("first_chunk", first_chunk)) if v}
    stream_opts = StreamOptions(max_units=max_units or None, **given) if given or max_units != 300 else None
    call = SpeechOptions(voice=voice, emotion=emotion, speaker=speaker, speed=speed, lexicon=lexicon)
    # What the manifest alone can refuse is refused before seconds of loading sessions and dictionaries.
    manifest = read_manifest(bundle)
    _check_request(manifest, text, voice, emotion, speaker, out)
    with Synthesizer(manifest, voice=voice, backend=backend, strict=strict, threads=threads, options=stream_opts,
                     am_backend=am_backend, voc_backend=voc_backend, precision=precision,
                     max_gpu_memory=max_gpu_memory, gpu_streams=gpu_streams, decoder_batch=decoder_batch,
                     vocoder_batch=vocoder_batch) as syn:
        is_text = symbols_file is None
        log.info("loaded in %.2f s (sessions%s)", syn.load(voice, text=is_text),
                 " and front-end dictionaries" if is_text else "")
        if is_text:
            stream = syn.stream(text if text is not None else source, options=call)
        else:
            stream = syn.stream(symbols=source, options=call)
        marks: list[Any] = []
        with stream:
            try:
                n = write_stream(_marks_of(stream, marks), out, syn.sample_rate,
                                 progress=sys.stderr.isatty() and out != "-")
            except BrokenPipeError:
                _quiet_broken_pipe()
            st = stream.info
        if timestamps is not None:
            from .runtime.captions import write_timestamps

            said = text if text is not None else ("".join(fed) if symbols_file is None else None)
            write_timestamps(timestamps, marks, syn.sample_rate, n, said)
        audio_s = n / syn.sample_rate
        am_b, voc_b = syn.backends()[st.voice]
        log.info("%d sentence(s), %d units -> %.2f s audio in %.2f s (RTF %.3f, first audio %.0f ms) on %s/%s "
                 "(vocoder %s) -> %s", st.sentences, st.units, audio_s, st.elapsed_s, st.elapsed_s / max(audio_s, 1e-9),
                 (st.first_audio_s or 0) * 1e3, am_b, voc_b, syn.precisions().get(st.voice, "?"), out)


def _check_request(manifest: Any, text: str | None, voice: str | None, emotion: str | None, speaker: str | None,
                   out: str) -> None:
    """The request's mistakes the manifest can tell (the same rules the Synthesizer applies later)."""
    from .errors import InvalidInputError
    from .runtime.sinks import check_output

    if text is not None and not text.strip():
        raise InvalidInputError("nothing to synthesize: the text is empty", param="input")
    inv = manifest.voice(voice).inventories
    if emotion is not None:
        inv.resolve_emotion(emotion)
    if speaker is not None:
        inv.resolve_speaker(speaker)
    if out != "-":
        check_output(out)


def _marks_of(chunks: Any, into: list[Any]) -> Any:
    """The chunks passed through, their timestamps gathered into ``into``."""
    for c in chunks:
        into.extend(c.marks)
        yield c


def _recorded(pieces: Any, into: list[str]) -> Any:
    for piece in pieces:
        into.append(piece)
        yield piece


def _stdin_lines() -> Any:
    """Stdin as it arrives, line by line (iterating a text stream returns each line when it is complete)."""
    return iter(sys.stdin.readline, "")


def _quiet_broken_pipe() -> NoReturn:
    """The reader of our stdout went away (``| head``): stop quietly, like any Unix filter. Python would
    otherwise print a second BrokenPipeError when it flushes stdout at exit."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    sys.exit(141)  # 128 + SIGPIPE, what a shell reports for a filter killed by the broken pipe


@main.command()
@click.argument("text")
@click.option("--emotion", help="Emotion of the phone units (e.g. happy).")
@click.option("--speaker", default="F7", show_default=True, help="Speaker token written into every unit.")
@click.option("--lexicon", type=click.Path(path_type=Path), help="User lexicon file (word -> pinyin) overriding readings.")
@click.option("--max-units", default=0, type=click.IntRange(0, 10**9), help="Split longer sentences (0: never).")
@handle_errors
def symbols(text: str, emotion: str | None, speaker: str, lexicon: Path | None, max_units: int) -> None:
    """Print the ttsfrd symbol lines ('<n>\\t<units>') for TEXT; with '-', each stdin line is one input
    and <n> is its line number."""
    from .frontend import FrontEnd, FrontEndOptions

    fe = FrontEnd(FrontEndOptions(emotion=emotion or "emotion_neutral", speaker=speaker,
                                  lexicon_path=str(lexicon) if lexicon else None,
                                  max_units_per_sentence=max_units or None))
    out = sys.stdout
    lines = fe.lines_from_inputs(sys.stdin) if text == "-" else fe.iter_lines(text)
    try:
        for line in lines:
            out.write(line + "\n")
            out.flush()  # each line as soon as it is ready, also into a pipe
    except BrokenPipeError:
        _quiet_broken_pipe()



def server_runtime_options(f: F) -> F:
    """The Synthesizer's options both servers take (HTTP `serve`, `wyoming`), in one place."""
    for option in reversed((
            click.option("--backend", type=BACKEND_CHOICES, default="auto", show_default=True),
            click.option("--precision", default="auto", show_default=True, help=PRECISION_HELP),
            click.option("--threads", default=0, type=click.IntRange(0, 256),
                         help="CPU budget (0: every CPU this process may use)."),
            click.option("--max-gpu-memory", help=GPU_MEMORY_HELP),
            click.option("--decoder-batch", type=click.IntRange(1, 4096), help=DECODER_BATCH_HELP),
            click.option("--vocoder-batch", type=click.IntRange(1, 4096), help=VOCODER_BATCH_HELP))):
        f = option(f)
    return f

@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind (loopback by default; any other address without an API key is warned about).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--max-concurrent", default=2, show_default=True, type=click.IntRange(1, 1024),
              help="Streams synthesizing at once.")
@click.option("--max-queue", default=8, show_default=True, type=click.IntRange(0, 100000),
              help="Requests waiting for a slot; more get 429 with Retry-After.")
@click.option("--max-input-chars", default=4096, show_default=True, type=click.IntRange(1, 10**7))
@click.option("--api-key-file", type=click.Path(path_type=Path),
              help="File with one API key per line: require 'Authorization: Bearer KEY' on /v1/* (recommended).")
@click.option("--api-key", "api_key",
              help="One API key on the command line (visible to other users in ps and /proc/PID/cmdline: prefer "
                   "--api-key-file).")
@click.option("--send-timeout", default=30.0, show_default=True, type=click.FloatRange(0.1, 3600),
              help="Seconds a stream may wait for its client to accept bytes before it is cut and its slot freed.")
@click.option("--park-after", default=0.5, show_default=True, type=click.FloatRange(0, 3600),
              help="Seconds a stream's send may block (its client not reading) before it lends its slot to the "
                   "next in line until the client reads again (0: never).")
@click.option("--header-timeout", default=10.0, show_default=True, type=click.FloatRange(0.1, 3600),
              help="Seconds a connection gets to send its request headers.")
@click.option("--body-timeout", default=10.0, show_default=True, type=click.FloatRange(0.1, 3600),
              help="Seconds a request gets to send its body.")
@click.option("--max-connections", default=256, show_default=True, type=click.IntRange(1, 100000),
              help="Open connections at most; past it the longest idle one is closed.")
@click.option("--keep-alive", default=5, show_default=True, type=click.IntRange(1, 3600),
              help="Seconds an idle keep-alive connection stays open.")
@click.option("--shutdown-grace", default=30.0, show_default=True, type=click.FloatRange(0, 86400),
              help="On SIGTERM/SIGINT: seconds running streams get to finish (new requests get 503), then they "
                   "are cut; exit 0.")
@server_runtime_options
@click.option("--ui/--no-ui", default=None,
              help="The Gradio page at /ui (default: on when the ui extra is installed; --ui requires it).")
@handle_errors
def serve(bundle: Path, host: str, port: int, max_concurrent: int, max_queue: int, max_input_chars: int,
          api_key_file: Path | None, api_key: str | None, send_timeout: float, park_after: float, header_timeout: float,
          body_timeout: float, max_connections: int, keep_alive: int, shutdown_grace: float, backend: str,
          precision: str, threads: int, max_gpu_memory: str | None, decoder_batch: int | None = None,
          vocoder_batch: int | None = None, ui: bool | None = None) -> None:
    """Serve BUNDLE over HTTP: OpenAI's /v1/audio/speech (streamed), voices, models, health, metrics and a
    browser page at /. SIGTERM or Ctrl-C drains running streams (--shutdown-grace), then exits 0."""
    from .errors import InvalidInputError, MissingExtraError
    from .runtime.synthesizer import Synthesizer

    try:
        from .serve.app import ServeConfig, create_app
        from .serve.run import bind, exposure_warning, run
        from .serve.warmup import warm_up
    except ImportError as e:
        raise MissingExtraError(e.name or "fastapi", "serve") from None
    # Cheap checks before the load: an empty key would silently serve without auth.
    keys: list[str] = []
    if api_key is not None:
        if not api_key.strip():
            raise InvalidInputError("--api-key is empty: give a key (better: --api-key-file FILE), or leave the "
                                    "option out to serve without auth", param="api_key")
        keys.append(api_key.strip())
    if api_key_file is not None:
        try:
            from_file = [k.strip() for k in api_key_file.read_text("utf-8").splitlines() if k.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise InvalidInputError(f"cannot read --api-key-file {api_key_file}: {e}") from None
        if not from_file:
            raise InvalidInputError(f"--api-key-file {api_key_file} holds no key: write one key per line, or leave "
                                    "the option out to serve without auth", param="api_key_file")
        keys += from_file
    warning = exposure_warning(host, keys)
    if warning:
        log.warning("%s", warning)
    sock = bind(host, port)  # a port in use is one line and exit 2, before seconds of loading
    try:
        with Synthesizer(bundle, backend=backend, threads=threads, precision=precision,
                         max_gpu_memory=max_gpu_memory, decoder_batch=decoder_batch,
                         vocoder_batch=vocoder_batch) as syn:
            loaded = syn.load("*")
            log.info("loaded %d voice(s) in %.2f s; backends %s; vocoder precision %s", len(syn.voices()), loaded,
                     syn.backends(), syn.precisions())
            log.info("warmed up in %.2f s (a short stream per voice and codec; start-up objects frozen for the GC)",
                     warm_up(syn))
            cfg = ServeConfig(max_concurrent=max_concurrent, max_queue=max_queue, max_input_chars=max_input_chars,
                              api_keys=tuple(keys), load_seconds=loaded, send_timeout_s=send_timeout,
                              park_after_s=park_after,
                              header_timeout_s=header_timeout, body_timeout_s=body_timeout,
                              max_connections=max_connections, keep_alive_s=keep_alive, shutdown_grace_s=shutdown_grace)
            run(create_app(syn, cfg, ui=ui), cfg, sock)
    finally:
        sock.close()


@main.command("wyoming")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--uri", default="tcp://127.0.0.1:10200", show_default=True,
              help="Where to listen: tcp://HOST:PORT (tcp://0.0.0.0:10200 for Home Assistant on another machine) "
                   "or unix://PATH.")
@click.option("--voice", help="Voice for requests that name none (default: the bundle's default).")
@click.option("--max-concurrent", default=2, show_default=True, type=click.IntRange(1, 1024),
              help="Streams synthesizing at once.")
@click.option("--max-queue", default=8, show_default=True, type=click.IntRange(0, 100000),
              help="Requests waiting for a slot; more get an error event (server_busy).")
@click.option("--max-input-chars", default=4096, show_default=True, type=click.IntRange(1, 10**7))
@click.option("--send-timeout", default=30.0, show_default=True, type=click.FloatRange(0.1, 3600),
              help="Seconds a client may accept no audio before its stream is cut and its slot freed.")
@click.option("--shutdown-grace", default=30.0, show_default=True, type=click.FloatRange(0, 86400),
              help="On SIGTERM/SIGINT: seconds running streams get to finish (new requests get an error), then "
                   "they are cut; exit 0.")
@server_runtime_options
@handle_errors
def wyoming_server(bundle: Path, uri: str, voice: str | None, max_concurrent: int, max_queue: int,
                   max_input_chars: int, send_timeout: float, shutdown_grace: float, backend: str, precision: str,
                   threads: int, max_gpu_memory: str | None, decoder_batch: int | None = None,
                   vocoder_batch: int | None = None) -> None:
    """Serve BUNDLE to Home Assistant over the Wyoming protocol (add it under Settings -> Devices & services
    -> Add integration -> Wyoming Protocol, with this host and port). Audio streams as it is synthesized;
    each emotion is also a voice VOICE:EMOTION. SIGTERM or Ctrl-C drains running streams, then exits 0."""
    from .errors import MissingExtraError
    from .runtime.manifest import read_manifest
    from .runtime.synthesizer import Synthesizer

    try:
        from .serve.warmup import warm_up
        from .serve.wyoming import WyomingConfig, WyomingService, bind_uri, is_loopback, run
    except ImportError as e:
        raise MissingExtraError(e.name or "wyoming", "wyoming") from None
    manifest = read_manifest(bundle)
    manifest.voice(voice)  # an unknown --voice is refused before the load
    sock = bind_uri(uri)  # a bad URI or a port in use is one line and exit 2, before seconds of loading
    try:
        if not is_loopback(uri):
            log.warning("Wyoming has no authentication: anyone who can reach %s can use this server", uri)
        with Synthesizer(manifest, voice=voice, backend=backend, threads=threads, precision=precision,
                         max_gpu_memory=max_gpu_memory, decoder_batch=decoder_batch,
                         vocoder_batch=vocoder_batch) as syn:
            loaded = syn.load("*")
            log.info("loaded %d voice(s) in %.2f s; backends %s; vocoder precision %s", len(syn.voices()), loaded,
                     syn.backends(), syn.precisions())
            log.info("warmed up in %.2f s (a short stream per voice; start-up objects frozen for the GC)",
                     warm_up(syn, codecs=False))
            cfg = WyomingConfig(max_concurrent=max_concurrent, max_queue=max_queue, max_input_chars=max_input_chars,
                                send_timeout_s=send_timeout, shutdown_grace_s=shutdown_grace)
            log.info("Wyoming server on %s (voices: %s)", uri, ", ".join(syn.voices()))
            run(WyomingService(syn, cfg), sock)
    finally:
        sock.close()


@main.command("ui", params=[p for p in serve.params if p.name != "ui"])
@handle_errors
def ui_command(**options: Any) -> None:
    """Serve BUNDLE with the Gradio page at /ui (pip install 'sambert-deploy[ui]'): the same server as
    `serve --ui` (API, page at /, guards, admission, drain), which the page shares; takes serve's options."""
    import importlib.util

    from .errors import MissingExtraError

    try:  # before the port is bound and the bundle loaded
        found = importlib.util.find_spec("gradio") is not None
    except ImportError:
        found = False
    if not found:
        raise MissingExtraError("gradio", "ui")
    log.info("the Gradio page will be at http://%s:%s/ui", options["host"], options["port"])
    click.get_current_context().invoke(serve, ui=True, **options)


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--precision", default="fp16", show_default=True,
              help="fp32, fp16 or int8: the ONNX the strongly typed engine is built from (int8 needs "
                   "quantize --int8-symmetric).")
@click.option("--voice", "voices", multiple=True, help="Voice(s) to build for (default: every voice).")
@click.option("--timing-cache", type=click.Path(path_type=Path),
              help="TensorRT timing cache to reuse and update (default: BUNDLE/engines/timing-sm<cc>.cache).")
@click.option("--workspace", default=1024, show_default=True, type=click.IntRange(16, 1 << 20),
              help="Builder workspace in MB.")
@click.option("--optimization-level", default=3, show_default=True, type=click.IntRange(0, 5))
@click.option("--chunk", type=click.IntRange(1, 100000),
              help="Vocoder chunk the profile is tuned for (default: the memory tier's on this GPU).")
@click.option("--max-frames", type=click.IntRange(1, 10**6),
              help="Also cover whole-utterance vocoding up to this many mel frames (default: streaming windows only).")
@handle_errors
def engines(bundle: Path, precision: str, voices: tuple[str, ...], timing_cache: Path | None, workspace: int,
            optimization_level: int, chunk: int | None, max_frames: int | None) -> None:
    """Build TensorRT engines for BUNDLE's vocoder (strongly typed: TensorRT 10 and 11, Jetson included).

    Engines go to BUNDLE/engines/<voice>/ with a sidecar the runtime checks before loading one.
    """
    from .engines.build import EngineOptions, build_engines, describe

    opts = EngineOptions(precision=precision, voices=voices, timing_cache=timing_cache, workspace_mb=workspace,
                         optimization_level=optimization_level, vocoder_chunk=chunk, max_frames=max_frames)
    for line in describe(build_engines(bundle, opts)):
        click.echo(line)


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@handle_errors
def info(bundle: Path) -> None:
    """Describe a bundle: voices, emotions, speakers, graphs, provenance."""
    from .runtime.backends import engine_reports, probe_backends
    from .runtime.manifest import read_manifest
    from .runtime.placement import PlacementRequest, host_facts, plan_placement
    from .runtime.voices import open_voice

    m = read_manifest(bundle)
    # What `auto` runs here is the Synthesizer's own placement, opened: a listed provider that cannot
    # open (no driver, an engine built for another GPU) shows as the fallback the runtime takes.
    request = PlacementRequest()
    placement = plan_placement(m, request, host_facts(request))
    click.echo(f"bundle {bundle}: schema {m.schema_version}, {m.model_type}, {m.sample_rate} Hz")
    for v in m.voices.values():
        click.echo(f"  voice {v.name}: vocoder {'causal' if v.vocoder.causal else 'non-causal'} "
                   f"(context {v.vocoder.context_left}/{v.vocoder.context_right} frames), "
                   f"speakers {', '.join(v.speakers)}")
        click.echo(f"    emotions: {', '.join(e.removeprefix('emotion_') for e in v.emotions)}")
        click.echo(f"    graphs: {', '.join(f'{g.name} ({g.precision})' for g in v.graphs.values())}")
        click.echo(f"    parity gate: {_gate_line(v.gate)}")
        if not v.variants:
            click.echo("    vocoder variants: none (sambert-deploy quantize BUNDLE --precision fp16,bf16,int8)")
        for var in v.variants.values():
            click.echo(f"    vocoder {var.precision}: {var.graph.file} on {'/'.join(var.backends)}; "
                       + (f"DISABLED: {var.damage}" if var.damage else _gate_line(var.quality)))
        reports = engine_reports(m, v)
        if not reports:
            click.echo(f"    TensorRT engines: none (sambert-deploy engines BUNDLE --voice {v.name} --precision fp16)")
        for r in reports:
            click.echo(f"    TensorRT engine {r.plan.name} ({r.built}): {r.status}")
        try:
            opened = open_voice(m, placement, v.name)
        except SambertDeployError as e:
            click.echo(f"    here, auto cannot open this voice: {e}")
            continue
        opened.close()
        o = opened.opened
        click.echo(f"    here, auto runs the acoustic model on {o.am_backend} (fp32) and the vocoder on {o.voc_backend} "
                   f"({o.precision}); decoder steps of up to {o.decoder_batch} streams per call, vocoder windows "
                   f"of up to {o.vocoder_batch}"
                   + "".join(f"\n      fallback: {f}" for f in o.fallbacks))
    # What actually opens, not what onnxruntime lists: a listed CUDA provider may lack a driver.
    probe = probe_backends(m.graph_path(m.voice(None), "dur_step"))
    for kind, problem in probe.items():
        click.echo(f"backend {kind}: " + ("opens" if problem is None else f"listed but unusable: {problem}"))


def _gate_line(record: Any) -> str:
    """A voice's parity gate record or a variant's quality record, one line (:func:`.gates.describe`)."""
    from .gates import describe

    return describe(record)


@main.command("triton-repo")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path),
              help="Model repository folder to write.")
@click.option("--model-name", default="sambert", show_default=True, help="The model's name in the repository.")
@click.option("--instances", default=1, show_default=True, type=click.IntRange(1, 256),
              help="Model instances per server, each a process loading the bundle once.")
@click.option("--max-concurrent", default=4, show_default=True, type=click.IntRange(1, 1024),
              help="Streams one instance synthesizes at once; more wait in order.")
@click.option("--backend", type=BACKEND_CHOICES, default="auto", show_default=True)
@click.option("--precision", default="auto", show_default=True, help=PRECISION_HELP)
@click.option("--threads", default=0, type=click.IntRange(0, 256),
              help="CPU budget of each instance (0: every CPU it may use).")
@click.option("--max-input-chars", default=4096, show_default=True, type=click.IntRange(1, 10**7))
@click.option("--bundle-path", help="The bundle's path as the server sees it (in a container); default: BUNDLE.")
@click.option("--copy-bundle", is_flag=True, help="Copy the bundle into the repository (self-contained).")
@click.option("--execution-env", help="EXECUTION_ENV_PATH: the model's Python environment, a packed archive or "
                                      "folder as the server sees it (docs/triton.md).")
@click.option("--allow-numpy2", is_flag=True, help="Let the model start under numpy 2 (only for a Triton release "
                                                  "whose Python backend handles it; 24.10's does not).")
@click.option("--force", is_flag=True, help="Replace a repository this command wrote before.")
@handle_errors
def triton_repo(bundle: Path, out: Path, model_name: str, instances: int, max_concurrent: int, backend: str,
                precision: str, threads: int, max_input_chars: int, bundle_path: str | None, copy_bundle: bool,
                execution_env: str | None, allow_numpy2: bool, force: bool) -> None:
    """Write a Triton model repository serving BUNDLE: a decoupled Python-backend model streaming audio chunks."""
    from .serve.triton.repo import RepoOptions, write_repo

    opts = RepoOptions(model_name=model_name, instances=instances, max_concurrent=max_concurrent, backend=backend,
                       precision=precision, threads=threads, max_input_chars=max_input_chars,
                       bundle_path=bundle_path, copy_bundle=copy_bundle, execution_env=execution_env,
                       allow_numpy2=allow_numpy2, force=force)
    click.echo(write_repo(bundle, out, opts).summary())


@main.command("triton-client")
@click.argument("url")
@click.argument("text")
@click.option("-o", "--output", "out", required=True, help="Output .wav, or - for raw s16le PCM on stdout.")
@click.option("--voice", help="Voice name (default: the model's).")
@click.option("--emotion", help="Emotion, e.g. happy; any case.")
@click.option("--speaker", help="Speaker token.")
@click.option("--speed", type=click.FloatRange(0.25, 4.0), help="Speaking rate (2.0 twice as fast).")
@click.option("--symbols", is_flag=True, help="TEXT is ttsfrd symbol lines.")
@click.option("--model", "model_name", default="sambert", show_default=True, help="Model name on the server.")
@click.option("--timeout", "timeout_s", default=120.0, show_default=True, type=click.FloatRange(0.1),
              help="Seconds to wait for the next chunk before cancelling.")
@handle_errors
def triton_client(url: str, text: str, out: str, voice: str | None, emotion: str | None, speaker: str | None,
                  speed: float | None, symbols: bool, model_name: str, timeout_s: float) -> None:
    """Stream TEXT from the Triton server at URL (host:port, gRPC) into a WAV file or stdout."""
    import itertools

    from .runtime.sinks import write_stream
    from .serve.triton.client import ClientOptions, stream_speech

    opts = ClientOptions(voice=voice, emotion=emotion, speaker=speaker, speed=speed, symbols=symbols,
                         model_name=model_name, timeout_s=timeout_s)
    with stream_speech(url, text, opts) as stream:
        first = next(stream, None)  # the WAV header needs the sample rate, which the first chunk carries
        if first is None:
            raise SambertDeployError("the server sent no audio for this text")
        try:
            n = write_stream(itertools.chain([first], stream), out, first.sample_rate)
        except BrokenPipeError:
            _quiet_broken_pipe()
        audio_s = n / first.sample_rate
        elapsed = stream.arrivals_s[-1] if stream.arrivals_s else 0.0
        log.info("%d chunk(s) -> %.2f s audio in %.2f s over gRPC (RTF %.3f, first chunk %.0f ms) -> %s",
                 len(stream.arrivals_s), audio_s, elapsed, elapsed / max(audio_s, 1e-9), stream.arrivals_s[0] * 1e3,
                 out)


if __name__ == "__main__":  # pragma: no cover
    main()

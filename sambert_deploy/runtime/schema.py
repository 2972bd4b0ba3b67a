"""The manifest's shape, checked once at load before anything is built from it (torch-free).

Every value the runtime sizes arrays, opens files or picks graphs with is checked here for its type and
range, so a hand-edited or damaged manifest fails at load with one :class:`~..errors.BundleError`
naming the field path (``voices.demo.vocoder.context_left``) rather than as a traceback (or an HTTP
500) in the middle of a stream. Paths are confined to the bundle: a manifest is data from wherever the
bundle came from, and must not make the runtime open ``/etc/passwd``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from ..errors import BundleError

if TYPE_CHECKING:
    from .backends import InputMeta
    from .manifest import VoiceManifest

# The ONNX element types a graph of this toolkit declares (TensorSpec.dtype).
DTYPES = frozenset({"float32", "float16", "bfloat16", "int64", "int32", "int8", "uint8", "bool"})
BACKEND_NAMES = frozenset({"cpu", "cuda", "tensorrt", "openvino"})
AM_GRAPH_NAMES = ("encoder", "dur_step", "memory_kv", "decoder_step", "postnet_fsmn", "postnet_rnn")
INVENTORY_STREAMS = ("sy", "tone", "syllable_flag", "word_segment", "emo_category", "speaker")
# Sizes the numpy glue allocates: positive; the postnet's context frames may be zero.
ACOUSTIC_SIZES = ("outputs_per_step", "num_mels", "embedding_dim", "projection_units", "d_mem", "dur_lstm_layers",
                  "dur_lstm_units", "decoder_layers", "decoder_heads", "decoder_head_dim", "postnet_lstm_units",
                  "postnet_memory_units")
ACOUSTIC_CONTEXT = ("postnet_left", "postnet_right")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# A voice name becomes a folder name (engines/<voice>/): a plain name, nothing a path could climb with.
_VOICE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_MAX_SIZE = 1 << 20  # far above any real size, far below what makes numpy allocate terabytes
MAX_SAMPLE_RATE = 384_000


class Where:
    """A field path inside the manifest, for error messages (``voices.demo.graphs.vocoder.inputs[0]``)."""

    def __init__(self, manifest: Path, path: str = ""):
        self.manifest, self.path = manifest, path

    def __truediv__(self, key: str | int) -> Where:
        if isinstance(key, int):
            return Where(self.manifest, f"{self.path}[{key}]")
        return Where(self.manifest, f"{self.path}.{key}" if self.path else key)

    def fail(self, problem: str, fix: str = "re-export the bundle") -> NoReturn:
        raise BundleError(f"{self.manifest}: {self.path or 'the manifest'} {problem}; {fix}")


def obj(d: Any, at: Where) -> dict[str, Any]:
    if not isinstance(d, dict):
        at.fail(f"must be an object, not {_kind(d)}")
    return d


def field(d: dict[str, Any], key: str, at: Where) -> Any:
    if key not in d:
        (at / key).fail("is missing")
    return d[key]


def integer(v: Any, at: Where, lo: int = 1, hi: int = _MAX_SIZE) -> int:
    # bool is an int in Python; `causal: true` where a count belongs is a damaged manifest, not 1.
    if isinstance(v, bool) or not isinstance(v, int):
        at.fail(f"must be an integer, not {_kind(v)}")
    if not lo <= v <= hi:
        at.fail(f"is {v}; it must be between {lo} and {hi}")
    return v


def number(v: Any, at: Where, lo: float = -math.inf, hi: float = math.inf) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        at.fail(f"must be a number, not {_kind(v)}")
    if not math.isfinite(v) or not lo <= v <= hi:
        at.fail(f"is {v}; it must be a finite number between {lo:g} and {hi:g}")
    return float(v)


def text(v: Any, at: Where, nonempty: bool = True) -> str:
    if not isinstance(v, str):
        at.fail(f"must be a string, not {_kind(v)}")
    if nonempty and not v.strip():
        at.fail("is empty")
    return v


def boolean(v: Any, at: Where) -> bool:
    if not isinstance(v, bool):
        at.fail(f"must be true or false, not {_kind(v)}")
    return v


def strings(v: Any, at: Where, nonempty: bool = True, unique: bool = True) -> list[str]:
    if not isinstance(v, list):
        at.fail(f"must be a list of strings, not {_kind(v)}")
    if nonempty and not v:
        at.fail("is empty")
    for i, s in enumerate(v):
        text(s, at / i)
    if unique and len(set(v)) != len(v):
        at.fail("has duplicate entries")
    return v


def one_of(v: Any, choices: Iterable[str], at: Where) -> str:
    options = sorted(choices)
    if not isinstance(v, str) or v not in options:
        at.fail(f"is {v!r}; it must be one of {', '.join(options)}")
    return v


def inside(root: Path, rel: Any, at: Where, must_exist: bool = False) -> Path:
    """``root / rel`` when it stays inside ``root`` (no absolute path, no ``..``, no symlink leading out)."""
    rel = text(rel, at)
    p = Path(rel)
    if p.is_absolute() or rel.startswith(("/", "\\")) or ".." in p.parts or "\\" in rel or "\x00" in rel:
        at.fail(f"is {rel!r}: a path inside the bundle must be relative, without '..'")
    full = root / p
    try:
        real, real_root = full.resolve(), root.resolve()
    except (OSError, RuntimeError) as e:  # a symlink loop
        at.fail(f"is {rel!r}, which cannot be resolved ({e})")
    if full.exists() or full.is_symlink():
        if real != real_root and real_root not in real.parents:
            at.fail(f"is {rel!r}, which leads outside the bundle (to {real})")
    elif must_exist:
        at.fail(f"is {rel!r}, which does not exist in the bundle")
    return full


def check_manifest(d: dict[str, Any], root: Path, manifest: Path) -> None:
    """Type and range of every field the runtime uses; raises :class:`BundleError` naming the first bad one."""
    top = Where(manifest)
    sr = integer(field(d, "sample_rate", top), top / "sample_rate", 1000, MAX_SAMPLE_RATE)
    mel = obj(field(d, "mel", top), top / "mel")
    at = top / "mel"
    for key in ("n_fft", "hop_length", "win_length", "n_mels"):
        integer(field(mel, key, at), at / key)
    fmin = number(field(mel, "fmin", at), at / "fmin", 0.0, sr / 2)
    number(field(mel, "fmax", at), at / "fmax", fmin, sr / 2)
    for key in ("min_level_db", "ref_level_db"):
        if key in mel:
            number(mel[key], at / key)
    voices = obj(field(d, "voices", top), top / "voices")
    if not voices:
        (top / "voices").fail("is empty")
    for name, v in voices.items():
        if not _VOICE_NAME.match(name):
            (top / "voices").fail(f"has the voice name {name!r}: letters, digits, '_', '.', '-' only")
        _voice(obj(v, top / "voices" / name), top / "voices" / name, root, mel)
    one_of(field(d, "default_voice", top), voices, top / "default_voice")
    obj(d.get("provenance", {}), top / "provenance")


def _voice(v: dict[str, Any], at: Where, root: Path, mel: dict[str, Any]) -> None:
    folder = inside(root, field(v, "folder", at), at / "folder")
    ac = obj(field(v, "acoustic", at), at / "acoustic")
    for key in ACOUSTIC_SIZES:
        integer(field(ac, key, at / "acoustic"), at / "acoustic" / key)
    for key in ACOUSTIC_CONTEXT:
        integer(field(ac, key, at / "acoustic"), at / "acoustic" / key, 0)
    if "band_rule" in ac:
        text(ac["band_rule"], at / "acoustic" / "band_rule", nonempty=False)
    extra = set(ac) - {*ACOUSTIC_SIZES, *ACOUSTIC_CONTEXT, "band_rule"}
    if extra:
        (at / "acoustic").fail(f"has unknown field(s) {', '.join(sorted(extra))}")
    voc = obj(field(v, "vocoder", at), at / "vocoder")
    boolean(field(voc, "causal", at / "vocoder"), at / "vocoder" / "causal")
    for key, lo in (("hop", 1), ("context_left", 0), ("context_right", 0), ("in_channels", 1)):
        integer(field(voc, key, at / "vocoder"), at / "vocoder" / key, lo)
    extra = set(voc) - {"causal", "hop", "context_left", "context_right", "in_channels"}
    if extra:
        (at / "vocoder").fail(f"has unknown field(s) {', '.join(sorted(extra))}")
    # One mel spectrogram flows from the acoustic model to the vocoder: its sizes are one number each.
    if voc["in_channels"] != ac["num_mels"]:
        (at / "vocoder" / "in_channels").fail(f"is {voc['in_channels']} but acoustic.num_mels is {ac['num_mels']}")
    if mel["n_mels"] != ac["num_mels"]:
        (at / "acoustic" / "num_mels").fail(f"is {ac['num_mels']} but mel.n_mels is {mel['n_mels']}")
    if voc["hop"] != mel["hop_length"]:
        (at / "vocoder" / "hop").fail(f"is {voc['hop']} but mel.hop_length is {mel['hop_length']}")
    inv = obj(field(v, "inventories", at), at / "inventories")
    for key in INVENTORY_STREAMS:
        strings(field(inv, key, at / "inventories"), at / "inventories" / key)
    if "has_mask" in v:
        boolean(v["has_mask"], at / "has_mask")
    for key in ("speakers", "emotions"):
        if key in v:
            strings(v[key], at / key, nonempty=False)
    graphs = obj(field(v, "graphs", at), at / "graphs")
    for g in (*AM_GRAPH_NAMES, "vocoder"):
        graph(obj(field(graphs, g, at / "graphs"), at / "graphs" / g), at / "graphs" / g, folder)
    obj(v.get("provenance", {}), at / "provenance")
    if v.get("gate") is not None:
        obj(v["gate"], at / "gate")
    variants = obj(v.get("variants", {}), at / "variants")
    for p, var in variants.items():
        _variant(obj(var, at / "variants" / p), p, at / "variants" / p, folder)


def graph(g: dict[str, Any], at: Where, folder: Path) -> None:
    inside(folder, field(g, "file", at), at / "file")
    sha = field(g, "sha256", at)
    if not isinstance(sha, str) or not _SHA256.match(sha):
        (at / "sha256").fail(f"is {sha!r}, not a sha256 (64 lowercase hex digits)")
    if "precision" in g:
        one_of(g["precision"], ("fp32", "fp16", "bf16", "int8"), at / "precision")
    for key in ("inputs", "outputs"):
        specs = field(g, key, at)
        if not isinstance(specs, list) or not specs:
            (at / key).fail(f"must be a non-empty list of tensors, not {_kind(specs)}")
        for i, t in enumerate(specs):
            _tensor(obj(t, at / key / i), at / key / i)


def _tensor(t: dict[str, Any], at: Where) -> None:
    text(field(t, "name", at), at / "name")
    one_of(field(t, "dtype", at), DTYPES, at / "dtype")
    axes = field(t, "axes", at)
    if not isinstance(axes, list) or len(axes) > 8:
        (at / "axes").fail(f"must be a list of up to 8 axes, not {_kind(axes)}")
    for i, a in enumerate(axes):
        if isinstance(a, str):
            text(a, at / "axes" / i)
        else:
            integer(a, at / "axes" / i, 0)


def _variant(var: dict[str, Any], key: str, at: Where, folder: Path) -> None:
    fix = "re-run sambert-deploy quantize"
    if key not in ("fp16", "bf16", "int8"):
        at.fail("is not a vocoder variant (fp16, bf16 or int8)", fix)
    if field(var, "precision", at) != key:
        (at / "precision").fail(f"is {var['precision']!r}, not {key!r}", fix)
    g = obj(field(var, "graph", at), at / "graph")
    text(field(g, "name", at / "graph"), at / "graph" / "name")
    graph(g, at / "graph", folder)
    backends = field(var, "backends", at)
    if not isinstance(backends, list) or not backends:
        (at / "backends").fail(f"must be a non-empty list of backends, not {_kind(backends)}", fix)
    for i, b in enumerate(backends):
        one_of(b, BACKEND_NAMES, at / "backends" / i)
    obj(field(var, "quality", at), at / "quality")
    obj(var.get("recipe", {}), at / "recipe")


def parsed(at: Where, build: Callable[[], Any]) -> Any:
    """``build()`` (a record's from_json) with its parse errors as a BundleError naming ``at``."""
    try:
        return build()
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError, IndexError) as e:
        at.fail(f"is damaged ({type(e).__name__}: {e})")


def _kind(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return f"{str(v).lower()} (a boolean)"
    if isinstance(v, str):
        return f"the string {v[:40]!r}"
    if isinstance(v, int | float):
        return f"the number {v}"
    return f"a {type(v).__name__}"


# Symbolic axis names of the graphs' declared inputs -> the acoustic size the runtime feeds there; and
# the dur_step state's leading axis (a literal in the declaration), its LSTM layers.
_AXIS_SIZES = {"num_mels": "num_mels", "embedding_dim": "embedding_dim", "dur_lstm_units": "dur_lstm_units",
               "memory_units": "d_mem", "layers": "decoder_layers", "heads": "decoder_heads",
               "head_dim": "decoder_head_dim", "postnet_lstm_units": "postnet_lstm_units",
               "postnet_memory_units": "postnet_memory_units"}
_FIXED_SIZES = {("dur_step", "h", 0): "dur_lstm_layers", ("dur_step", "c", 0): "dur_lstm_layers"}


def check_opened(voice: VoiceManifest, manifest: Path, opened: Mapping[str, Mapping[str, InputMeta]]) -> None:
    """The manifest's sizes against the input shapes of the graphs as opened (``opened``: graph name ->
    the session's inputs). A size of the right type and range can still contradict the graphs (a hand
    edit, a manifest from another export); caught here, at load, it is a BundleError naming the field
    instead of a numpy error inside the first stream."""
    at = Where(manifest, f"voices.{voice.name}")
    sizes = {k: getattr(voice.acoustic, k) for k in ACOUSTIC_SIZES}
    for g, inputs in opened.items():
        spec = voice.graphs.get(g)
        if spec is None:
            continue
        for t in spec.inputs:
            meta = inputs.get(t.name)
            if meta is None:
                at.fail(f"declares graph {g} with an input '{t.name}' its ONNX file does not have")
            if len(t.axes) != len(meta.shape):
                (at / "graphs" / g / "inputs").fail(f"declare '{t.name}' with {len(t.axes)} axes; {spec.file} has "
                                                    f"{len(meta.shape)}")
            for i, (axis, dim) in enumerate(zip(t.axes, meta.shape, strict=True)):
                key = _FIXED_SIZES.get((g, t.name, i)) or (_AXIS_SIZES.get(axis) if isinstance(axis, str) else None)
                if not isinstance(dim, int) or isinstance(dim, bool):
                    continue  # a dynamic axis: nothing to compare
                if key is not None and sizes[key] != dim:
                    (at / "acoustic" / key).fail(f"is {sizes[key]} but {spec.file}'s input '{t.name}' has {dim} "
                                                 f"on axis {i}")
                if isinstance(axis, int) and axis != dim:
                    (at / "graphs" / g / "inputs").fail(f"declare '{t.name}' axis {i} as {axis}; {spec.file} has {dim}")

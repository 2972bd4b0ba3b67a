"""Reading released models: ModelScope directories, configs and checkpoints -> torch modules.

Layout (SPEC §a): ``configuration.json``, ``voices/voices.json``,
``voices/<voice>/{am,voc}/{config.yaml,ckpt/checkpoint_<N>.pth}``. Checkpoints are read with
``torch.load(weights_only=True)`` so no pickled code is ever executed.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, ConfigError, ModelDirectoryError, UnsupportedModelError
from ..symbols import Inventories
from .hifigan import Generator, HifiGanConfig, fold_weight_norm
from .sambert import KanTtsSAMBERT, SambertConfig

log = logging.getLogger(__name__)

_CKPT_RE = re.compile(r"^checkpoint.*\.pth$")


@dataclass(frozen=True)
class VoiceFiles:
    """Where one voice's files are. ``has_mask`` comes from configuration.json (default True)."""

    name: str
    am_config: Path
    am_ckpt: Path
    voc_config: Path
    voc_ckpt: Path
    has_mask: bool = True
    sample_rate: int = 16000


def pick_checkpoint(ckpt_dir: Path) -> Path:
    """Highest-numbered ``checkpoint_<N>.pth``, chosen the way ModelScope does (SPEC §a).

    A file counts if it starts with ``checkpoint``, ends with ``.pth`` and its name is longer than 15
    characters; N is the integer after the last ``_`` and before the first ``.``.
    """
    if not ckpt_dir.is_dir():
        raise ModelDirectoryError(f"checkpoint folder {ckpt_dir} does not exist; expected checkpoint_<N>.pth files there")
    best: tuple[int, Path] | None = None
    for p in ckpt_dir.iterdir():
        name = p.name
        if not (_CKPT_RE.match(name) and len(name) > 15):
            continue
        try:
            n = int(name.split(".")[0].split("_")[-1])
        except ValueError:
            continue
        if best is None or n > best[0]:
            best = (n, p)
    if best is None:
        raise ModelDirectoryError(f"no checkpoint_<N>.pth in {ckpt_dir}; put the voice's checkpoint there")
    return best[1]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise ModelDirectoryError(f"{path} is missing") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}); fix or re-download the file") from None


def read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text("utf-8"))
    except FileNotFoundError:
        raise ModelDirectoryError(f"{path} is missing") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a YAML mapping, got {type(data).__name__}")
    return data


def list_voices(model_dir: str | Path) -> list[str]:
    """Voice names of a ModelScope model directory, default voice first."""
    root = Path(model_dir)
    if not root.is_dir():
        raise ModelDirectoryError(f"{root} is not a directory; pass a ModelScope model directory "
                                  "(with configuration.json and voices/voices.json)")
    vj = root / "voices" / "voices.json"
    if not vj.is_file():
        raise ModelDirectoryError(f"{root} is not a ModelScope Sambert model directory: voices/voices.json is missing")
    data = _read_json(vj)
    voices = data.get("voices") if isinstance(data, dict) else None
    if not isinstance(voices, list) or not voices or not all(isinstance(v, str) for v in voices):
        raise ConfigError(f"{vj}: field 'voices' must be a non-empty list of voice names")
    return list(voices)


def voice_files(model_dir: str | Path, voice: str | None = None) -> VoiceFiles:
    """Resolve one voice of a ModelScope model directory (default: the first in voices.json)."""
    root = Path(model_dir)
    voices = list_voices(root)
    name = voice or voices[0]
    if name not in voices:
        raise ModelDirectoryError(f"unknown voice '{name}'; voices in {root / 'voices/voices.json'}: {', '.join(voices)}")
    has_mask, sample_rate = True, 16000
    cfg_path = root / "configuration.json"
    if cfg_path.is_file():
        cfg = _read_json(cfg_path)
        model = cfg.get("model", {}) if isinstance(cfg, dict) else {}
        am = model.get("am", {}) if isinstance(model, dict) else {}
        lu = am.get("linguistic_unit", {}) if isinstance(am, dict) else {}
        if isinstance(lu, dict) and "has_mask" in lu:
            has_mask = bool(lu["has_mask"])
        sample_rate = int(model.get("sample_rate", 16000)) if isinstance(model, dict) else 16000
    vdir = root / "voices" / name
    for sub in ("am", "voc"):
        if not (vdir / sub / "config.yaml").is_file():
            raise ModelDirectoryError(f"{vdir / sub / 'config.yaml'} is missing; voice '{name}' is incomplete")
    return VoiceFiles(name=name, am_config=vdir / "am" / "config.yaml", am_ckpt=pick_checkpoint(vdir / "am" / "ckpt"),
                      voc_config=vdir / "voc" / "config.yaml", voc_ckpt=pick_checkpoint(vdir / "voc" / "ckpt"),
                      has_mask=has_mask, sample_rate=sample_rate)


def explicit_voice(am_dir: str | Path, voc_dir: str | Path, name: str = "voice", has_mask: bool = True) -> VoiceFiles:
    """A voice from explicit folders holding ``config.yaml`` and ``ckpt/`` (or a checkpoint path)."""
    def resolve(p: Path) -> tuple[Path, Path]:
        if p.is_file():
            return p.parent.parent / "config.yaml", p
        if not p.is_dir():
            raise ModelDirectoryError(f"{p} does not exist; pass a folder with config.yaml and ckpt/ or a .pth file")
        return p / "config.yaml", pick_checkpoint(p / "ckpt")

    amc, amk = resolve(Path(am_dir))
    vc, vk = resolve(Path(voc_dir))
    for c in (amc, vc):
        if not c.is_file():
            raise ModelDirectoryError(f"{c} is missing; each model folder needs its config.yaml")
    return VoiceFiles(name=name, am_config=amc, am_ckpt=amk, voc_config=vc, voc_ckpt=vk, has_mask=has_mask)


def _model_params(cfg: dict[str, Any], path: Path, key: str) -> dict[str, Any]:
    model = cfg.get("Model")
    if not isinstance(model, dict) or key not in model:
        found = ", ".join(model) if isinstance(model, dict) else "nothing"
        raise UnsupportedModelError(f"{path}: expected Model.{key} (found {found}); only KAN-TTS Sambert + HiFiGAN "
                                    "voices are supported")
    params = model[key].get("params") if isinstance(model[key], dict) else None
    if not isinstance(params, dict):
        raise ConfigError(f"{path}: Model.{key}.params is missing or not a mapping")
    return params


def am_config(path: Path, has_mask: bool = True) -> tuple[SambertConfig, Inventories, dict[str, Any]]:
    """Parse ``am/config.yaml`` -> (config, inventories, raw yaml)."""
    raw = read_yaml(path)
    model_type = raw.get("model_type", "sambert")
    if model_type != "sambert":
        raise UnsupportedModelError(f"{path}: model_type '{model_type}' is not supported; only 'sambert' is")
    params = _model_params(raw, path, "KanTtsSAMBERT")
    for flag, what in (("NSF", "NSF (neural source-filter) voices"), ("SE", "personal (speaker-embedding) voices"),
                       ("FP", "fine-grained prosody voices"), ("MAS", "MAS-trained voices")):
        if params.get(flag):
            raise UnsupportedModelError(f"{path}: Model.KanTtsSAMBERT.params.{flag} is true; {what} are not supported")
    lu = raw.get("linguistic_unit") or {}
    spk = str(lu.get("speaker_list", "F7"))
    speakers = [s.strip() for s in spk.split(",") if s.strip()]
    if not speakers:
        raise ConfigError(f"{path}: linguistic_unit.speaker_list is empty; list the voice's speakers, e.g. 'F7'")
    inv = Inventories.build(speakers, has_mask=has_mask)
    sizes = {"sy": len(inv.sy), "tone": len(inv.tone), "syllable_flag": len(inv.syllable_flag),
             "word_segment": len(inv.word_segment), "emotion": len(inv.emo_category), "speaker": len(inv.speaker)}
    try:
        cfg = SambertConfig.from_params(params, sizes)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{path}: Model.KanTtsSAMBERT.params has an unusable value ({e})") from None
    if cfg.encoder_num_units % cfg.encoder_num_heads or cfg.decoder_num_units % cfg.decoder_num_heads:
        raise ConfigError(f"{path}: encoder/decoder_num_units must be divisible by the number of heads")
    return cfg, inv, raw


def voc_config(path: Path) -> tuple[HifiGanConfig, dict[str, Any]]:
    raw = read_yaml(path)
    params = _model_params(raw, path, "Generator")
    if params.get("nsf_params"):
        raise UnsupportedModelError(f"{path}: Model.Generator.params.nsf_params is set; NSF vocoders are not supported")
    try:
        cfg = HifiGanConfig.from_params(params)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{path}: Model.Generator.params has an unusable value ({e})") from None
    return cfg, raw


def checkpoint_error_message(path: Path, error: BaseException) -> str:
    """Why ``torch.load`` failed, and the fix: torch reports a truncated download, a missing permission,
    exhausted memory and a pickle that needs code through assorted exception types and texts."""
    text = str(error).strip()
    first = text.splitlines()[0] if text else type(error).__name__
    low = text.lower()
    if isinstance(error, PermissionError):
        return f"{path} cannot be read ({first}); check its permissions"
    if isinstance(error, IsADirectoryError):
        return f"{path} is a directory; give the checkpoint file (ckpt/checkpoint_<N>.pth)"
    if isinstance(error, MemoryError) or "can't allocate memory" in low or "out of memory" in low:
        return f"{path}: out of memory while loading it ({first}); free memory and retry"
    damaged = (f"{path} is damaged or truncated ({type(error).__name__}: {first}); download or copy the "
               "checkpoint again")
    if isinstance(error, EOFError) or any(k in low for k in _DAMAGE_WORDS):
        return damaged
    # Only a pickle naming a class or function outside weights_only's allow-list needs code; any other
    # unpickling failure (an unknown opcode, an empty stack, an OSError from the zip reader) is garbage
    # where a pickle was expected.
    if any(k in low for k in ("unsupported global", "unsupported class", "global ")):
        return (f"{path} cannot be loaded safely with weights_only=True ({type(error).__name__}: {first}); it needs "
                "arbitrary pickled code. Re-save it as a plain state dict from a trusted environment")
    return damaged


# What torch (its zip reader, its unpickler) says when the bytes themselves are wrong.
_DAMAGE_WORDS = ("zip archive", "central directory", "unexpected eof", "ran out of input", "truncated",
                 "invalid load key", "corrupt", "pytorchstreamreader failed", "unsupported operand",
                 "invalid argument", "pop from empty", "magic number")


def archive_problem(path: Path) -> str | None:
    """Why ``path`` cannot be an intact ``torch.save`` file, judged from its bytes; None when it may be.

    torch.save writes a zip archive (every member with a CRC-32, which ``torch.load`` does not check:
    a flipped byte in a tensor loads silently) or, before torch 1.6, a bare pickle (protocol 2+,
    first byte 0x80)."""
    import zipfile
    import zlib

    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return None  # torch.load reports it, with the reason
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as z:
                # torch.save stores members uncompressed; any other method is a damaged header (and
                # one zipfile cannot decode would stop testzip without naming the member).
                odd = next((i for i in z.infolist() if i.compress_type != zipfile.ZIP_STORED), None)
                if odd is not None:
                    return f"the zip member {odd.filename} claims compression method {odd.compress_type}, which torch.save never writes"
                bad = z.testzip()
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as e:
            return f"its zip archive is unreadable ({type(e).__name__}: {e})"
        return f"the zip member {bad} fails its CRC-32 check" if bad else None
    if not head.startswith(b"\x80"):
        return "it is neither a zip archive nor a pickle, the two forms torch.save writes"
    return None


def load_checkpoint(path: Path) -> dict[str, Any]:
    """``torch.load(weights_only=True)``: refuses any checkpoint that would execute pickled code, and
    names a damaged one as damaged (:func:`archive_problem`)."""
    if path.is_file():
        problem = archive_problem(path)
        if problem:
            raise CheckpointError(f"{path} is damaged or truncated: {problem}; download or copy the checkpoint again")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelDirectoryError(f"{path} is missing") from None
    except Exception as e:  # unpickling errors come in many types
        raise CheckpointError(checkpoint_error_message(path, e)) from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, got {type(ckpt).__name__}")
    return ckpt


_FIELD_HINTS = {
    "sy_emb": "embedding_dim or the sy inventory (has_mask in configuration.json)",
    "tone_emb": "embedding_dim or the tone inventory (has_mask)",
    "syllable_flag_emb": "embedding_dim or has_mask", "ws_emb": "embedding_dim or has_mask",
    "spk_tokenizer": "linguistic_unit.speaker_list (number of speakers) or speaker_units",
    "emo_tokenizer": "emotion_units or has_mask",
    "ling_enc": "encoder_num_layers / encoder_num_units / encoder_num_heads / encoder_ffn_inner_dim / embedding_dim",
    "ling_proj": "encoder_projection_units",
    "pitch_predictor": "predictor_* fields", "energy_predictor": "predictor_* fields",
    "duration_predictor": "dur_pred_prenet_units / dur_pred_lstm_units",
    "mel_dec": "decoder_* fields, outputs_per_step or num_mels", "mel_postnet": "postnet_* fields or num_mels",
    "conv_pre": "in_channels / channels / kernel_size", "transpose_upsamples": "upsample_scales / upsample_kernal_sizes / causal",
    "repeat_upsamples": "channels / kernel_size", "conv_blocks": "resblock_kernel_sizes / resblock_dilations",
    "conv_post": "out_channels / kernel_size",
}


def _hint(key: str) -> str:
    for part, hint in _FIELD_HINTS.items():
        if part in key:
            return hint
    return "the model config"


def load_state(module: torch.nn.Module, state: dict[str, Any], path: Path, config_path: Path) -> None:
    """Strict load with messages that name the key, both shapes and the config field that disagrees."""
    own = module.state_dict()
    for k, v in state.items():
        if k in own and hasattr(v, "shape") and tuple(v.shape) != tuple(own[k].shape):
            raise CheckpointError(
                f"{path}: tensor '{k}' has shape {tuple(v.shape)} but {config_path} builds {tuple(own[k].shape)}; "
                f"check {_hint(k)} in {config_path}")
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensor(s) e.g. '{missing[0]}'")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} tensor(s) e.g. '{unexpected[0]}'")
        raise CheckpointError(f"{path} does not match the network built from {config_path}: {'; '.join(parts)}. "
                              "Is it the right checkpoint for this config (am vs voc, other model variant)?")
    module.load_state_dict(state, strict=True)


def load_sambert(cfg_path: Path, ckpt_path: Path, has_mask: bool = True) -> tuple[KanTtsSAMBERT, Inventories]:
    cfg, inv, _ = am_config(cfg_path, has_mask)
    ckpt = load_checkpoint(ckpt_path)
    state = ckpt.get("model", ckpt)
    if not isinstance(state, dict) or "generator" in state:
        raise CheckpointError(f"{ckpt_path} is not a Sambert checkpoint (no ckpt['model'] state dict); "
                              "is this the vocoder's checkpoint?")
    model = KanTtsSAMBERT(cfg)
    load_state(model, state, ckpt_path, cfg_path)
    return model.eval(), inv


def load_hifigan(cfg_path: Path, ckpt_path: Path, fold: bool = True) -> Generator:
    cfg, _ = voc_config(cfg_path)
    ckpt = load_checkpoint(ckpt_path)
    model_part = ckpt.get("model", ckpt)
    state = model_part.get("generator") if isinstance(model_part, dict) else None
    if not isinstance(state, dict):
        raise CheckpointError(f"{ckpt_path} has no ckpt['model']['generator'] state dict; is this the AM checkpoint?")
    gen = Generator(cfg)
    load_state(gen, state, ckpt_path, cfg_path)
    if fold:
        fold_weight_norm(gen)
    return gen.eval()

"""ModelScope directory reading and the typed errors for each bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from sambert_deploy.errors import (
    CheckpointError,
    ConfigError,
    ModelDirectoryError,
    SambertDeployError,
    UnsupportedModelError,
)
from sambert_deploy.models.loading import (
    explicit_voice,
    list_voices,
    load_hifigan,
    load_sambert,
    voice_files,
)
from sambert_deploy.symbols import Inventories

from .conftest import TINY, make_modelscope_dir


@pytest.fixture
def msdir(tmp_path: Path) -> Path:
    return make_modelscope_dir(tmp_path / "model", TINY)


def test_loads_by_voice_name_and_picks_highest_checkpoint(msdir: Path) -> None:
    assert list_voices(msdir) == ["zhibei_emo", "zhiyan_emo"]
    # checkpoint_0 is garbage: only the highest N may be read.
    for sub in ("am", "voc"):
        (msdir / "voices/zhiyan_emo" / sub / "ckpt/checkpoint_0.pth").write_bytes(b"not a checkpoint")
    vf = voice_files(msdir, "zhiyan_emo")
    assert vf.am_ckpt.name == "checkpoint_12.pth" and vf.voc_ckpt.name == "checkpoint_12.pth"
    am, inv = load_sambert(vf.am_config, vf.am_ckpt, vf.has_mask)
    assert inv.speakers == ("F7", "M7")
    load_hifigan(vf.voc_config, vf.voc_ckpt)
    assert voice_files(msdir).name == "zhibei_emo"  # default: first in voices.json


def test_checkpoint_ordering_is_numeric(msdir: Path) -> None:
    ck = msdir / "voices/zhibei_emo/am/ckpt"
    shutil.copy(ck / "checkpoint_0.pth", ck / "checkpoint_9.pth")
    shutil.copy(ck / "checkpoint_0.pth", ck / "checkpoint_100.pth")
    (ck / "notes.txt").write_text("x")
    assert voice_files(msdir, "zhibei_emo").am_ckpt.name == "checkpoint_100.pth"


def test_inventories_match_fixture_listing(fixset: Path) -> None:
    import json

    ref = json.loads((fixset / "inventories.json").read_text())
    speakers = [s for s in ref["speaker"] if s not in ("_", "~", "@[MASK]")]
    inv = Inventories.build(speakers)
    assert inv.to_json() == ref


def test_has_mask_false_shrinks_tables(tmp_path: Path) -> None:
    inv = Inventories.build(["F7"], has_mask=False)
    assert inv.sizes() == {"sy": 146, "tone": 9, "syllable_flag": 7, "word_segment": 7, "emo_category": 35,
                           "speaker": 3}
    d = make_modelscope_dir(tmp_path / "m", TINY, has_mask=False)
    vf = voice_files(d)
    assert vf.has_mask is False
    # The fixture checkpoint has the masked sizes, so the mismatch names the key, shapes and field.
    with pytest.raises(CheckpointError, match=r"sy_emb.weight.*\(147, 24\).*\(146, 24\).*has_mask"):
        load_sambert(vf.am_config, vf.am_ckpt, vf.has_mask)


def test_not_a_model_dir(tmp_path: Path) -> None:
    with pytest.raises(ModelDirectoryError, match="is not a directory"):
        list_voices(tmp_path / "nope")
    with pytest.raises(ModelDirectoryError, match="voices/voices.json is missing"):
        list_voices(tmp_path)


def test_unknown_voice_lists_valid(msdir: Path) -> None:
    with pytest.raises(ModelDirectoryError, match="unknown voice 'zhida'.*zhibei_emo, zhiyan_emo"):
        voice_files(msdir, "zhida")


def test_missing_files(msdir: Path) -> None:
    shutil.rmtree(msdir / "voices/zhibei_emo/voc/ckpt")
    with pytest.raises(ModelDirectoryError, match="checkpoint folder .* does not exist"):
        voice_files(msdir, "zhibei_emo")
    (msdir / "voices/zhiyan_emo/am/config.yaml").unlink()
    with pytest.raises(ModelDirectoryError, match="config.yaml is missing"):
        voice_files(msdir, "zhiyan_emo")
    for p in (msdir / "voices/zhibei_emo/am/ckpt").iterdir():
        p.unlink()
    with pytest.raises(ModelDirectoryError, match="no checkpoint_<N>.pth"):
        voice_files(msdir, "zhibei_emo")


def test_bad_voices_json(msdir: Path) -> None:
    (msdir / "voices/voices.json").write_text('{"voices": []}')
    with pytest.raises(ConfigError, match="'voices' must be a non-empty list"):
        list_voices(msdir)
    (msdir / "voices/voices.json").write_text("{oops")
    with pytest.raises(ConfigError, match="not valid JSON"):
        list_voices(msdir)


def test_shape_mismatch_names_key_shapes_and_field(tmp_path: Path) -> None:
    d = make_modelscope_dir(tmp_path / "m", TINY)
    cfg = d / "voices/zhibei_emo/am/config.yaml"
    cfg.write_text(cfg.read_text().replace("speaker_list: 'F7,M7'", "speaker_list: 'F7,M7,F8'"))
    vf = voice_files(d)
    with pytest.raises(CheckpointError) as e:
        load_sambert(vf.am_config, vf.am_ckpt)
    msg = str(e.value)
    assert "spk_tokenizer.weight" in msg and "(5, 8)" in msg and "(6, 8)" in msg and "speaker_list" in msg


def test_vocoder_variant_mismatch(tmp_path: Path) -> None:
    d = make_modelscope_dir(tmp_path / "m", TINY)
    cfg = d / "voices/zhibei_emo/voc/config.yaml"
    cfg.write_text(cfg.read_text().replace("upsample_kernal_sizes: [20, 10, 4, 4]", "upsample_kernal_sizes: [20, 11, 4, 4]"))
    vf = voice_files(d)
    with pytest.raises(CheckpointError, match=r"transpose_upsamples.1.1.deconv.weight_v.*upsample_kernal_sizes"):
        load_hifigan(vf.voc_config, vf.voc_ckpt)


def test_am_and_voc_swapped(tmp_path: Path) -> None:
    d = make_modelscope_dir(tmp_path / "m", TINY)
    vf = voice_files(d)
    with pytest.raises(CheckpointError, match="is this the vocoder's checkpoint"):
        load_sambert(vf.am_config, vf.voc_ckpt)
    with pytest.raises(CheckpointError, match="is this the AM checkpoint"):
        load_hifigan(vf.voc_config, vf.am_ckpt)


def test_pickled_code_is_refused(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):  # pragma: no cover - never executed by the loader
            return (print, ("pwned",))

    p = tmp_path / "ckpt" / "checkpoint_1.pth"
    p.parent.mkdir()
    torch.save({"model": Evil()}, p)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_sambert(TINY / "am/config.yaml", p)


def test_damaged_checkpoint_is_named_as_such(tmp_path: Path) -> None:
    """A truncated download is not "pickled code": the message says what happened and the fix."""
    p = tmp_path / "checkpoint_1.pth"
    p.write_bytes((TINY / "am/ckpt/checkpoint_0.pth").read_bytes()[:4000])
    with pytest.raises(CheckpointError, match="damaged or truncated.*download or copy the checkpoint again"):
        load_sambert(TINY / "am/config.yaml", p)


@pytest.mark.parametrize(("flag", "words"), [("NSF", "NSF"), ("SE", "personal")])
def test_unsupported_am_variants(tmp_path: Path, flag: str, words: str) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text((TINY / "am/config.yaml").read_text().replace("MAS: false", f"MAS: false\n      {flag}: true"))
    with pytest.raises(UnsupportedModelError, match=words):
        load_sambert(cfg, TINY / "am/ckpt/checkpoint_0.pth")


def test_unsupported_model_type_and_nsf_vocoder(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text((TINY / "am/config.yaml").read_text().replace("model_type: sambert", "model_type: fastspeech"))
    with pytest.raises(UnsupportedModelError, match="model_type 'fastspeech'"):
        load_sambert(cfg, TINY / "am/ckpt/checkpoint_0.pth")
    vcfg = tmp_path / "voc.yaml"
    vcfg.write_text((TINY / "voc_causal/config.yaml").read_text().replace(
        "upsample_scales:", "nsf_params: {nb_harmonics: 7, sampling_rate: 16000}\n      upsample_scales:"))
    with pytest.raises(UnsupportedModelError, match="NSF"):
        load_hifigan(vcfg, TINY / "voc_causal/ckpt/checkpoint_0.pth")


def test_explicit_paths() -> None:
    vf = explicit_voice(TINY / "am", TINY / "voc_noncausal")
    assert vf.am_ckpt.name == "checkpoint_0.pth"
    vf2 = explicit_voice(TINY / "am/ckpt/checkpoint_0.pth", TINY / "voc_causal/ckpt/checkpoint_0.pth")
    assert vf2.am_config == TINY / "am/config.yaml"
    with pytest.raises(ModelDirectoryError, match="does not exist"):
        explicit_voice(TINY / "nope", TINY / "voc_causal")


def test_all_errors_share_one_base() -> None:
    for cls in (CheckpointError, ConfigError, ModelDirectoryError, UnsupportedModelError):
        assert issubclass(cls, SambertDeployError)


def test_weight_normed_layer_without_weights_is_a_checkpoint_error() -> None:
    from sambert_deploy.models.hifigan import Conv1d

    conv = Conv1d(2, 3, 3)
    conv.weight_g = None
    with pytest.raises(CheckpointError, match="weight_g"):
        conv.effective_weight()

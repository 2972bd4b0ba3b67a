"""The torch rebuild reproduces every tensor of the reference oracle (fixtures README), both sets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sambert_deploy.models.loading import load_hifigan, load_sambert
from sambert_deploy.symbols import Unit, encode_units, parse_units

from .conftest import AM_KEYS, SEQS, fixture_set

TOL = 1e-5


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _run(root: Path, seq: str):
    am, inv = load_sambert(root / "am/config.yaml", root / "am/ckpt/checkpoint_0.pth")
    z = np.load(root / f"{seq}.npz")
    enc = encode_units(parse_units(str(z["symbol_sequence"])), inv)
    return am, z, enc, am(torch.from_numpy(enc.ling)[None], torch.from_numpy(enc.emotion)[None],
                          torch.from_numpy(enc.speaker)[None])


@pytest.mark.parametrize("seq", SEQS)
@pytest.mark.parametrize("set_name", ["tiny", pytest.param("full", marks=pytest.mark.slow)])
def test_am_every_tensor(set_name: str, seq: str) -> None:
    root = fixture_set(set_name)
    _, z, enc, out = _run(root, seq)
    # The encoder reproduces the reference's id streams (the trailing "~" removed).
    for stream, got in (("sy", enc.ling[:, 0]), ("tone", enc.ling[:, 1]), ("syllable_flag", enc.ling[:, 2]),
                        ("word_segment", enc.ling[:, 3]), ("emotion", enc.emotion), ("speaker", enc.speaker)):
        np.testing.assert_array_equal(got, z[f"encoded_{stream}"][:-1], err_msg=stream)
    np.testing.assert_array_equal(enc.ling, z["inputs_ling"][0])
    errs = {}
    for key, ours in AM_KEYS.items():
        got = out[ours].numpy()
        assert got.shape == z[key].shape, (key, got.shape, z[key].shape)
        errs[key] = float(np.abs(got - z[key]).max()) if got.size else 0.0
    assert max(errs.values()) <= TOL, errs
    np.testing.assert_array_equal(out["_durations_rounded"].numpy(), z["durations_rounded"])
    assert out["x_band_width"] == int(z["x_band_width"])
    assert out["h_band_width"] == int(z["h_band_width"])
    assert int(out["LR_length_rounded"][0]) == int(np.asarray(z["LR_length_rounded"]).reshape(-1)[0])
    valid = int(out["LR_length_rounded"][0])
    np.testing.assert_allclose(out["postnet_outputs"][0, :valid].numpy(), z["mel"], atol=TOL, rtol=0)


@pytest.mark.parametrize("variant", ["causal", "noncausal"])
@pytest.mark.parametrize("set_name", ["tiny", pytest.param("full", marks=pytest.mark.slow)])
def test_vocoder_wavs(set_name: str, variant: str) -> None:
    root = fixture_set(set_name)
    gen = load_hifigan(root / f"voc_{variant}/config.yaml", root / f"voc_{variant}/ckpt/checkpoint_0.pth")
    for name in (*SEQS, "io_voc_probe"):
        z = np.load(root / f"{name}.npz")
        mel = torch.from_numpy(z["mel"]) if "mel" in z.files else None
        assert mel is not None, f"{name} has no mel"
        with torch.no_grad():
            wav = gen(mel.T[None])[0, 0].numpy()
        ref = z[f"wav_voc_{variant}"]
        assert wav.shape == ref.shape
        assert float(np.abs(wav - ref).max()) <= TOL, name


def test_am_single_unit_and_longer_than_max_len() -> None:
    root = fixture_set("tiny")
    am, inv = load_sambert(root / "am/config.yaml", root / "am/ckpt/checkpoint_0.pth")
    one = encode_units([Unit("n_c", "tone2", "s_begin", "word_begin", "emotion_neutral", "F7")], inv)
    out = am(torch.from_numpy(one.ling)[None], torch.from_numpy(one.emotion)[None], torch.from_numpy(one.speaker)[None])
    valid = int(out["LR_length_rounded"][0])
    assert out["postnet_outputs"].shape[1] % 3 == 0 and out["postnet_outputs"].shape[1] >= valid
    assert torch.isfinite(out["postnet_outputs"]).all()

    # 900 units > max_len 800: the position table is regenerated at that length, as the reference does.
    z = np.load(root / "io_seq1_medium.npz")
    base = parse_units(str(z["symbol_sequence"]))
    units = (base * 10)[:900]
    enc = encode_units(units, inv)
    assert enc.num_units == 900 > am.cfg.max_len
    out = am(torch.from_numpy(enc.ling)[None], torch.from_numpy(enc.emotion)[None], torch.from_numpy(enc.speaker)[None])
    assert torch.isfinite(out["postnet_outputs"]).all()
    # The first 800 rows of a regenerated table equal the stored (saved) table.
    from sambert_deploy.models.sambert import sinusoid_table

    stored = am.text_encoder.ling_enc.position_enc.position_enc
    np.testing.assert_array_equal(sinusoid_table(900, stored.shape[2])[:, :800].numpy(), stored.detach().numpy())

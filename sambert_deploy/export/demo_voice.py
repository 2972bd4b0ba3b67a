"""Generate the embedded default: a full-size voice with seeded random weights in the ModelScope layout.

The configs are KAN-TTS's 16 kHz ``sambert_16k.yaml`` and ``hifigan_v1_16k.yaml`` /
``hifigan_noncausal_v1_16k.yaml`` values (SPEC §c.1, §d.1); the checkpoints have the trainers'
on-disk format. The weights are random, so the audio sounds like noise: this voice exists to run and
measure the whole pipeline where no released weights can be downloaded. As in the reference fixtures,
the duration predictor's output layer is scaled so that durations come out at 3-8 frames per unit
instead of ~0.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import torch

from ..models.hifigan import Generator, HifiGanConfig
from ..models.sambert import KanTtsSAMBERT, SambertConfig
from ..symbols import Inventories

AUDIO = {"sampling_rate": 16000, "hop_length": 200, "win_length": 1000, "n_fft": 2048, "n_mels": 80, "fmin": 0.0,
         "fmax": 8000.0, "min_level_db": -100.0, "ref_level_db": 20, "norm_type": "mean_std", "max_norm": 1.0,
         "symmetric": False, "preemphasize": False, "trim_silence": True, "trim_silence_threshold_db": 60,
         "wav_normalize": True, "phone_level_feature": True}
VOICES = {"demo_emo": True, "demo_noncausal_emo": False}  # name -> causal vocoder
W_SCALE, BIAS_FRAMES = 20.0, 3.0


def _am_yaml(cfg: SambertConfig, speakers: str) -> dict:
    params = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()
              if k not in ("sy", "tone", "syllable_flag", "word_segment", "emotion", "speaker")}
    params.update({"MAS": False, "encoder_dropout": 0.1, "decoder_dropout": 0.1, "postnet_dropout": 0.1,
                   "predictor_dropout": 0.1})
    return {"model_type": "sambert", "audio_config": AUDIO,
            "Model": {"KanTtsSAMBERT": {"params": params}},
            "linguistic_unit": {"cleaners": "english_cleaners", "speaker_list": speakers,
                                "lfeat_type_list": "sy,tone,syllable_flag,word_segment,emo_category,speaker_category"}}


def _voc_yaml(cfg: HifiGanConfig) -> dict:
    p = asdict(cfg)
    params = {"in_channels": p["in_channels"], "out_channels": p["out_channels"], "channels": p["channels"],
              "kernel_size": p["kernel_size"], "upsample_scales": list(p["upsample_scales"]),
              "upsample_kernal_sizes": list(p["upsample_kernal_sizes"]),
              "resblock_kernel_sizes": list(p["resblock_kernel_sizes"]),
              "resblock_dilations": [list(d) for d in p["resblock_dilations"]], "causal": p["causal"], "bias": True,
              "nonlinear_activation": "LeakyReLU", "nonlinear_activation_params": {"negative_slope": 0.1},
              "use_weight_norm": True}
    return {"model_type": "hifigan", "audio_config": AUDIO, "Model": {"Generator": {"params": params}}}


def make_demo_model(root: str | Path, seed: int = 0) -> Path:
    """Write the demo model directory (two voices: causal and non-causal vocoder) and return it."""
    import yaml

    root = Path(root)
    speakers = "F7"
    inv = Inventories.build([speakers])
    sizes = {"sy": len(inv.sy), "tone": len(inv.tone), "syllable_flag": len(inv.syllable_flag),
             "word_segment": len(inv.word_segment), "emotion": len(inv.emo_category), "speaker": len(inv.speaker)}
    am_cfg = SambertConfig(**sizes)
    torch.manual_seed(seed)
    am = KanTtsSAMBERT(am_cfg)
    with torch.no_grad():
        fc = am.variance_adaptor.duration_predictor.fc
        fc.weight *= W_SCALE
        fc.bias[:] = math.log(1 + BIAS_FRAMES)
    am_state = {"model": am.state_dict(), "steps": 0, "optimizer": {}, "scheduler": {}}
    (root / "voices").mkdir(parents=True, exist_ok=True)
    (root / "configuration.json").write_text(json.dumps(
        {"framework": "pytorch", "task": "text-to-speech", "model": {"type": "sambert-hifigan", "sample_rate": 16000,
                                                                     "am": {"linguistic_unit": {"has_mask": True}}}},
        indent=1))
    (root / "voices" / "voices.json").write_text(json.dumps({"voices": list(VOICES)}))
    for name, causal in VOICES.items():
        vdir = root / "voices" / name
        for sub in ("am", "voc"):
            (vdir / sub / "ckpt").mkdir(parents=True, exist_ok=True)
        (vdir / "am" / "config.yaml").write_text(yaml.safe_dump(_am_yaml(am_cfg, speakers), sort_keys=False))
        torch.save(am_state, vdir / "am" / "ckpt" / "checkpoint_0.pth")
        voc_cfg = HifiGanConfig(causal=causal, upsample_kernal_sizes=(20, 10, 4, 4) if causal else (20, 11, 4, 4))
        torch.manual_seed(seed + 1)
        gen = Generator(voc_cfg)
        (vdir / "voc" / "config.yaml").write_text(yaml.safe_dump(_voc_yaml(voc_cfg), sort_keys=False))
        torch.save({"model": {"generator": gen.state_dict(), "discriminator": {}}, "steps": 0,
                    "optimizer": {}, "scheduler": {}}, vdir / "voc" / "ckpt" / "checkpoint_0.pth")
    return root

"""The README's first command (``make demo``): the whole job on the embedded default voice.

1. generate a full-size Sambert + HiFiGAN voice with seeded random weights in the ModelScope layout
   (two voices: causal and non-causal vocoder),
2. ``sambert-deploy export`` it (with the torch/ONNX parity gate),
3. ``sambert-deploy quantize`` the causal voice's vocoder to BF16 and INT8, each judged against FP32 on
   the voice's own mels and on a real pretrained vocoder with real speech (recorded in the manifest),
4. stream a long text through the torch-free runtime into WAV files, in a fresh process (``auto``: the
   fastest variant that passed its gate), and print what was measured.

The weights are random: the WAV files sound like noise. Parity and speed are what this shows.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from sambert_deploy.gates import describe_quality
from sambert_deploy.utils import peak_rss_mb

TEXT = ("今天是二零二六年十一月二十四日，气温十二度，北风三级。"
        "一个开源的语音合成工具，把声学模型和声码器从训练检查点导出成小而快的部署版本，"
        "并且在任何长度的文本上都保持内存平稳。"
        "我们先把文字转换成音素，再逐步生成梅尔频谱，最后用声码器一块一块地合成音频。"
        "流式输出的第一段声音，在整句话合成完之前就已经可以播放了。"
        "如果你的显卡很小，也可以把声学模型放在显卡上，把声码器放在处理器上。"
        "这个演示用的是随机权重，所以听起来只是噪音，但是整条流水线和真实模型完全一样。") * 3


def synth_stage(bundle: Path, out_dir: Path) -> dict:
    """Runs in a fresh process: no torch imported, so peak RSS is the runtime's own."""
    import numpy as np  # noqa: F401

    from sambert_deploy.runtime.sinks import write_wav
    from sambert_deploy.runtime.synthesizer import Synthesizer

    results = {}
    for voice in ("demo_emo", "demo_noncausal_emo"):
        with Synthesizer(bundle, voice=voice, backend="auto") as syn:
            syn.synthesize("预热。")  # load sessions and the front end's dictionary outside the timing
            t0 = time.perf_counter()
            with syn.stream(TEXT, emotion="neutral") as stream:
                n = write_wav(stream, out_dir / f"{voice}.wav", syn.sample_rate)
            wall = time.perf_counter() - t0
            st = stream.info
            am_b, voc_b = syn.backends()[voice]
            results[voice] = {"backend": f"{am_b}/{voc_b} ({syn.precisions()[voice]})", "chars": len(TEXT),
                              "sentences": st.sentences, "units": st.units, "audio_s": n / syn.sample_rate,
                              "wall_s": wall, "rtf": wall / (n / syn.sample_rate), "first_audio_ms": st.first_audio_s * 1e3}
    results["peak_rss_mb"] = peak_rss_mb()
    if "torch" in sys.modules:
        raise RuntimeError("the runtime imported torch")
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("demo_out"))
    ap.add_argument("--synth-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    out: Path = args.out
    bundle = out / "bundle"
    if args.synth_only:
        print(json.dumps(synth_stage(bundle, out)))
        return

    from sambert_deploy.export.bundle import ExportOptions, export_model
    from sambert_deploy.export.demo_voice import make_demo_model

    t0 = time.perf_counter()
    model = out / "model"
    if not (model / "voices" / "voices.json").is_file():
        make_demo_model(model)
    t_gen = time.perf_counter() - t0
    print(f"[1/4] demo voice (full-size configs, seeded RANDOM weights) at {model}  ({t_gen:.1f} s)", flush=True)
    print("[2/4] exporting both voices to ONNX and running the parity gate ...", flush=True)
    report = export_model(model, bundle, all_voices=True, options=ExportOptions(force=True))
    print(report.summary(), flush=True)
    print("[3/4] quantizing demo_emo's vocoder (bf16, int8), each behind its quality gate ...", flush=True)
    from sambert_deploy.calibration.bundle import QuantizeOptions, quantize_bundle

    for name, res in quantize_bundle(bundle, QuantizeOptions(precisions=("bf16", "int8"),
                                                             voices=("demo_emo",))).items():
        for var in res.variants.values():
            print(f"  {name} {var.precision}: {describe_quality(var.quality)}", flush=True)
    print("[4/4] streaming a long text through the torch-free runtime (fresh process) ...", flush=True)
    p = subprocess.run([sys.executable, __file__, "--out", str(out), "--synth-only"], capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(p.stderr)
    res = json.loads(p.stdout.strip().splitlines()[-1])
    print()
    print("| voice | backend | chars | sentences | units | audio s | wall s | RTF | first audio ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    for voice in ("demo_emo", "demo_noncausal_emo"):
        r = res[voice]
        print(f"| {voice} | {r['backend']} | {r['chars']} | {r['sentences']} | {r['units']} | {r['audio_s']:.1f} | "
              f"{r['wall_s']:.2f} | {r['rtf']:.3f} | {r['first_audio_ms']:.0f} |")
    print(f"\npeak RSS of the runtime process (both voices loaded in turn): {res['peak_rss_mb']:.0f} MB")
    print(f"WAV files: {out / 'demo_emo.wav'}, {out / 'demo_noncausal_emo.wav'}")
    print("NOTE: the voice has random weights, so the audio is noise; real voices export the same way.")


if __name__ == "__main__":
    main()

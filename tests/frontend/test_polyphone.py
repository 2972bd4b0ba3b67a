"""The polyphone context model (g2pM's BiLSTM in numpy) and its place in the front end.

The sentences are written for this test (not from the dev set): each is one the rules alone read wrong,
a word outside the phrase table whose polyphone the rules leave to the character's first reading.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sambert_deploy.frontend import FrontEnd
from tests.conftest import need_module

FIXED = [
    ("请切换到下一个频道。", 1, "qie1"),  # rules: qie4 (切 'cut' read alone)
    ("这座馆舍建于清代。", 3, "she4"),  # rules: she3 ('give up')
    ("他喜欢听室内乐。", 6, "yue4"),  # rules: le4 ('happy')
    ("这套书的第三卷最厚。", 6, "juan4"),  # rules: juan3 ('roll up'); a volume is juan4
]


def _syllables(fe: FrontEnd, text: str) -> list[str]:
    return [t for s in fe.pinyin(text) for t in s.split() if not t.startswith("#")]


@pytest.fixture(scope="module")
def fe() -> FrontEnd:
    need_module("g2pM", "pip install g2pM (the front end's polyphone model)")
    return FrontEnd()


@pytest.mark.parametrize(("text", "k", "reading"), FIXED)
def test_model_fixes_rules_error(fe: FrontEnd, text: str, k: int, reading: str) -> None:
    assert _syllables(fe, text)[k] == reading


def test_curated_defaults_stay(fe: FrontEnd) -> None:
    # the model (trained on CPP's sampling) reads 没 as mo4 and 都 as du1 here; the rules' curated
    # running-text defaults keep mei2 / dou1
    assert _syllables(fe, "这又没坏。")[2] == "mei2"
    assert _syllables(fe, "我们每天都在家。")[4] == "dou1"


def test_equals_g2pm_reference() -> None:
    """Our forward pass gives g2pM's own predictions (its argmax over all classes) at every polyphone."""
    g2pm = need_module("g2pM", "pip install g2pM")
    from sambert_deploy.frontend import polyphone

    model = polyphone.load()
    assert model is not None
    ref = g2pm.G2pM()
    for text in ["他长得很高，长大以后想当银行行长。", "我得走了，觉得还是睡觉好。", *[t for t, _, _ in FIXED]]:
        expected = ref(text, char_split=True)
        pos = [k for k, c in enumerate(text) if model.is_polyphone(c)]
        assert pos
        logits = model.logits(model.hidden(text)[pos])
        got = [model.classes[int(row.argmax())] for row in logits]
        assert got == [expected[k].replace("u:", "v") for k in pos], text


def test_onnx_graph_is_valid_and_matches_numpy() -> None:
    """The hand-serialized ONNX graph passes onnx's checker and gives the numpy forward pass's logits."""
    need_module("g2pM", "pip install g2pM")
    onnx = need_module("onnx", "pip install '.[export]'")
    from sambert_deploy.frontend import polyphone

    model = polyphone.load()
    assert model is not None and model.backend == "onnxruntime"
    onnx.checker.check_model(onnx.load_from_string(polyphone.onnx_model(model)), full_check=True)
    for text in ["行", "银行行长说，这个长长的行列走得很慢。", "乐" * 3, "𠀀行𠀀"]:  # one char, long, unknown chars
        pos = [k for k, c in enumerate(text) if model.is_polyphone(c)]
        a, b = model.numpy_logits(text, pos), model.polyphone_logits(text, pos)
        assert a.shape == b.shape == (len(pos), len(model.classes))
        assert float(abs(a - b).max()) < 1e-4, text


def test_onnxruntime_failure_falls_back_to_numpy(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    need_module("g2pM", "pip install g2pM")
    import onnxruntime

    from sambert_deploy.frontend import polyphone

    class Broken:
        def __init__(self, *args: object, **kwargs: object) -> None:
            pass

        def run(self, *args: object) -> list[object]:
            raise RuntimeError("simulated ORT failure")

    folder = polyphone.package_folder()
    assert folder is not None
    model = polyphone.PolyphoneModel.from_package(folder)
    monkeypatch.setattr(onnxruntime, "InferenceSession", Broken)
    model.use_onnxruntime()
    assert model.backend == "onnxruntime"
    text = "银行行长说，这个长长的行列走得很慢。"
    with caplog.at_level("WARNING", logger=polyphone.__name__):
        got = model.predict(text)
        again = model.predict(text)
    assert model.backend == "numpy"
    model.use_numpy()
    assert got == again == model.predict(text)
    assert sum("onnxruntime failed" in r.getMessage() for r in caplog.records) == 1


_PROBE = textwrap.dedent(
    """
    import logging, os, sys
    logging.basicConfig(level=logging.WARNING, format="%(name)s:%(message)s")
    mode = sys.argv[1]
    if mode == "missing":
        sys.modules["g2pM"] = None  # find_spec answers None: as if not installed
    elif mode == "damaged":
        pkg = os.path.join(sys.argv[2], "g2pM")
        os.makedirs(pkg)
        open(os.path.join(pkg, "__init__.py"), "w").close()
        for name in ("np_ckpt.pkl", "char2idx.pkl", "class2idx.pkl", "digest_cedict.pkl"):
            with open(os.path.join(pkg, name), "wb") as f:
                f.write(b"\\x80\\x04truncated")
        sys.path.insert(0, sys.argv[2])
    from sambert_deploy.frontend import FrontEnd, polyphone
    fe = FrontEnd()
    print(fe.pinyin("请切换到下一个频道。")[0])
    print(fe.pinyin("这座馆舍建于清代。")[0])
    m = polyphone.load()
    print("model", m is not None, m.backend if m is not None else "")
    print("torch", "torch" in sys.modules, "onnx", "onnx" in sys.modules)
    """
)


def _probe(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", _PROBE, *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("mode", ["missing", "damaged"])
def test_falls_back_to_rules_and_says_so_once(mode: str, tmp_path: Path) -> None:
    r = _probe(mode, str(tmp_path))
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    assert out[0].split()[1] == "qie4"  # the rules' reading: the front end still speaks
    assert out[2] == "model False "
    warnings = [line for line in r.stderr.splitlines() if "polyphones are read by rules only" in line]
    assert len(warnings) == 1, r.stderr


def test_model_path_imports_no_torch() -> None:
    need_module("g2pM", "pip install g2pM")
    r = _probe("installed")
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    assert out[0].split()[1] == "qie1"
    assert out[2:] == ["model True onnxruntime", "torch False onnx False"]

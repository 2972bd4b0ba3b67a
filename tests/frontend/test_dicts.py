"""The packed jieba tables (frontend/dicts.py) answer every lookup as jieba's own dicts do."""

from __future__ import annotations

import logging
import random

import pytest

from sambert_deploy.frontend import dicts


@pytest.fixture(scope="module")
def both():  # type: ignore[no-untyped-def]
    pytest.importorskip("jieba")
    import jieba
    import jieba.posseg

    jieba.setLogLevel(logging.WARNING)
    tok = jieba.Tokenizer()
    tok.initialize()
    return jieba.posseg.POSTokenizer(tok), dicts.pos_tokenizer()


def test_packed_tables_match_jieba_on_random_keys(both) -> None:  # type: ignore[no-untyped-def]
    orig, packed = both
    of, pf = orig.tokenizer.FREQ, packed.tokenizer.FREQ
    assert packed.tokenizer.total == orig.tokenizer.total
    rnd = random.Random(20261204)
    keys = rnd.sample(sorted(of), 20000)
    probes = []
    for k in keys:  # words, prefixes, and near misses on either side
        probes += [k, k[:-1], k[1:], k + rnd.choice("的了是人中国A1"), rnd.choice("不在有") + k]
    for q in probes:
        assert (q in pf) == (q in of), q
        assert pf.get(q) == of.get(q), q
        assert packed.word_tag_tab.get(q, "x") == orig.word_tag_tab.get(q, "x"), q
    with pytest.raises(KeyError):
        pf["\u0001no such word"]


def test_packed_tokenizer_cuts_like_jieba(both) -> None:  # type: ignore[no-untyped-def]
    orig, packed = both
    text = (
        "长江是中国最长的河流，全长约六千三百公里。行长说这一行很难做。他在B超室门口等了两个小时，iPhone快没电了。"
        "我们用Python和GitHub做了一个小项目；南京市长江大桥，结婚的和尚未结婚的。"
    )
    for hmm in (True, False):
        assert [(p.word, p.flag) for p in packed.cut(text, HMM=hmm)] == [
            (p.word, p.flag) for p in orig.cut(text, HMM=hmm)
        ]


def test_packed_words_lookups() -> None:
    w = dicts.PackedWords(["中国", "中国人", "北京", "中", "b"])
    assert w.index("中国") >= 0 and w.index("中国人民") == -1 and w.index("") == -1
    assert w.has_prefix("中国") and w.has_prefix("北") and not w.has_prefix("北京市") and not w.has_prefix("")
    assert sorted(w) == sorted(["中国", "中国人", "北京", "中", "b"])


def test_pinyin_tables_match_pypinyin_on_random_keys() -> None:
    pypinyin = pytest.importorskip("pypinyin")
    from pypinyin.constants import PHRASES_DICT, PINYIN_DICT
    from pypinyin.style import convert

    tables = dicts.PinyinTables.load()
    rnd = random.Random(7)
    for code in rnd.sample(sorted(PINYIN_DICT), 3000):
        ch = chr(code)
        want = pypinyin.pinyin(
            [ch], style=pypinyin.Style.TONE3, neutral_tone_with_five=True, errors=lambda c: [""] * len(c)
        )[0][0]
        assert tables.char(ch) == want, ch
    assert tables.char("a") == "" and tables.char("，") == ""
    for w in rnd.sample(sorted(PHRASES_DICT), 3000):
        assert w in tables
        want = []
        for item in PHRASES_DICT[w]:
            py = convert(item[0], pypinyin.Style.TONE3, strict=True, neutral_tone_with_five=True)
            want.append(py if py[-1:].isdigit() else py + "5")
        assert tables.phrase(w) == want, w
        assert ((w[1:] in tables) == (w[1:] in PHRASES_DICT)) and ((w + "了") in tables) == (
            (w + "了") in PHRASES_DICT
        )
    with pytest.raises(KeyError):
        tables.phrase("不是词组的字串")


@pytest.mark.parametrize(
    ("marked", "tone3"),
    [("lǜ", "lv4"), ("nǚ", "nv3"), ("jū", "ju1"), ("de", "de5"), ("lü", "lv5"), ("ế", "ê2"), ("ê", "ê5"),
     ("m̀", "m4"), ("ń", "n2"), ("zhōng", "zhong1"), ("", "")],
)  # fmt: skip
def test_tone3(marked: str, tone3: str) -> None:
    assert dicts.tone3(marked) == tone3


_GLOBAL_POSSEG = r"""
import logging, random, jieba
jieba.setLogLevel(logging.WARNING)
from sambert_deploy.frontend import dicts
mine = dicts.pos_tokenizer()
import jieba.posseg
glob = jieba.posseg.dt
assert isinstance(glob.word_tag_tab, dicts.WordTags), type(glob.word_tag_tab)
ref = jieba.posseg.POSTokenizer(jieba.Tokenizer())  # jieba's own tables, read from the same dictionary
rnd = random.Random(3)
for w in rnd.sample(sorted(ref.word_tag_tab), 20000) + ["不是词", "x"]:
    assert glob.word_tag_tab.get(w, "x") == ref.word_tag_tab.get(w, "x"), w
text = "长江是中国最长的河流。行长说这一行很难做；他在B超室门口等了两个小时。"
assert jieba.posseg.lcut(text) == ref.lcut(text)
jieba.add_word("奇奇怪怪词", tag="nz")  # user words reach the global table, not the front end's
assert ("奇奇怪怪词", "nz") in [(p.word, p.flag) for p in jieba.posseg.cut("一个奇奇怪怪词")]
assert mine.word_tag_tab.get("奇奇怪怪词") is None
print("ok")
"""


def test_global_posseg_gets_the_packed_pos_table(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Importing jieba.posseg through dicts skips the POS table its global tokenizer reads; that tokenizer
    answers as jieba's own (a fresh process: jieba.posseg must not be imported yet)."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _GLOBAL_POSSEG], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]

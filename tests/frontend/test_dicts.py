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

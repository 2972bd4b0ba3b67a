"""Tone sandhi on surface tones: 不, 一 and third-tone chains.

The dev labels (surface tones, as ttsfrd emits them: 可以 -> ke2 yi3) apply third-tone sandhi inside a
lexical word first and then across lexical-word boundaries inside a prosodic word, which gives the
textbook readings 展览馆 (2+1 structure: zhan2 lan2 guan3) and 小老虎 (1+2: xiao3 lao2 hu3).
"""

from __future__ import annotations

from dataclasses import dataclass

from .g2p import Word

_NUMERALS = set("零〇一二两三四五六七八九十")
_BIG_UNITS = set("百千万亿")


@dataclass
class _Syl:
    word: Word
    idx: int  # index into word.syllables
    char: str


def _tone(s: str) -> int:
    return int(s[-1]) if s and s[-1].isdigit() else 5


def _set_tone(w: Word, i: int, tone: int) -> None:
    s = w.syllables[i]
    if s:
        w.syllables[i] = s[:-1] + str(tone)


def yi_bu_sandhi(words: list[Word]) -> None:
    """Apply the 一/不 rules in place over a phrase (words between two punctuation marks)."""
    syls: list[_Syl] = []
    for w in words:
        if w.latin:
            syls.append(_Syl(w, -1, ""))
            continue
        chars = _syllable_chars(w)
        for i, ch in enumerate(chars):
            syls.append(_Syl(w, i, ch))
    orig = [_tone(s.word.syllables[s.idx]) if s.idx >= 0 else 0 for s in syls]
    for k, s in enumerate(syls):
        if s.idx < 0 or s.word.locked or s.char not in ("一", "不"):
            continue
        nxt = syls[k + 1] if k + 1 < len(syls) and syls[k + 1].idx >= 0 else None
        prv = syls[k - 1] if k > 0 and syls[k - 1].idx >= 0 else None
        nt = orig[k + 1] if nxt is not None else 0
        w = s.word
        if s.char == "不":
            if orig[k] == 5:
                continue  # 对不起, 了不起: the phrase table's neutral tone wins
            _set_tone(w, s.idx, 2 if nt == 4 else 4)  # V不V too: the labels read 是不是 shi4 bu2 shi4
            continue
        # 一
        if nxt is None:
            _set_tone(w, s.idx, 1)
        elif (
            w.from_number
            or (nxt is not None and nxt.char in _NUMERALS)
            or (prv is not None and (prv.char in _NUMERALS or prv.char == "第"))
        ):
            _set_tone(w, s.idx, 1)
        elif nxt.char in "等级号楼月" and s.idx == 0:
            _set_tone(w, s.idx, 1)  # ordinal-like 一等奖, 一级, 一号, 一月
        elif len(w.text) > 1 and s.idx == len(w.syllables) - 1 and w.text[-1] == "一":
            _set_tone(w, s.idx, 1)  # word- or phrase-final 一 (统一, 唯一) keeps tone 1
        elif prv is not None and nxt.char == prv.char:
            _set_tone(w, s.idx, 5)  # V一V (看一看)
        else:
            _set_tone(w, s.idx, 2 if nt in (4,) or (nt == 5 and nxt.char in "个") else 4)


def _syllable_chars(w: Word) -> list[str]:
    """One representative character per syllable (erhua syllables cover two characters)."""
    chars: list[str] = []
    text = w.text
    i = 0
    for s in w.syllables:
        chars.append(text[i] if i < len(text) else "")
        i += (
            2
            if s and s[:-1].endswith("r") and s[:-1] != "er" and i + 1 < len(text) and text[i + 1] == "儿"
            else 1
        )
    return chars


def _chain(tones: list[int]) -> list[int]:
    """Left-to-right third-tone chain: every 3 followed by a 3 becomes 2 (333 -> 223)."""
    out = list(tones)
    for i in range(len(out) - 1):
        if out[i] == 3 and out[i + 1] == 3:
            out[i] = 2
    return out


def third_tone_in_word(w: Word, is_word: object = None) -> None:
    """Third-tone sandhi inside one lexical word; 3-syllable words use their 1+2 / 2+1 structure.

    ``is_word`` is a callable giving a dictionary frequency (or truth) of a string, to find the structure.
    """
    if w.latin or w.locked or len(w.syllables) < 2:
        return
    tones = [_tone(s) for s in w.syllables]
    if 3 not in tones:
        return
    n = len(tones)
    if n == 3 and tones == [3, 3, 3] and callable(is_word) and len(w.text) == 3:
        if float(is_word(w.text[1:])) > float(is_word(w.text[:2])):
            new = [3, 2, 3]  # 1+2: 小老虎
        else:
            new = [2, 2, 3]  # 2+1: 展览馆
    elif n >= 4:
        # Long words (idioms, compounds) are read as 2+2(+...) feet: sandhi inside each foot, then across.
        new = []
        for j in range(0, n, 2):
            new.extend(_chain(tones[j : j + 2]))
        new = _chain(new)
    else:
        new = _chain(tones)
    for i, t in enumerate(new):
        if t != tones[i]:
            _set_tone(w, i, t)


def third_tone_across(words: list[Word]) -> None:
    """Across lexical words (of one prosodic word): a word-final 3 before a word-initial 3 becomes 2."""
    for a, b in zip(words, words[1:], strict=False):
        if a.latin or b.latin or a.locked or not a.syllables or not b.syllables:
            continue
        if _tone(a.syllables[-1]) == 3 and _tone(b.syllables[0]) == 3:
            _set_tone(a, len(a.syllables) - 1, 2)

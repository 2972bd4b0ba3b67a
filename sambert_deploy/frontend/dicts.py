"""Compact read-only dictionaries for the front end: jieba's and pypinyin's tables without a Python object
per word.

jieba keeps its dictionary as two dicts of ~500k (prefix table FREQ) and ~350k (POS table) str keys, and
importing pypinyin builds its 47k-phrase table twice (a copy) plus its segmenter's prefix sets: together
~150 MiB of the text path's resident memory (``scripts/frontend_memory.py``). The lookups the front end
makes (is a string a word or a word prefix, a word's count and POS tag, a character's or a phrase's first
reading) are served here from sorted, packed strings plus arrays of offsets, counts, tags and syllable
numbers, with the same answers (tests/frontend/test_dicts.py compares them with jieba and pypinyin).
pypinyin's data files are read directly, without importing pypinyin; jieba.posseg's global tokenizer gets
the packed POS table instead of reading the dictionary again at import.
"""

from __future__ import annotations

import bisect
import importlib.util
import io
import json
import os
import sys
import threading
import unicodedata
from array import array
from collections.abc import Iterable
from typing import Any, BinaryIO, TypeVar

_T = TypeVar("_T")


class PackedWords:
    """Sorted unique words packed into one str; ``index(w)`` finds a word by binary search.

    A dict from first character to the range of words starting with it narrows the search to a few steps
    (jieba looks up several substrings per character of text).
    """

    def __init__(self, words: Iterable[str]) -> None:
        ws = sorted(words if isinstance(words, (dict, set, frozenset)) else set(words))
        self._text = "".join(ws)
        self._off = array("I", [0])
        pos = 0
        for w in ws:
            pos += len(w)
            self._off.append(pos)
        self._n = len(ws)
        self._first: dict[str, tuple[int, int]] = {}
        i = 0
        while i < self._n:
            c = ws[i][0]
            j = i + 1
            while j < self._n and ws[j][0] == c:
                j += 1
            self._first[c] = (i, j)
            i = j

    def __len__(self) -> int:
        return self._n

    def word(self, i: int) -> str:
        return self._text[self._off[i] : self._off[i + 1]]

    def offset(self, i: int) -> int:
        """Where word ``i`` starts in the packed text (per-character data can be aligned with it)."""
        return self._off[i]

    def _lower_bound(self, key: str) -> tuple[int, int]:
        """(index of the first word >= key, end of key's first-character range); (-1, -1) when no word
        starts with key's first character."""
        rng = self._first.get(key[:1]) if key else None
        if rng is None:
            return -1, -1
        lo, hi = rng
        return bisect.bisect_left(range(lo, hi), key, key=self.word) + lo, hi

    def index(self, key: str) -> int:
        """Position of ``key`` among the words, -1 if it is not one."""
        i, hi = self._lower_bound(key)
        return i if 0 <= i < hi and self.word(i) == key else -1

    def has_prefix(self, key: str) -> bool:
        """Whether some word starts with ``key`` (key itself included)."""
        i, hi = self._lower_bound(key)
        return 0 <= i < hi and self.word(i).startswith(key)

    def __iter__(self) -> Any:
        return (self.word(i) for i in range(self._n))


class PrefixFreq:
    """jieba's ``Tokenizer.FREQ`` semantics over :class:`PackedWords`: a word -> its count, a proper prefix
    of a word -> 0, anything else absent. Supports the operations jieba and the front end use:
    ``in``, ``[]`` and ``get``.
    """

    def __init__(self, words: PackedWords, counts: array[int]) -> None:
        self._words = words
        self._counts = counts

    def get(self, key: str, default: _T | None = None) -> int | _T | None:
        i = self._words.index(key)
        if i >= 0:
            return self._counts[i]
        return 0 if self._words.has_prefix(key) else default

    def __getitem__(self, key: str) -> int:
        v = self.get(key)
        if v is None:
            raise KeyError(key)
        return v

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._words.has_prefix(key)

    def __setitem__(self, key: str, value: int) -> None:
        # jieba's add_word/suggest_freq write here; the front end never calls them (a user lexicon is
        # applied before segmentation)
        raise TypeError("the packed jieba dictionary is read-only")


class WordTags:
    """jieba's ``POSTokenizer.word_tag_tab`` semantics: ``get(word, default)`` -> the word's POS tag.

    Words added later (POSTokenizer merges a user dictionary through ``update``) go to a small dict of
    their own that is looked up first, as they would overwrite entries of jieba's dict.
    """

    def __init__(self, words: PackedWords, tag_ids: array[int], tags: list[str]) -> None:
        self._words = words
        self._ids = tag_ids
        self._tags = tags
        self._added: dict[str, str] = {}

    def copy(self) -> WordTags:
        """Another table sharing the packed words, with its own added words."""
        return WordTags(self._words, self._ids, self._tags)

    def get(self, key: str, default: _T | None = None) -> str | _T | None:
        if key in self._added:
            return self._added[key]
        i = self._words.index(key)
        return self._tags[self._ids[i]] if i >= 0 else default

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and (key in self._added or self._words.index(key) >= 0)

    def __setitem__(self, key: str, tag: str) -> None:
        self._added[key] = tag

    def update(self, other: dict[str, str]) -> None:
        self._added.update(other)


def load_jieba_dict(f: BinaryIO, name: str = "<jieba dict>") -> tuple[PrefixFreq, int, WordTags]:
    """Read jieba's ``dict.txt`` (``word count tag`` per line) as jieba does: a repeated word keeps its last
    line, and the total is summed over every line (``Tokenizer.gen_pfdict``). Returns (FREQ, total, tags).
    """
    # count * 256 + tag number in one int, not a tuple: the table is built once, but its peak counts
    last: dict[str, int] = {}
    tag_no: dict[str, int] = {}
    total = 0
    with f:
        for lineno, raw in enumerate(f, 1):
            line = raw.strip().decode("utf-8")
            if not line:
                continue
            parts = line.split(" ")
            if len(parts) != 3:
                raise ValueError(f"invalid jieba dictionary entry in {name} at line {lineno}: {line!r}")
            count = int(parts[1])
            total += count
            tag = tag_no.setdefault(parts[2], len(tag_no))
            if tag > 255:
                raise ValueError(f"{name}: more than 256 part-of-speech tags")
            last[parts[0]] = count << 8 | tag
    words = PackedWords(last)
    counts = array("I", (last[w] >> 8 for w in words))
    ids = array("B", (last[w] & 255 for w in words))
    del last
    return PrefixFreq(words, counts), total, WordTags(words, ids, list(tag_no))


def _import_posseg(tags: WordTags) -> Any:
    """``import jieba.posseg``, without the POS table its module-level tokenizer (``jieba.posseg.dt``) reads
    from the default dictionary at import (another ~40 MiB of str objects): it gets a copy of the packed
    table instead, which answers the same. Only when jieba.posseg is not imported yet and the default
    tokenizer still uses the default dictionary; otherwise a plain import.
    """
    import jieba

    if "jieba.posseg" in sys.modules or jieba.dt.dictionary != jieba.DEFAULT_DICT:
        import jieba.posseg

        return jieba.posseg
    # POSTokenizer.__init__ reads tokenizer.get_dict_file(); an instance attribute shadows the method
    jieba.dt.get_dict_file = io.BytesIO
    try:
        import jieba.posseg
    finally:
        del jieba.dt.get_dict_file
    jieba.posseg.dt.word_tag_tab = tags.copy()
    return jieba.posseg


def pos_tokenizer() -> Any:
    """A private jieba POSTokenizer whose tables are the packed ones (jieba's own dict is not loaded)."""
    import jieba

    tok = jieba.Tokenizer()
    freq, total, tags = load_jieba_dict(tok.get_dict_file(), tok.dictionary or "jieba/dict.txt")
    posseg = _import_posseg(tags)
    tok.FREQ, tok.total = freq, total
    tok.initialized = True
    # POSTokenizer.__init__ would read the dictionary again into a dict; give it the packed table instead
    pt = posseg.POSTokenizer.__new__(posseg.POSTokenizer)
    pt.tokenizer = tok
    pt.word_tag_tab = tags
    return pt


# --- pypinyin's tables ------------------------------------------------------------------------------------

_tables: PinyinTables | None = None
_tables_lock = threading.Lock()


def pinyin_tables() -> PinyinTables:
    """The process's :class:`PinyinTables`, loaded on first use."""
    global _tables
    if _tables is None:
        with _tables_lock:
            if _tables is None:
                _tables = PinyinTables.load()
    return _tables


_TONE_MARK = {"\u0304": "1", "\u0301": "2", "\u030c": "3", "\u0300": "4"}


def tone3(py: str) -> str:
    """Tone-marked pinyin -> toneless base + tone digit, 5 for the neutral tone ('lǜ' -> 'lv4', 'de' ->
    'de5', 'ế' -> 'ê2'): pypinyin's ``Style.TONE3`` with ``neutral_tone_with_five``."""
    tone = "5"
    out: list[str] = []
    for ch in unicodedata.normalize("NFD", py):
        if ch in _TONE_MARK:
            tone = _TONE_MARK[ch]
        elif ch == "\u0308" and out:  # ü
            out[-1] = "v"
        elif ch == "\u0302" and out:  # ê keeps its circumflex
            out[-1] = "ê"
        else:
            out.append(ch)
    return "".join(out) + tone if out else ""


def _pypinyin_file(name: str) -> str:
    # find_spec does not run pypinyin/__init__, which would build the tables this module replaces
    spec = importlib.util.find_spec("pypinyin")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("pypinyin is not installed (pip install pypinyin)")
    return os.path.join(next(iter(spec.submodule_search_locations)), name)


class PinyinTables:
    """The first (most common) reading of a character and of each word of pypinyin's phrase table, in TONE3.

    Phrase readings are stored as one syllable number per character, aligned with the packed words.
    """

    def __init__(self, chars: dict[str, str], words: PackedWords, syllables: array[int], names: list[str]):
        self._chars = chars
        self._words = words
        self._syl = syllables
        self._names = names

    @classmethod
    def load(cls) -> PinyinTables:
        names: list[str] = []
        number: dict[str, int] = {}

        def syl(py: str) -> int:
            t = tone3(py)
            if t not in number:
                number[t] = len(names)
                names.append(t)
            return number[t]

        with open(_pypinyin_file("pinyin_dict.json"), encoding="utf-8") as f:
            raw_chars: dict[str, str] = json.load(f)
        chars = {chr(int(k)): names[syl(v.split(",")[0])] for k, v in raw_chars.items()}
        del raw_chars
        with open(_pypinyin_file("phrases_dict.json"), encoding="utf-8") as f:
            phrases: dict[str, list[list[str]]] = json.load(f)
        words = PackedWords(phrases)
        ids = array("H")
        for w in words:
            items = phrases[w]
            if len(items) != len(w):
                raise ValueError(f"pypinyin phrase {w!r}: {len(items)} readings for {len(w)} characters")
            ids.extend(syl(item[0]) for item in items)
        names = [sys.intern(n) for n in names]
        return cls({c: names[number[r]] for c, r in chars.items()}, words, ids, names)

    def char(self, ch: str) -> str:
        """First reading of one character ('' if pypinyin has none)."""
        return self._chars.get(ch, "")

    def __contains__(self, word: object) -> bool:
        return isinstance(word, str) and self._words.index(word) >= 0

    def phrase(self, word: str) -> list[str]:
        """Readings of a word of the phrase table, one per character; KeyError if it is not one."""
        i = self._words.index(word)
        if i < 0:
            raise KeyError(word)
        start = self._words.offset(i)
        return [self._names[k] for k in self._syl[start : start + len(word)]]

"""Compact read-only dictionaries for the front end: jieba's word table without a Python object per word.

jieba keeps its dictionary as two dicts of ~350k (prefix table FREQ) and ~500k (POS table) str objects,
~110 MiB of the text path's resident memory (``scripts/frontend_memory.py``). The lookups the front end
makes (is a string a word or a word prefix, a word's count, a word's POS tag) are served here from one
sorted, packed string of the words plus arrays of offsets, counts and tag numbers (~8 MiB), with the same
answers (tests/frontend/test_dicts.py compares them with jieba's own tables).
"""

from __future__ import annotations

import bisect
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
        ws = sorted(set(words))
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
    """jieba's ``POSTokenizer.word_tag_tab`` semantics: ``get(word, default)`` -> the word's POS tag."""

    def __init__(self, words: PackedWords, tag_ids: array[int], tags: list[str]) -> None:
        self._words = words
        self._ids = tag_ids
        self._tags = tags

    def get(self, key: str, default: _T | None = None) -> str | _T | None:
        i = self._words.index(key)
        return self._tags[self._ids[i]] if i >= 0 else default

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._words.index(key) >= 0

    def update(self, other: dict[str, str]) -> None:
        if other:  # POSTokenizer merges user words here; the front end adds none
            raise TypeError("the packed jieba POS table is read-only")


def load_jieba_dict(f: BinaryIO, name: str = "<jieba dict>") -> tuple[PrefixFreq, int, WordTags]:
    """Read jieba's ``dict.txt`` (``word count tag`` per line) as jieba does: a repeated word keeps its last
    line, and the total is summed over every line (``Tokenizer.gen_pfdict``). Returns (FREQ, total, tags).
    """
    last: dict[str, tuple[int, str]] = {}
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
            last[parts[0]] = (count, parts[2])
    words = PackedWords(last)
    tag_names = sorted({t for _, t in last.values()})
    tag_no = {t: k for k, t in enumerate(tag_names)}
    counts = array("I", (last[w][0] for w in words))
    ids = array("B" if len(tag_names) < 256 else "H", (tag_no[last[w][1]] for w in words))
    del last
    return PrefixFreq(words, counts), total, WordTags(words, ids, tag_names)


def pos_tokenizer() -> Any:
    """A private jieba POSTokenizer whose tables are the packed ones (jieba's own dict is not loaded)."""
    import jieba
    import jieba.posseg

    tok = jieba.Tokenizer()
    freq, total, tags = load_jieba_dict(tok.get_dict_file(), tok.dictionary or "jieba/dict.txt")
    tok.FREQ, tok.total = freq, total
    tok.initialized = True
    # POSTokenizer.__init__ would read the dictionary again into a dict; give it the packed table instead
    pt = jieba.posseg.POSTokenizer.__new__(jieba.posseg.POSTokenizer)
    pt.tokenizer = tok
    pt.word_tag_tab = tags
    return pt

"""User lexicon: words whose reading overrides segmentation and pinyin.

File format (UTF-8): one entry per line, ``WORD<whitespace>PINYIN PINYIN ...`` with tone digits 1-5
(5 = neutral), one syllable per character; an erhua syllable (``dianr3``) covers its character and the
following 儿. ``#`` starts a comment; blank lines are ignored. Example::

    # word      pinyin
    重庆        chong2 qing4
    一点儿      yi4 dianr3
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property

from ..errors import InvalidInputError
from .g2p import is_han
from .phones import split_tone, syllable_phones


def _check_entry(word: str, sylls: list[str], where: str) -> list[str]:
    out = []
    i = 0
    for s in sylls:
        try:
            base, tone = split_tone(s)
            syllable_phones(base)
        except (InvalidInputError, KeyError):
            raise InvalidInputError(
                f"{where}: {s!r} is not a known pinyin syllable (e.g. 'hao3', 'dianr3')"
            ) from None
        out.append(f"{base}{tone}")
        i += 2 if base.endswith("r") and base != "er" and word[i + 1 : i + 2] == "儿" else 1
    if i != len(word):
        raise InvalidInputError(
            f"{where}: {len(sylls)} syllable(s) for the {len(word)} characters of {word!r}; give one per character"
        )
    return out


@dataclass(frozen=True)
class Lexicon:
    entries: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @cached_property
    def max_len(self) -> int:
        return max((len(w) for w in self.entries), default=0)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Lexicon:
        try:
            with open(path, encoding="utf-8-sig") as f:
                lines = f.read().splitlines()
        except OSError as e:
            raise InvalidInputError(
                f"cannot read lexicon file {os.fspath(path)!r}: {e.strerror or e}"
            ) from None
        except UnicodeDecodeError:
            raise InvalidInputError(f"lexicon file {os.fspath(path)!r} is not UTF-8 text") from None
        return cls.parse(lines, source=os.fspath(path))

    @classmethod
    def parse(cls, lines: list[str], source: str = "<lexicon>") -> Lexicon:
        entries: dict[str, tuple[str, ...]] = {}
        for n, raw in enumerate(lines, 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            where = f"{source}:{n}"
            if len(parts) < 2:
                raise InvalidInputError(f"{where}: expected 'WORD pinyin pinyin ...', got {raw.strip()!r}")
            word = parts[0]
            if not all(is_han(c) for c in word):
                raise InvalidInputError(f"{where}: lexicon words must be Chinese characters, got {word!r}")
            entries[word] = tuple(_check_entry(word, parts[1:], where))
        return cls(entries)

    def split(self, run: str) -> list[tuple[str, tuple[str, ...] | None]]:
        """Cut a Han run at lexicon words (longest match, left to right): [(text, pinyin or None)]."""
        if not self.entries:
            return [(run, None)]
        out: list[tuple[str, tuple[str, ...] | None]] = []
        buf = ""
        i = 0
        maxlen = self.max_len
        while i < len(run):
            for k in range(min(maxlen, len(run) - i), 0, -1):
                w = run[i : i + k]
                if w in self.entries:
                    if buf:
                        out.append((buf, None))
                        buf = ""
                    out.append((w, self.entries[w]))
                    i += k
                    break
            else:
                buf += run[i]
                i += 1
        if buf:
            out.append((buf, None))
        return out

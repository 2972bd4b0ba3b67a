"""Where the front end's text came from: spans of the caller's input through markup and normalization.

The front end rewrites a block twice before it reads it: emotion markers become one sentinel character
(:func:`.split.parse_markup`) and :func:`.normalize.normalize` spells numbers, dates, units and symbols
out (2024年 -> 二零二四年). Neither reports where its output came from, so :class:`SourceMap` aligns
each rewrite's output with its input (a longest-common-block diff): characters a rewrite kept map to
themselves; characters it produced map to the whole input span it replaced (each of 二零二四 to
"2024", each of 三到五千克 to "3-5kg"). A rewrite that keeps no character of a construct therefore maps
that construct to its enclosing source span, never to a guess inside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from difflib import SequenceMatcher

Span = tuple[int, int]


def char_spans(src: str, out: str) -> list[Span]:
    """Per character of ``out``, the span of ``src`` it came from (empty where it was inserted)."""
    if src == out:
        return [(i, i + 1) for i in range(len(out))]
    spans: list[Span] = []
    # autojunk off: in a long block a frequent character (的, 。) would otherwise never anchor a match.
    for tag, i1, i2, j1, j2 in SequenceMatcher(None, src, out, autojunk=False).get_opcodes():
        if tag == "equal":
            spans.extend((i1 + k, i1 + k + 1) for k in range(i2 - i1))
        elif tag in ("replace", "insert"):
            spans.extend([(i1, i2)] * (j2 - j1))
    return spans


class SourceMap:
    """Normalized text of one block -> offsets in the caller's input (``base``: the block's offset)."""

    def __init__(self, block: str, marked: str, normalized: str, base: int = 0):
        to_block = char_spans(block, marked)
        spans = []
        for a, b in char_spans(marked, normalized):
            if a < b:
                spans.append((to_block[a][0], to_block[b - 1][1]))
            else:  # inserted: a point where the marked text had position a
                p = to_block[a][0] if a < len(to_block) else len(block)
                spans.append((p, p))
        self._spans = spans
        self.base = base

    def span(self, a: int, b: int) -> Span | None:
        """Input span of normalized characters [a, b): from the first one's start to the last one's end
        (points left by inserted characters count only where nothing else does)."""
        picked = self._spans[max(a, 0):b]
        if not picked:
            return None
        full = [s for s in picked if s[0] < s[1]]
        use = full or picked
        return (self.base + min(s[0] for s in use), self.base + max(s[1] for s in use))


def word_chars(run: str, texts: Sequence[str], offset: int) -> list[list[Span] | None]:
    """Per word text (the words the front end cut ``run`` into, in order, some characters perhaps
    dropped), each character's span in the sentence (``offset``: the run's position); None for a word
    whose characters cannot be found in order."""
    out: list[list[Span] | None] = []
    k = 0
    for text in texts:
        spans: list[Span] = []
        for ch in text:
            j = run.find(ch, k)
            if j < 0:
                break
            spans.append((offset + j, offset + j + 1))
            k = j + 1
        out.append(spans if len(spans) == len(text) else None)
    return out


def union(spans: Sequence[Span | None]) -> Span | None:
    got = [s for s in spans if s is not None]
    if not got:
        return None
    return (min(s[0] for s in got), max(s[1] for s in got))

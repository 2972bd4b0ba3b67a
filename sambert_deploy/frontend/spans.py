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


ANCHOR = 6  # characters of a k-gram that, found once in each text, pins the two texts together
DIRECT = 200  # texts shorter than this are diffed whole


def char_spans(src: str, out: str) -> list[Span]:
    """Per character of ``out``, the span of ``src`` it came from (empty where it was inserted).

    Long texts are first pinned at the k-grams that occur exactly once in each (a rewrite keeps most of
    the text, so these are the same text in both), and only the stretches between pins are diffed: a
    2,000-character block with 240 numbers took 90 ms diffed whole (difflib is superlinear there)."""
    if src == out:
        return [(i, i + 1) for i in range(len(out))]
    if len(src) < DIRECT or len(out) < DIRECT:
        return _diff(src, out, 0)
    pairs = _pins(src, out)
    spans: list[Span] = []
    pi, pj = -1, -1
    for qi, qj in [*pairs, (len(src), len(out))]:
        if qi - pi > 1 or qj - pj > 1:
            spans.extend(_diff(src[pi + 1:qi], out[pj + 1:qj], pi + 1))
        if qj < len(out):
            spans.append((qi, qi + 1))
        pi, pj = qi, qj
    return spans


def _pins(src: str, out: str) -> list[tuple[int, int]]:
    """Character pairs (i, j), increasing in both, where ``src[i] == out[j]`` inside a shared k-gram
    that occurs once in each text."""
    k = ANCHOR
    in_src: dict[str, int] = {}
    for i in range(len(src) - k + 1):
        g = src[i:i + k]
        in_src[g] = -1 if g in in_src else i
    in_out: dict[str, int] = {}
    for j in range(len(out) - k + 1):
        g = out[j:j + k]
        in_out[g] = -1 if g in in_out else j
    pairs: list[tuple[int, int]] = []
    last_i, last_j = -1, -1
    for i in range(len(src) - k + 1):
        g = src[i:i + k]
        j = in_out.get(g, -1)
        if in_src[g] != i or j < 0:
            continue
        # a pin either starts after the last one in both texts or continues its run: never crosses it
        if not ((i > last_i and j > last_j) or j - i == last_j - last_i):
            continue
        for d in range(k):
            if i + d > last_i:
                pairs.append((i + d, j + d))
        last_i, last_j = i + k - 1, j + k - 1
    return pairs


def _diff(src: str, out: str, base: int) -> list[Span]:
    spans: list[Span] = []
    # autojunk off: in a long stretch a frequent character (的, 。) would otherwise never anchor a match.
    for tag, i1, i2, j1, j2 in SequenceMatcher(None, src, out, autojunk=False).get_opcodes():
        if tag == "equal":
            spans.extend((base + i1 + d, base + i1 + d + 1) for d in range(i2 - i1))
        elif tag in ("replace", "insert"):
            spans.extend([(base + i1, base + i2)] * (j2 - j1))
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

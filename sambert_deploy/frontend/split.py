"""Inline emotion markup, sentence splitting and the splitting of over-long sentences.

Markup: ``[emotion=happy]`` (or ``[emotion=emotion_happy]``) switches the emotion of the phones that
follow, across sentences, until the next marker; ``[/emotion]`` returns to the call's emotion. Markers
become private-use sentinel characters (U+E000 + k) so that normalization and splitting keep their
position without knowing about them.
"""

from __future__ import annotations

import re

from ..errors import InvalidInputError
from ..symbols import Inventories

SENTINEL_BASE = 0xE000
SENTINEL_RE = re.compile("[\ue000-\ue0ff]")
_MARKUP_RE = re.compile(r"\[\s*(/?)\s*emotion\s*(?:[=:]\s*([A-Za-z_]+)\s*)?\]", re.IGNORECASE)

SENTENCE_END = "。！？!?"
# Closing marks that belong to the sentence they follow.
CLOSERS = "”’」』）)》】\"'"


def parse_markup(text: str, default_emotion: str, inv: Inventories) -> tuple[str, list[str]]:
    """Replace emotion markers by sentinels; return the text and the emotion of each sentinel index.

    Names go through :meth:`Inventories.resolve_emotion` (the rule of the ``emotion`` argument); an unknown
    one raises :class:`InvalidInputError` listing the valid names.
    """
    emotions: list[str] = []

    def repl(m: re.Match[str]) -> str:
        closing, name = m.group(1), m.group(2)
        if closing or not name:
            emo = default_emotion
        else:
            emo = inv.resolve_emotion(name)
        if emo in emotions:
            k = emotions.index(emo)
        else:
            k = len(emotions)
            emotions.append(emo)
        if k > 0xFF:
            raise InvalidInputError("too many different emotions in one text (at most 256)")
        return chr(SENTINEL_BASE + k)

    # drop any sentinel-range characters the user typed, so they cannot alias a marker
    text = SENTINEL_RE.sub("", text)
    return _MARKUP_RE.sub(repl, text), emotions


def split_sentences(text: str) -> list[str]:
    """Split at 。！？!? (with trailing closing quotes/brackets), runs of them, and line breaks.

    '…' and '；' stay inside the sentence (they set a #3 break), as one ttsfrd line may hold internal pauses.
    """
    out: list[str] = []
    buf: list[str] = []
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if ch in "\r\n":
            if buf:
                out.append("".join(buf))
                buf = []
            i += 1
            continue
        buf.append(ch)
        if ch in SENTENCE_END:
            j = i + 1
            while j < n and (text[j] in SENTENCE_END or text[j] in CLOSERS or SENTINEL_RE.match(text[j])):
                buf.append(text[j])
                j += 1
            out.append("".join(buf))
            buf = []
            i = j
            continue
        i += 1
    if buf:
        out.append("".join(buf))
    return [s for s in (x.strip() for x in out) if s]

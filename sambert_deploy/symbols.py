"""Linguistic units and the symbol inventories of the KAN-TTS PinYin units (SPEC §e.3), torch-free.

A :class:`Unit` is one ``{sy$tone$syllable_flag$word_segment$emotion$speaker}`` of a ttsfrd line. Between the
front end and the encoder units stay typed; the string form exists only at the edges (the ``symbols`` CLI
and ``--symbols-file``), through :func:`parse_units` and :func:`format_units`.

Each stream's id list is its base list followed by the specials ``_`` (pad), ``~`` (eos) and
``@[MASK]``; the id of a symbol is its index. ``has_mask: false`` models drop the last entry, which
does not move the ids of real symbols. The speaker list is per voice (``linguistic_unit.speaker_list``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from .errors import InvalidInputError

PAD, EOS, MASK = "_", "~", "@[MASK]"
SPECIALS = (PAD, EOS, MASK)
STREAMS = ("sy", "tone", "syllable_flag", "word_segment", "emo_category", "speaker")
UNIT_FORMAT = "{sy$tone$syllable_flag$word_segment$emotion$speaker}"
_BREAKS = {"#1": 1, "#2": 2, "#3": 3, "#4": 4}
_LINE_INDEX_RE = re.compile(r"^\s*\d+\t")


@dataclass(frozen=True, slots=True)
class Unit:
    """One linguistic unit: a phone (or a break ``#1``..``#4``) with its five annotation fields."""

    sy: str  # without the '@' prefix, e.g. 'n_c', '#1'
    tone: str  # 'tone2', 'tone_none'
    syllable_flag: str
    word_segment: str
    emotion: str  # 'emotion_neutral'; 'emotion_none' on breaks
    speaker: str

    @classmethod
    def parse(cls, text: str, pos: int = 0) -> Unit:
        """``'{a$b$c$d$e$f}'`` -> Unit; ``pos`` (the unit's position in its line) only names it in errors."""
        parts = text.strip().strip("{}").split("$")
        if len(parts) != 6:
            raise InvalidInputError(f"unit {pos} '{text}' has {len(parts)} fields; expected 6: {UNIT_FORMAT}")
        return cls(*parts)

    def __str__(self) -> str:
        return f"{{{self.sy}${self.tone}${self.syllable_flag}${self.word_segment}${self.emotion}${self.speaker}}}"

    @property
    def break_level(self) -> int | None:
        """1..4 for the prosodic breaks '#1'..'#4', None for a phone."""
        return _BREAKS.get(self.sy)

    @property
    def is_break(self) -> bool:
        return self.sy in _BREAKS

    def fields(self) -> tuple[str, str, str, str, str, str]:
        """The six fields in stream order (:data:`STREAMS`)."""
        return (self.sy, self.tone, self.syllable_flag, self.word_segment, self.emotion, self.speaker)


@dataclass(frozen=True, slots=True)
class Token:
    """What a run of one sentence's units speaks: units ``[first, first + count)`` of the sentence.

    ``kind``: ``syllable`` (a Han character, or two for an erhua syllable such as 点儿), ``word`` (an
    English word, or a word whose characters the front end could not pair with its syllables, e.g. a
    user-lexicon entry), ``break`` (a prosodic break unit; ``text`` is the punctuation that set it, or
    '') or ``phone`` (symbol input, which has no text: ``text`` is the syllable's phones). ``text`` is
    the spoken text after normalization (二零二四 for 2024). ``source``: [start, end) character offsets
    into the caller's original input where known (None for symbol input and for breaks no punctuation
    set); a normalized token maps to the whole input span its expansion came from (each of 二零二四
    to "2024").
    """

    text: str
    kind: str
    first: int
    count: int
    source: tuple[int, int] | None = None
    level: int = 0  # break level 1..4 of a break token


def split_tokens(tokens: Sequence[Token], sizes: Sequence[int]) -> list[tuple[Token, ...]]:
    """The tokens of a sentence cut into pieces of ``sizes`` units (as :func:`split_units` cuts it), each
    renumbered from its piece's first unit. A token cut by a piece boundary (only where no syllable
    boundary was within the limit) is reported in each piece it has units in, with the same text."""
    out: list[tuple[Token, ...]] = []
    start = 0
    for size in sizes:
        end = start + size
        piece = []
        for t in tokens:
            a, b = max(t.first, start), min(t.first + t.count, end)
            if a < b:
                piece.append(replace(t, first=a - start, count=b - a))
        out.append(tuple(piece))
        start = end
    return out


def symbol_tokens(units: Sequence[Unit]) -> tuple[Token, ...]:
    """Tokens of symbol input: one per syllable (its phones as text, from the syllable flags) and one per
    break; no source spans (there is no text)."""
    out: list[Token] = []
    i, n = 0, len(units)
    while i < n:
        u = units[i]
        if u.is_break:
            out.append(Token("", "break", i, 1, None, u.break_level or 0))
            i += 1
            continue
        j = i + 1
        if u.syllable_flag not in ("s_both", "s_end"):
            while j < n and not units[j].is_break and units[j].syllable_flag not in ("s_begin", "s_both"):
                j += 1
                if units[j - 1].syllable_flag == "s_end":
                    break
        out.append(Token(" ".join(x.sy for x in units[i:j]), "phone", i, j - i))
        i = j
    return tuple(out)


def parse_units(line: str) -> list[Unit]:
    """One symbol line -> its units. A leading ``<n>\\t`` (ttsfrd line index) is dropped; a blank line -> []."""
    body = _LINE_INDEX_RE.sub("", line, count=1)
    return [Unit.parse(tok, pos) for pos, tok in enumerate(body.split())]


def format_units(units: Sequence[Unit]) -> str:
    """Units joined by one space (the inverse of :func:`parse_units` without the index)."""
    return " ".join(str(u) for u in units)


def with_voice(units: Sequence[Unit], emotion: str | None, speaker: str | None) -> list[Unit]:
    """A per-call override: ``emotion`` replaces the emotion of phone units (breaks keep 'emotion_none'),
    ``speaker`` the speaker of every unit; None leaves that field as it is. Names are not checked here:
    resolve them first with :meth:`Inventories.resolve_emotion` / :meth:`Inventories.resolve_speaker`.
    """
    out: list[Unit] = []
    for u in units:
        changes: dict[str, str] = {}
        if emotion is not None and u.emotion != "emotion_none" and u.emotion not in SPECIALS:
            changes["emotion"] = emotion
        if speaker is not None:
            changes["speaker"] = speaker
        out.append(replace(u, **changes) if changes else u)
    return out


@lru_cache(maxsize=1)
def _base_lists() -> dict[str, tuple[str, ...]]:
    raw = json.loads((Path(__file__).parent / "data" / "inventories.json").read_text("utf-8"))
    return {k: tuple(v) for k, v in raw.items() if not k.startswith("_")}


def sy_phones() -> tuple[str, ...]:
    """The sy symbols without the '@' prefix and without specials (a_c, ..., pau, #1..#4)."""
    return tuple(s[1:] for s in _base_lists()["sy"])


@dataclass(frozen=True)
class Inventories:
    """id <-> symbol tables for the six streams of one voice."""

    sy: tuple[str, ...]
    tone: tuple[str, ...]
    syllable_flag: tuple[str, ...]
    word_segment: tuple[str, ...]
    emo_category: tuple[str, ...]
    speaker: tuple[str, ...]
    has_mask: bool = True
    _index: dict[str, dict[str, int]] = field(default_factory=dict, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        for name in STREAMS:
            self._index[name] = {s: i for i, s in enumerate(getattr(self, name))}

    @classmethod
    def build(cls, speaker_list: list[str] | tuple[str, ...], has_mask: bool = True) -> Inventories:
        specials = SPECIALS if has_mask else SPECIALS[:-1]
        base = _base_lists()
        def full(k: str) -> tuple[str, ...]:
            return tuple(base[k]) + specials

        return cls(sy=full("sy"), tone=full("tone"), syllable_flag=full("syllable_flag"),
                   word_segment=full("word_segment"), emo_category=full("emo_category"),
                   speaker=tuple(speaker_list) + specials, has_mask=has_mask)

    def index(self, stream: str) -> dict[str, int]:
        return self._index[stream]

    def sizes(self) -> dict[str, int]:
        return {name: len(getattr(self, name)) for name in STREAMS}

    @property
    def emotions(self) -> tuple[str, ...]:
        """Emotion names usable for phones (no emotion_none, placeholders or specials)."""
        return tuple(
            e for e in self.emo_category if e.startswith("emotion_") and e != "emotion_none" and "placeholder" not in e
        )

    @property
    def speakers(self) -> tuple[str, ...]:
        return tuple(s for s in self.speaker if s not in SPECIALS)

    # The one rule for emotion and speaker names, whatever they come from (API, CLI, inline markup).

    def resolve_emotion(self, name: str) -> str:
        """'Happy', 'emotion_happy', ' HAPPY ' -> 'emotion_happy' (case-insensitive, prefix optional).

        Raises :class:`InvalidInputError` listing the valid names when the voice has no such emotion.
        """
        valid = self.emotions
        if isinstance(name, str):
            n = name.strip().lower()
            full = n if n.startswith("emotion_") else "emotion_" + n
            if full in valid:
                return full
        names = ", ".join(v.removeprefix("emotion_") for v in valid)
        raise InvalidInputError(f"unknown emotion {name!r} for this voice; valid emotions: {names}", param="emotion")

    def resolve_speaker(self, name: str) -> str:
        """A speaker name, case-insensitive and stripped -> the voice's token for it ('f7' -> 'F7').

        Raises :class:`InvalidInputError` listing the valid speakers when the voice has no such speaker.
        """
        valid = self.speakers
        if isinstance(name, str):
            if name in valid:
                return name
            n = name.strip().casefold()
            for s in valid:
                if s.casefold() == n:
                    return s
        raise InvalidInputError(f"unknown speaker {name!r} for this voice; valid speakers: {', '.join(valid)}",
                               param="speaker")

    def to_json(self) -> dict[str, list[str]]:
        return {name: list(getattr(self, name)) for name in STREAMS}

    @classmethod
    def from_json(cls, d: dict[str, list[str]], has_mask: bool = True) -> Inventories:
        return cls(sy=tuple(d["sy"]), tone=tuple(d["tone"]), syllable_flag=tuple(d["syllable_flag"]),
                   word_segment=tuple(d["word_segment"]), emo_category=tuple(d["emo_category"]),
                   speaker=tuple(d["speaker"]), has_mask=has_mask)


@dataclass(frozen=True)
class EncodedUnits:
    """Id streams of one sentence, without the trailing ``~`` (what the AM consumes).

    ``ling`` int64 [T, 4] (sy, tone, syllable_flag, word_segment); ``emotion``/``speaker`` int64 [T].
    """

    ling: Any
    emotion: Any
    speaker: Any

    @property
    def num_units(self) -> int:
        return int(self.ling.shape[0])


def encode_units(units: Sequence[Unit], inv: Inventories) -> EncodedUnits:
    """Encode one sentence's units into id streams.

    Unlike the reference, which silently drops an unknown sy symbol (desynchronising the streams), an
    unknown symbol in any field is an error naming the stream, the symbol and the unit's position.
    """
    import numpy as np

    if not units:
        raise InvalidInputError(f"symbol sequence is empty; give at least one {UNIT_FORMAT} unit")
    index = [inv.index(stream) for stream in STREAMS]
    rows = np.empty((len(units), 6), dtype=np.int64)
    for pos, unit in enumerate(units):
        for k, value in enumerate(unit.fields()):
            idx = index[k].get("@" + value if k == 0 else value)
            if idx is None or value in SPECIALS:
                stream = STREAMS[k]
                valid = inv.speakers if stream == "speaker" else None
                extra = f" (valid: {', '.join(valid)})" if valid else ""
                raise InvalidInputError(f"unit {pos} '{unit}': {stream} symbol '{value}' is not in the voice's inventory{extra}")
            rows[pos, k] = idx
    return EncodedUnits(ling=rows[:, :4].copy(), emotion=rows[:, 4].copy(), speaker=rows[:, 5].copy())


def encode_symbols(symbols: str, inv: Inventories) -> EncodedUnits:
    """Encode a ttsfrd symbol string (SPEC §e.1; a leading line index is accepted) into id streams."""
    return encode_units(parse_units(symbols), inv)


def split_units(units: list[Unit], max_units: int) -> list[list[Unit]]:
    """Split one sentence's units into pieces of at most ``max_units`` units (``max_units`` >= 1).

    A piece ends at the strongest break within the limit (#3, then #2, then #1); that break becomes #4, as
    each piece is a ttsfrd sentence of its own. Where no break lies within the limit (a prosodic word longer
    than the limit, or a line with no breaks at all), the piece is cut anyway at the last word boundary
    within the limit, else at the last syllable boundary, else after exactly ``max_units`` units; such a
    cut adds no break. The pieces concatenate back to ``units`` but for the #-levels rewritten to #4.
    """
    if not isinstance(max_units, int) or max_units < 1:
        raise InvalidInputError(f"max_units must be an integer >= 1, got {max_units!r}")
    pieces: list[list[Unit]] = []
    start, n = 0, len(units)
    while n - start > max_units:
        window = range(start, start + max_units)
        cut = -1
        for level in (3, 2, 1):
            cut = next((i for i in reversed(window) if units[i].break_level == level), -1)
            if cut >= 0:
                break
        if cut >= 0:
            piece = units[start : cut + 1]
            piece[-1] = replace(piece[-1], sy="#4")
        else:
            # cut after unit i where unit i+1 starts a word, else a syllable, else after max_units units
            end = start + max_units
            cut = next((i for i in range(end - 1, start - 1, -1) if _starts_word(units[i + 1])), -1)
            if cut < 0:
                cut = next((i for i in range(end - 1, start - 1, -1) if _starts_syllable(units[i + 1])), end - 1)
            piece = units[start : cut + 1]
        pieces.append(piece)
        start = cut + 1
    if start < n:
        pieces.append(units[start:])
    return pieces


def _starts_word(u: Unit) -> bool:
    return u.is_break or u.word_segment in ("word_begin", "word_both")


def _starts_syllable(u: Unit) -> bool:
    return u.is_break or u.syllable_flag in ("s_begin", "s_both")

"""Symbol inventories of the KAN-TTS PinYin linguistic units (SPEC §e.3), torch-free.

Each stream's id list is its base list followed by the specials ``_`` (pad), ``~`` (eos) and
``@[MASK]``; the id of a symbol is its index. ``has_mask: false`` models drop the last entry, which
does not move the ids of real symbols. The speaker list is per voice (``linguistic_unit.speaker_list``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

PAD, EOS, MASK = "_", "~", "@[MASK]"
SPECIALS = (PAD, EOS, MASK)
STREAMS = ("sy", "tone", "syllable_flag", "word_segment", "emo_category", "speaker")


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


def encode_symbols(symbols: str, inv: Inventories) -> EncodedUnits:
    """Encode a ttsfrd symbol string (SPEC §e.1) into id streams.

    Unlike the reference, which silently drops an unknown sy symbol (desynchronising the streams), an
    unknown symbol in any field is an error naming the symbol and the unit's position.
    """
    import numpy as np

    from .errors import InvalidInputError

    units = symbols.split()
    if not units:
        raise InvalidInputError("symbol sequence is empty; give at least one {sy$tone$flag$segment$emotion$speaker} unit")
    rows = np.empty((len(units), 6), dtype=np.int64)
    for pos, unit in enumerate(units):
        parts = unit.strip("{}").split("$")
        if len(parts) != 6:
            raise InvalidInputError(
                f"unit {pos} '{unit}' has {len(parts)} fields; expected 6: {{sy$tone$syllable_flag$word_segment$emotion$speaker}}")
        for k, (stream, value) in enumerate(zip(STREAMS, parts, strict=True)):
            key = "@" + value if stream == "sy" else value
            idx = inv.index(stream).get(key)
            if idx is None or value in SPECIALS:
                valid = inv.speakers if stream == "speaker" else None
                extra = f" (valid: {', '.join(valid)})" if valid else ""
                raise InvalidInputError(f"unit {pos} '{unit}': {stream} symbol '{value}' is not in the voice's inventory{extra}")
            rows[pos, k] = idx
    return EncodedUnits(ling=rows[:, :4].copy(), emotion=rows[:, 4].copy(), speaker=rows[:, 5].copy())

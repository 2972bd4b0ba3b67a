"""Timestamps written out: every :class:`~.timestamps.Mark` as JSON, or caption cues as SRT / WebVTT.

Cues are readable caption lines: a cue ends at punctuation (a break of level 3 or 4: ，、；： and the
sentence end), or, once it holds ``max_chars`` characters, at the next prosodic-word break. A cue runs
from its first spoken mark's start to its last one's end (the pauses around it are not captioned) and
shows the caller's own text for that stretch (2024年 rather than 二零二四年) where the marks carry input
spans, else the spoken text.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidInputError
from ..utils import write_atomic
from .timestamps import Mark

FORMATS = (".json", ".srt", ".vtt")
MAX_CUE_CHARS = 24


@dataclass(frozen=True)
class Cue:
    start_s: float
    end_s: float
    text: str


def check_timestamps_path(path: str | Path) -> Path:
    """``path`` as a timestamps output: a known suffix, an existing folder, not a folder itself."""
    p = Path(path)
    if p.suffix.lower() not in FORMATS:
        raise InvalidInputError(f"timestamps: cannot tell the format of {p.name!r} from its suffix; give a path "
                                f"ending in {', '.join(FORMATS)}", param="timestamps")
    folder = p.parent if str(p.parent) else Path(".")
    if not folder.is_dir():
        raise InvalidInputError(f"timestamps: folder {folder} does not exist; create it or choose another path",
                                param="timestamps")
    if p.is_dir():
        raise InvalidInputError(f"timestamps: {p} is a directory; give a file path ending in {', '.join(FORMATS)}",
                                param="timestamps")
    return p


def _spoken_text(marks: Sequence[Mark]) -> str:
    out = ""
    for m in marks:
        if not m.text:
            continue
        latin = m.text[:1].isascii() and m.text[:1].isalnum()
        if latin and out and out[-1:].isascii() and out[-1:].isalnum():
            out += " "
        out += m.text
    return out


def _cue_text(marks: Sequence[Mark], source: str | None) -> str:
    spans = [m.source for m in marks if m.source is not None]
    spoken = [m for m in marks if m.kind != "break"]
    if source is not None and spans and all(m.source is not None for m in spoken):
        text = source[min(a for a, _ in spans):max(b for _, b in spans)]
    else:
        text = _spoken_text(marks)
    return " ".join(text.split())


def cues(marks: Sequence[Mark], source: str | None = None, max_chars: int = MAX_CUE_CHARS) -> list[Cue]:
    """Caption cues over ``marks`` (in stream order); ``source``: the input text, for the cue text."""
    groups: list[list[Mark]] = []
    cur: list[Mark] = []
    chars = 0
    for i, m in enumerate(marks):
        cur.append(m)
        chars += len(m.text) if m.kind != "break" else 0
        if m.kind != "break":
            continue
        nxt = marks[i + 1] if i + 1 < len(marks) else None
        # A length cut must not split the expansion of one input token (二零二|四 of "2024") in two cues.
        shared = (nxt is not None and nxt.source_start is not None
                  and any(x.source_end is not None and x.source_end > nxt.source_start for x in cur))
        if m.level >= 3 or (chars >= max_chars and not shared):
            groups.append(cur)
            cur, chars = [], 0
    if cur:
        groups.append(cur)
    out = []
    for g in groups:
        spoken = [m for m in g if m.kind != "break"]
        if not spoken:
            continue
        text = _cue_text(g, source)
        if text:
            out.append(Cue(spoken[0].start_s, spoken[-1].end_s, text))
    return out


def _clock(t: float, sep: str) -> str:
    ms = int(round(t * 1000))
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def to_srt(items: Sequence[Cue]) -> str:
    return "".join(f"{i}\n{_clock(c.start_s, ',')} --> {_clock(c.end_s, ',')}\n{c.text}\n\n"
                   for i, c in enumerate(items, 1))


def to_vtt(items: Sequence[Cue]) -> str:
    return "WEBVTT\n\n" + "".join(f"{_clock(c.start_s, '.')} --> {_clock(c.end_s, '.')}\n{c.text}\n\n" for c in items)


def to_json(marks: Sequence[Mark], sample_rate: int, samples: int) -> str:
    return json.dumps({"sample_rate": sample_rate, "duration_s": samples / sample_rate, "samples": samples,
                       "marks": [m.to_json() for m in marks]}, ensure_ascii=False, indent=1) + "\n"


def write_timestamps(path: str | Path, marks: Sequence[Mark], sample_rate: int, samples: int,
                     source: str | None = None) -> Path:
    """Write ``marks`` to ``path`` in the format its suffix names, atomically (the old file or the new
    one, never a torn one)."""
    p = check_timestamps_path(path)
    suffix = p.suffix.lower()
    if suffix == ".json":
        data = to_json(marks, sample_rate, samples)
    elif suffix == ".srt":
        data = to_srt(cues(marks, source))
    else:
        data = to_vtt(cues(marks, source))
    write_atomic(p, data.encode("utf-8"))
    return p

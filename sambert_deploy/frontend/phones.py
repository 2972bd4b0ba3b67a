"""Pinyin syllable -> the two ``_c`` phones of the KAN-TTS PinYin phone set.

The table follows DAMO's ``languages/PinYin/py2phoneMap.txt`` as described in
``shared/kantts/frontend/README.md``: every syllable is exactly an onset and a final; zero-initial
syllables take ``y_c``/``w_c`` (written remainder) or ``ga``/``ge``/``go``; x is ``xx_c``; ü is
written ``v``. Erhua syllables (``dianr``) use the r-final of the inventory (``ianr_c``).
"""

from __future__ import annotations

import re
from functools import lru_cache

from ..errors import InvalidInputError

_INITIALS = (
    "zh",
    "ch",
    "sh",
    "b",
    "p",
    "m",
    "f",
    "d",
    "t",
    "n",
    "l",
    "g",
    "k",
    "h",
    "j",
    "q",
    "x",
    "r",
    "z",
    "c",
    "s",
)

# Written remainders after y/w map to finals literally (README table), so 'ye' -> e_c, 'you' -> ou_c.
_Y_FINALS = {
    "a": "a", "an": "an", "ang": "ang", "ao": "ao", "e": "e", "i": "i", "in": "in", "ing": "ing",
    "o": "o", "ong": "ong", "ou": "ou", "u": "v", "uan": "van", "ue": "ve", "un": "vn",
    "v": "v", "van": "van", "ve": "ve", "vn": "vn",
}  # fmt: skip
_W_FINALS = {
    "a": "a",
    "ai": "ai",
    "an": "an",
    "ang": "ang",
    "ei": "ei",
    "en": "en",
    "eng": "eng",
    "o": "o",
    "u": "u",
}

# Finals that may follow a consonant initial (after the iu/ui/un and j/q/x + u rewrites).
_FINALS = {
    "a", "ai", "an", "ang", "ao", "e", "ei", "en", "eng", "er", "i", "ia", "ian", "iang", "iao", "ie", "in",
    "ing", "iong", "iou", "o", "ong", "ou", "u", "ua", "uai", "uan", "uang", "uei", "uen", "ueng", "uo", "v",
    "van", "ve", "vn", "io", "ih", "ii",
}  # fmt: skip

_BARE = {
    "a": "ga", "ai": "ga", "an": "ga", "ang": "ga", "ao": "ga",
    "e": "ge", "ei": "ge", "en": "ge", "eng": "ge", "er": "ge",
    "o": "go", "ou": "go",
}  # fmt: skip

# Interjection syllables without a vowel letter: 嗯 (n/ng), 呣 (m), 哼 (hm/hng) -> ge en_c per README.
_SPECIAL = {
    "n": ("ge", "en_c"),
    "ng": ("ge", "en_c"),
    "m": ("ge", "en_c"),
    "hm": ("h_c", "en_c"),
    "hng": ("h_c", "en_c"),
}

# r-finals present in the inventory (SPEC e.3 ids 104-138), keyed by the plain final.
_ERHUA_FINALS = {
    "ai": "air_c", "ang": "angr_c", "an": "anr_c", "ao": "aor_c", "a": "ar_c", "ei": "eir_c", "eng": "engr_c",
    "en": "enr_c", "iang": "iangr_c", "ian": "ianr_c", "iao": "iaor_c", "ia": "iar_c", "ie": "ier_c",
    "ih": "ihr_c", "ii": "iir_c", "ing": "ingr_c", "in": "inr_c", "iong": "iongr_c", "iou": "iour_c",
    "i": "ir_c", "ong": "ongr_c", "o": "or_c", "ou": "our_c", "uai": "uair_c", "uang": "uangr_c",
    "uan": "uanr_c", "ua": "uar_c", "uei": "ueir_c", "uen": "uenr_c", "uo": "uor_c", "u": "ur_c",
    "van": "vanr_c", "ve": "ver_c", "vn": "vnr_c", "v": "vr_c", "e": "er_c",
}  # fmt: skip

_PINYIN_RE = re.compile(r"^([a-zü]+?)([1-5])?$")


def split_tone(syllable: str) -> tuple[str, int]:
    """'hao3' -> ('hao', 3); a missing tone digit reads as neutral (5)."""
    s = syllable.strip().lower().replace("ü", "v").replace("u:", "v")
    m = _PINYIN_RE.match(s)
    if not m:
        raise InvalidInputError(
            f"not a pinyin syllable: {syllable!r} (letters then an optional tone digit 1-5)"
        )
    return m.group(1), int(m.group(2) or 5)


def _plain_final(base: str) -> tuple[str, str]:
    """Onset phone and the bare final name (without '_c') of a toneless, non-erhua syllable."""
    if base in _SPECIAL:
        onset, fin = _SPECIAL[base]
        return onset, fin[:-2]
    if base[0] == "y":
        rest = base[1:]
        if rest in _Y_FINALS:
            return "y_c", _Y_FINALS[rest]
        raise KeyError(base)
    if base[0] == "w":
        rest = base[1:]
        if rest in _W_FINALS:
            return "w_c", _W_FINALS[rest]
        raise KeyError(base)
    if base in _BARE:
        return _BARE[base], base
    for ini in _INITIALS:
        if base.startswith(ini) and len(base) > len(ini):
            fin = base[len(ini) :]
            break
    else:
        raise KeyError(base)
    if ini in ("zh", "ch", "sh", "r") and fin == "i":
        fin = "ih"
    elif ini in ("z", "c", "s") and fin == "i":
        fin = "ii"
    elif ini in ("j", "q", "x") and fin[0] == "u":
        fin = "v" + fin[1:]  # pinyin writes ü as u after j/q/x
    elif fin == "ue" and ini in ("n", "l"):
        fin = "ve"
    if fin == "iu":
        fin = "iou"
    elif fin == "ui":
        fin = "uei"
    elif fin == "un":
        fin = "uen"
    if fin not in _FINALS:
        raise KeyError(base)
    return ini + "_c" if ini != "x" else "xx_c", fin


@lru_cache(maxsize=4096)
def syllable_phones(base: str) -> tuple[str, str]:
    """Toneless pinyin ('zhuang', 'dianr', 'nv') -> (onset, final) phones; KeyError when unknown.

    An 'r' ending on a syllable that is not itself 'er' marks erhua and selects the r-final.
    """
    base = base.lower().replace("ü", "v")
    if base.endswith("r") and base not in ("er",) and len(base) > 1:
        onset, fin = _plain_final(base[:-1])
        if fin not in _ERHUA_FINALS:
            raise KeyError(base)
        return onset, _ERHUA_FINALS[fin]
    onset, fin = _plain_final(base)
    return onset, fin + "_c"


def is_valid_syllable(base: str) -> bool:
    try:
        syllable_phones(base)
    except KeyError:
        return False
    return True


def can_take_erhua(base: str) -> bool:
    """Whether ``base + 'r'`` has an r-final in the inventory (so 儿 can merge into it)."""
    return base != "er" and is_valid_syllable(base + "r")

"""The front end: text -> ttsfrd units (SPEC §e.1, shared/kantts/frontend/README.md).

Stages: blocks of whole sentences (:class:`.reader.SentenceReader`, also for a whole text) -> per block:
emotion markup -> normalization -> sentence split -> per sentence: tokens (Han runs, Latin words,
punctuation) -> jieba words -> pinyin (polyphones, neutral tone, erhua) -> 一/不 and third-tone sandhi ->
prosodic words -> :class:`~sambert_deploy.symbols.Unit` s with a break unit after every prosodic word (#1,
or #3 at ，、；：, #4 at the sentence end).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from ..errors import InvalidInputError
from ..symbols import Inventories, Unit, format_units, split_units
from . import english, g2p, normalize, sandhi, split
from .g2p import Word
from .lexicon import Lexicon
from .phones import split_tone, syllable_phones
from .prosody import ProsodyOptions, group_prosodic_words
from .reader import SentenceReader

logger = logging.getLogger(__name__)

# Punctuation inside a sentence -> break level after the preceding prosodic word.
_BREAK_PUNCT = {
    "，": 3, "、": 3, "；": 3, "：": 3, ":": 3, "…": 3, "—": 3, "（": 3, "）": 3,
    "。": 4, "！": 4, "？": 4, ".": 3,
}  # fmt: skip
# Marks that separate words but are not read and set no break (quotes, brackets, joiners).
_SILENT = set("“”‘’\"'「」『』《》〈〉【】[]{}<>·・-_/\\|*#^`=+~")

_TOKEN_RE = re.compile(
    r"(?P<emo>[\ue000-\ue0ff])"
    r"|(?P<han>[\u3007\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f]+)"
    r"|(?P<latin>[A-Za-z]+(?:'[A-Za-z]+)*)"
    r"|(?P<digit>\d+)"
    r"|(?P<space>\s+)"
    r"|(?P<other>.)",
    re.S,
)
_SANDHI_ACROSS_PW = True  # dev labels apply 3-3 sandhi through #1 breaks (phrase = between punctuation)
_SPEAKER_RE = re.compile(r"^[^\s${}]+$")


@dataclass(frozen=True)
class FrontEndOptions:
    """Options of :class:`FrontEnd`.

    emotion: default emotion of phone units ('emotion_neutral' or a short name such as 'happy').
    speaker: speaker token written into every unit (ttsfrd writes 'F7'; the voice's speaker_list must hold it).
    lexicon_path: optional user lexicon (see :mod:`.lexicon`) overriding segmentation and pinyin.
    max_units_per_sentence: split longer sentences into several lines of at most this many units (see
        :func:`split_units`).
    speakers: the valid speaker tokens (matched case-insensitively, as :meth:`Inventories.resolve_speaker`
        does); None accepts any token without whitespace, '$', '{' or '}'.
    inventories: the voice's symbol inventories: emotion names (arguments and inline markup) and speakers
        are resolved against the voice itself, the one place they are resolved (``speakers`` is then
        ignored); None: the default emotion inventory.
    """

    emotion: str = "emotion_neutral"
    speaker: str = "F7"
    lexicon_path: str | os.PathLike[str] | None = None
    max_units_per_sentence: int | None = None
    speakers: tuple[str, ...] | None = None
    prosody: ProsodyOptions = field(default_factory=ProsodyOptions)
    inventories: Inventories | None = None


@dataclass
class _Phrase:
    words: list[Word]
    level: int  # break after the last prosodic word: 3 (，、...) or 4 (sentence end)


class FrontEnd:
    """Chinese (+ English) text -> ttsfrd units. Thread-safe after construction: per-text state (the current
    emotion, the text buffer) lives in a :class:`SentenceReader`.
    """

    def __init__(self, options: FrontEndOptions | None = None):
        self.options = options or FrontEndOptions()
        voice = self.options.inventories
        self._inv = voice if voice is not None else Inventories.build(["F7"])
        self._emotions = self._inv.emotions
        self._speaker_inv = voice if voice is not None else (
            Inventories.build(self.options.speakers) if self.options.speakers is not None else None)
        self.emotion = self._inv.resolve_emotion(self.options.emotion)
        self.speaker = self._check_speaker(self.options.speaker)
        mx = self.options.max_units_per_sentence
        if mx is not None and (not isinstance(mx, int) or mx < 4):
            raise InvalidInputError(f"max_units_per_sentence must be an integer >= 4 or None, got {mx!r}")
        self.lexicon = Lexicon.load(self.options.lexicon_path) if self.options.lexicon_path else Lexicon()

    # --- validation -----------------------------------------------------------------------------------------

    @property
    def emotions(self) -> tuple[str, ...]:
        return self._emotions

    def _check_speaker(self, speaker: str) -> str:
        if not isinstance(speaker, str):
            raise InvalidInputError(f"speaker must be a string, got {type(speaker).__name__}")
        if self._speaker_inv is not None:
            return self._speaker_inv.resolve_speaker(speaker)
        if not _SPEAKER_RE.match(speaker):
            raise InvalidInputError(
                f"invalid speaker token {speaker!r}: it must be non-empty without spaces, '$', '{{' or '}}'"
            )
        return speaker

    # --- public API -----------------------------------------------------------------------------------------

    def reader(self, *, emotion: str | None = None, speaker: str | None = None) -> SentenceReader:
        """An incremental front end for text that arrives in pieces (see :class:`SentenceReader`).

        ``emotion``/``speaker`` as for :meth:`units`; they are checked here, before any text.
        """
        emo = self._inv.resolve_emotion(emotion) if emotion is not None else self.emotion
        spk = self._check_speaker(speaker) if speaker is not None else self.speaker
        return SentenceReader(self, emo, spk)

    def units(self, text: str, *, emotion: str | None = None, speaker: str | None = None) -> list[list[Unit]]:
        """Per sentence (or piece of at most ``max_units_per_sentence`` units), its units; [] if nothing is
        speakable. The same code path as :meth:`reader`, fed the whole text at once.
        """
        if not isinstance(text, str):
            raise InvalidInputError(f"text must be a string, got {type(text).__name__}")
        rd = self.reader(emotion=emotion, speaker=speaker)
        rd.feed(text)
        rd.finish()
        out: list[list[Unit]] = []
        while (sent := rd.next_sentence()) is not None:
            out.append(sent)
        return out

    def sentences(self, text: str, *, emotion: str | None = None, speaker: str | None = None) -> list[str]:
        """One symbol string per sentence (units joined by one space, no index); [] if nothing is speakable."""
        return [format_units(u) for u in self.units(text, emotion=emotion, speaker=speaker)]

    def to_lines(self, text: str, *, emotion: str | None = None, speaker: str | None = None) -> list[str]:
        """ttsfrd lines ``<n>\\t<unit> <unit> ... <unit> `` (every unit followed by one space), n from 0."""
        return list(self.iter_lines(text, emotion=emotion, speaker=speaker))

    def iter_lines(self, text: str, *, emotion: str | None = None, speaker: str | None = None) -> Iterator[str]:
        """:meth:`to_lines`, each line as soon as its sentence is analysed."""
        if not isinstance(text, str):
            raise InvalidInputError(f"text must be a string, got {type(text).__name__}")
        rd = self.reader(emotion=emotion, speaker=speaker)
        rd.feed(text)
        rd.finish()
        i = 0
        while (u := rd.next_sentence()) is not None:
            yield format_line(i, u)
            i += 1

    def lines_from_inputs(
        self, inputs: Iterable[str], *, emotion: str | None = None, speaker: str | None = None, start: int = 1
    ) -> Iterator[str]:
        """For the CLI's ``-`` mode: each input (a stdin line) -> its sentences as ``<n>\\t<units> `` lines with
        ``n`` the input's line number (from ``start``); inputs with nothing speakable print nothing.
        Errors name the line number.
        """
        for n, line in enumerate(inputs, start):
            if not isinstance(line, str):
                raise InvalidInputError(f"line {n}: text must be a string, got {type(line).__name__}")
            # The incremental reader, not units(): a long line's first sentences come out while the rest
            # is still to be analysed (a 2 MB line took 27 s to its first output line).
            try:
                rd = self.reader(emotion=emotion, speaker=speaker)
                rd.feed(line.rstrip("\r\n"))
                rd.finish()
                while (u := rd.next_sentence()) is not None:
                    yield format_line(n, u)
            except InvalidInputError as e:
                raise InvalidInputError(f"line {n}: {e}") from None

    # --- the incremental reader's entry (SentenceReader calls it per block) ----------------------------------

    def block_units(self, block: str, default_emotion: str, spk: str, state: list[str]) -> list[list[Unit]]:
        """Units of one block of whole sentences. ``state[0]`` is the current emotion, carried from block to
        block by the caller's reader; ``default_emotion`` is what ``[/emotion]`` returns to.
        """
        marked, table = split.parse_markup(block, default_emotion, self._inv)
        out: list[list[Unit]] = []
        for sent in split.split_sentences(normalize.normalize(marked)):
            units = self._sentence_units(sent, table, state, spk)
            if units:
                out.extend(self._limit_length(units))
        return out

    def _analyze_sentence(
        self, sent: str, table: list[str], state: list[str]
    ) -> list[tuple[list[list[Word]], int]]:
        """Phrases of one sentence as (prosodic words, break level after the phrase), sandhi applied."""
        out = []
        for ph in self._phrases(sent, table, state):
            sandhi.yi_bu_sandhi(ph.words)
            for w in ph.words:
                sandhi.third_tone_in_word(w, g2p.word_freq)
            groups = group_prosodic_words(ph.words, self.options.prosody)
            if _SANDHI_ACROSS_PW:
                sandhi.third_tone_across([w for g in groups for w in g])
            else:
                for g in groups:
                    sandhi.third_tone_across(g)
            out.append((groups, ph.level))
        return out

    def _sentence_units(self, sent: str, table: list[str], state: list[str], spk: str) -> list[Unit]:
        units: list[Unit] = []
        for groups, level in self._analyze_sentence(sent, table, state):
            for gi, g in enumerate(groups):
                pw_units = _pw_units(g, spk)
                if not pw_units:
                    continue
                units.extend(pw_units)
                units.append(_break_unit(level if gi == len(groups) - 1 else 1, spk))
        if units:
            units[-1] = _break_unit(4, spk)  # a sentence always closes with #4
        return units

    def pinyin(self, text: str) -> list[str]:
        """Per sentence, the surface pinyin with prosodic-word breaks, e.g. 'ni2 hao3 #4' (inspection/tests).

        English words appear as their text; breaks as '#1'/'#3'/'#4' after each prosodic word.
        """
        if not isinstance(text, str):
            raise InvalidInputError(f"text must be a string, got {type(text).__name__}")
        marked, table = split.parse_markup(text, self.emotion, self._inv)
        state = [self.emotion]
        out = []
        for sent in split.split_sentences(normalize.normalize(marked)):
            toks: list[str] = []
            for groups, level in self._analyze_sentence(sent, table, state):
                for gi, g in enumerate(groups):
                    toks.extend(t for w in g for t in ([w.text] if w.latin else w.syllables))
                    toks.append(f"#{level if gi == len(groups) - 1 else 1}")
            if toks:
                toks[-1] = "#4"
                out.append(" ".join(toks))
        return out

    def _phrases(self, sent: str, table: list[str], state: list[str]) -> list[_Phrase]:
        phrases: list[_Phrase] = []
        words: list[Word] = []
        dropped: list[str] = []

        def close(level: int) -> None:
            nonlocal words
            if words:
                phrases.append(_Phrase(words, level))
                words = []
            elif phrases:
                phrases[-1].level = max(phrases[-1].level, level)

        for m in _TOKEN_RE.finditer(sent):
            kind = m.lastgroup
            tok = m.group(0)
            if kind == "emo":
                state[0] = table[ord(tok) - split.SENTINEL_BASE]
            elif kind == "han":
                words.extend(self._han_words(tok, state[0], words[-1] if words else None, dropped))
            elif kind == "digit":
                words.extend(
                    self._han_words(normalize.cardinal(tok), state[0], words[-1] if words else None, dropped)
                )
            elif kind == "latin":
                sylls = english.english_syllables(tok)
                if sylls:
                    words.append(Word(tok, "eng", [], state[0], latin=True, phones=sylls))
            elif kind == "other":
                if tok in _BREAK_PUNCT:
                    close(_BREAK_PUNCT[tok])
                elif tok not in _SILENT:
                    dropped.append(tok)
        close(4)
        if dropped:
            logger.warning("dropped characters with no reading: %s", " ".join(sorted(set(dropped))))
        return phrases

    def _han_words(self, run: str, emotion: str, prev: Word | None, dropped: list[str]) -> list[Word]:
        out: list[Word] = []
        for piece, fixed in self.lexicon.split(run):
            if fixed is not None:
                out.append(Word(piece, "lex", list(fixed), emotion, locked=True))
                continue
            segs = g2p.segment(piece)
            for k, (w, pos) in enumerate(segs):
                nxt = segs[k + 1] if k + 1 < len(segs) else None
                before = out[-1] if out else prev
                pys = g2p.word_pinyin(w, pos, before, nxt)
                if not all(pys):
                    dropped.extend(c for c, p in zip(w, pys, strict=False) if not p)
                    keep = [(c, p) for c, p in zip(w, pys, strict=False) if p]
                    w = "".join(c for c, _ in keep)
                    pys = [p for _, p in keep]
                    if not w:
                        continue
                pys, _chars = g2p.merge_erhua(w, pys, pos)
                if w == "儿" and out and g2p.can_merge_er(out[-1]):
                    # jieba often cuts the erhua suffix off (老汉|儿, 应景|儿): merge it into the previous word
                    last = out[-1]
                    last.syllables[-1] = g2p.erhua_syllable(last.syllables[-1])
                    last.text += w
                    continue
                out.append(Word(w, pos, pys, emotion))
        return out

    def _limit_length(self, units: list[Unit]) -> list[list[Unit]]:
        mx = self.options.max_units_per_sentence
        if mx is None or len(units) <= mx:
            return [units]
        return split_units(units, mx)



def _position(prefix: str, i: int, n: int, single_item: bool) -> str:
    """KAN-TTS position flag of item i of n: <prefix>_both / _begin / _end / _middle."""
    if single_item:
        return f"{prefix}_both"
    if i == 0:
        return f"{prefix}_begin"
    if i == n - 1:
        return f"{prefix}_end"
    return f"{prefix}_middle"


def format_line(index: int, units: Sequence[Unit]) -> str:
    """One ttsfrd line: ``<index>\\t`` then every unit followed by one space."""
    return f"{index}\t" + "".join(f"{u} " for u in units)


def _break_unit(level: int, spk: str) -> Unit:
    return Unit(f"#{level}", "tone_none", "s_none", "word_none", "emotion_none", spk)


def _pw_units(group: list[Word], spk: str) -> list[Unit]:
    """Units of one prosodic word with the KAN-TTS position rules (Syllable.GetPhoneMeta)."""
    sylls: list[tuple[list[str], str, str]] = []  # phones, tone, emotion
    for w in group:
        if w.latin:
            for syl in w.phones or []:
                sylls.append((syl, "tone0", w.emotion))
            continue
        for s in w.syllables:
            base, tone = split_tone(s)
            try:
                onset, final = syllable_phones(base)
            except KeyError:
                logger.warning("no phones for pinyin %r in %r; syllable dropped", s, w.text)
                continue
            sylls.append(([onset, final], f"tone{tone}", w.emotion))
    if not sylls:
        return []
    n_phones = sum(len(p) for p, _, _ in sylls)
    single = len(sylls) == 1
    out: list[Unit] = []
    for si, (phones, tone_name, emo) in enumerate(sylls):
        wpos = _position("word", si, len(sylls), single_item=n_phones == 1)
        for pi, ph in enumerate(phones):
            spos = _position("s", pi, len(phones), single_item=len(phones) == 1)
            wp = wpos
            if wp == "word_begin" and spos == "s_end" and single:
                wp = "word_end"
            elif wp == "word_begin" and spos not in ("s_begin", "s_both"):
                wp = "word_middle"
            elif wp == "word_end" and spos not in ("s_end", "s_both"):
                wp = "word_middle"
            out.append(Unit(ph, tone_name, spos, wp, emo, spk))
    return out

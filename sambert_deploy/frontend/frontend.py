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
from ..symbols import Inventories, Token, Unit, format_units, split_tokens, split_units
from . import english, g2p, normalize, sandhi, split
from .g2p import Word
from .lexicon import Lexicon
from .phones import split_tone, syllable_phones
from .prosody import ProsodyOptions, group_prosodic_words
from .reader import SentenceReader
from .spans import SourceMap, Span, union, word_chars

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
    chars: list[list[Span] | None] = field(default_factory=list)  # per word: its characters' sentence spans
    punct: Span | None = None  # the punctuation that closed the phrase (sentence span)


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

    def block_units(self, block: str, default_emotion: str, spk: str, state: list[str], base: int = 0,
                    tokens: list[tuple[Token, ...]] | None = None) -> list[list[Unit]]:
        """Units of one block of whole sentences. ``state[0]`` is the current emotion, carried from block to
        block by the caller's reader; ``default_emotion`` is what ``[/emotion]`` returns to. Where
        ``tokens`` is given, each sentence's :class:`~sambert_deploy.symbols.Token` s are appended to it
        (one tuple per sentence returned), their source spans offset by ``base`` (the block's position
        in the caller's input).
        """
        marked, table = split.parse_markup(block, default_emotion, self._inv)
        norm = normalize.normalize(marked)
        smap = SourceMap(block, marked, norm, base) if tokens is not None else None
        out: list[list[Unit]] = []
        pos = 0
        for sent in split.split_sentences(norm):
            # a sentence is a stripped slice of the normalized text, in order: found from where the last ended
            at = norm.find(sent, pos)
            pos = at + len(sent) if at >= 0 else pos
            units, toks = self._sentence_units(sent, table, state, spk)
            if units:
                pieces = self._limit_length(units)
                out.extend(pieces)
                if tokens is not None and smap is not None:
                    placed = tuple(_placed(t, smap, at) for t in toks)
                    tokens.extend(split_tokens(placed, [len(p) for p in pieces]))
        return out

    def _analyze_sentence(
        self, sent: str, table: list[str], state: list[str]
    ) -> list[tuple[list[list[Word]], int, _Phrase]]:
        """Phrases of one sentence as (prosodic words, break level after the phrase, the phrase), sandhi
        applied."""
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
            out.append((groups, ph.level, ph))
        return out

    def _sentence_units(self, sent: str, table: list[str], state: list[str], spk: str) -> tuple[list[Unit],
                                                                                                 list[Token]]:
        """The sentence's units and its tokens (source spans in sentence coordinates)."""
        units: list[Unit] = []
        tokens: list[Token] = []
        for groups, level, ph in self._analyze_sentence(sent, table, state):
            places = _group_chars(groups, ph)
            for gi, g in enumerate(groups):
                pw_units, pw_tokens = _pw_units(g, spk, places[gi])
                if not pw_units:
                    continue
                tokens.extend(Token(t.text, t.kind, t.first + len(units), t.count, t.source) for t in pw_tokens)
                units.extend(pw_units)
                last = gi == len(groups) - 1
                lvl = level if last else 1
                punct = ph.punct if last else None
                text = sent[punct[0]:punct[1]] if punct else ""
                tokens.append(Token(text, "break", len(units), 1, punct, lvl))
                units.append(_break_unit(lvl, spk))
        if units:
            units[-1] = _break_unit(4, spk)  # a sentence always closes with #4
            end = tokens[-1]
            tokens[-1] = Token(end.text, end.kind, end.first, end.count, end.source, 4)
        return units, tokens

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
            for groups, level, _ in self._analyze_sentence(sent, table, state):
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
        chars: list[list[Span] | None] = []
        dropped: list[str] = []

        def close(level: int, punct: Span | None = None) -> None:
            nonlocal words, chars
            if words:
                phrases.append(_Phrase(words, level, chars, punct))
                words, chars = [], []
            elif phrases:
                last = phrases[-1]
                last.level = max(last.level, level)
                last.punct = union([last.punct, punct])

        def add(new: list[Word], run: str, at: int, whole: Span | None = None) -> None:
            words.extend(new)
            if whole is not None:  # text the front end spelled out itself: every character from the whole token
                chars.extend([whole] * len(w.text) for w in new)
            else:
                chars.extend(word_chars(run, [w.text for w in new], at))

        for m in _TOKEN_RE.finditer(sent):
            kind = m.lastgroup
            tok = m.group(0)
            if kind == "emo":
                state[0] = table[ord(tok) - split.SENTINEL_BASE]
            elif kind == "han":
                add(self._han_words(tok, state[0], words[-1] if words else None, dropped), tok, m.start())
            elif kind == "digit":
                spelled = normalize.cardinal(tok)
                add(self._han_words(spelled, state[0], words[-1] if words else None, dropped), spelled, 0,
                    (m.start(), m.end()))
            elif kind == "latin":
                sylls = english.english_syllables(tok)
                if sylls:
                    add([Word(tok, "eng", [], state[0], latin=True, phones=sylls)], tok, m.start())
            elif kind == "other":
                if tok in _BREAK_PUNCT:
                    close(_BREAK_PUNCT[tok], (m.start(), m.end()))
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
            out.extend(g2p.run_words(piece, out[-1] if out else prev, emotion, dropped))
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


def _placed(t: Token, smap: SourceMap, at: int) -> Token:
    """``t`` with its sentence span (the sentence at ``at`` of the normalized block) as an input span."""
    if t.source is None or at < 0:  # at < 0: the sentence was not found in the block (never seen): no span
        return Token(t.text, t.kind, t.first, t.count, None, t.level)
    return Token(t.text, t.kind, t.first, t.count, smap.span(at + t.source[0], at + t.source[1]), t.level)


def _group_chars(groups: list[list[Word]], ph: _Phrase) -> list[list[list[Span] | None]]:
    """Per prosodic word, per word in it, its characters' sentence spans (None where unknown). Grouping
    may cut a long word into feet and drops words with no syllables, but keeps the text in order."""
    flat: list[Span | None] = []
    texts: list[str] = []
    for i, w in enumerate(ph.words):
        if w.syllables or w.latin:
            cs = ph.chars[i] if i < len(ph.chars) else None
            flat.extend(cs if cs is not None and len(cs) == len(w.text) else [None] * len(w.text))
            texts.append(w.text)
    joined = "".join(texts)
    out: list[list[list[Span] | None]] = []
    k = 0
    for g in groups:
        per: list[list[Span] | None] = []
        for w in g:
            n = len(w.text)
            seg = flat[k:k + n] if joined[k:k + n] == w.text else []
            per.append([s for s in seg if s is not None] if len(seg) == n and None not in seg else None)
            k += n
        out.append(per)
    return out


def _syllable_texts(w: Word, cs: list[Span] | None) -> list[tuple[str, Span | None]] | None:
    """Per syllable of a Han word, its characters and their span; None where the characters cannot be
    paired with the syllables (a user-lexicon reading of another length)."""
    n, t = len(w.syllables), w.text
    if len(t) == n:
        ranges = [(i, i + 1) for i in range(n)]
    elif n and len(t) == n + 1 and t.endswith("儿"):  # erhua: the last syllable covers 点儿
        ranges = [(i, i + 1) for i in range(n - 1)] + [(n - 1, n + 1)]
    else:
        return None
    return [(t[a:b], union(cs[a:b]) if cs else None) for a, b in ranges]


def _pw_units(group: list[Word], spk: str, places: list[list[Span] | None] | None = None) -> tuple[list[Unit],
                                                                                                 list[Token]]:
    """Units of one prosodic word with the KAN-TTS position rules (Syllable.GetPhoneMeta), and its tokens
    (units numbered from the prosodic word's first, spans in sentence coordinates)."""
    sylls: list[tuple[list[str], str, str]] = []  # phones, tone, emotion
    owner: list[int] = []  # per syllable: its token
    toks: list[tuple[str, str, Span | None]] = []  # text, kind, sentence span
    for wi, w in enumerate(group):
        cs = places[wi] if places is not None and wi < len(places) else None
        if w.latin:
            toks.append((w.text, "word", union(cs) if cs else None))
            for syl in w.phones or []:
                sylls.append((syl, "tone0", w.emotion))
                owner.append(len(toks) - 1)
            continue
        per = _syllable_texts(w, cs)
        if per is None:
            toks.append((w.text, "word", union(cs) if cs else None))
        word_token = len(toks) - 1
        for si, s in enumerate(w.syllables):
            base, tone = split_tone(s)
            try:
                onset, final = syllable_phones(base)
            except KeyError:
                logger.warning("no phones for pinyin %r in %r; syllable dropped", s, w.text)
                continue
            sylls.append(([onset, final], f"tone{tone}", w.emotion))
            if per is not None:
                toks.append((per[si][0], "syllable", per[si][1]))
                owner.append(len(toks) - 1)
            else:
                owner.append(word_token)
    if not sylls:
        return [], []
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
    first: dict[int, int] = {}
    count: dict[int, int] = {}
    at = 0
    for (phones, _, _), t in zip(sylls, owner, strict=True):
        first.setdefault(t, at)
        count[t] = count.get(t, 0) + len(phones)
        at += len(phones)
    tokens = [Token(toks[t][0], toks[t][1], first[t], count[t], toks[t][2]) for t in sorted(first)]
    return out, tokens

"""The incremental (streaming) front end: text arrives in pieces, sentences' units come out.

The reader cuts the text it has into *blocks* of whole sentences and runs the front end on one block at a
time. Where a block ends depends only on the text, never on how it was cut into pieces, so feeding a text in
any pieces gives exactly the units of the whole text; :meth:`FrontEnd.units` is this reader fed at once.

A block ends

* after a line break;
* after a sentence end (。！？!?, with the closers and sentence ends that follow it) once the next character
  is known: so a closing quote stays with its sentence;
* at the end of the input;
* on text with no sentence end for a long stretch, to bound memory and the time to first audio: after the
  last soft break (，；：、,; or whitespace) of its first ``SOFT_LIMIT`` characters, else at the first soft
  break or sentence end before ``HARD_LIMIT`` characters, else at ``HARD_LIMIT`` characters, moved back
  out of a Latin word or a digit run if one is there.

Soft breaks next to a digit are not used (``1,000``, ``138 1234 5678``, ``5 km`` are read as one), nor
whitespace inside an unfinished ``[emotion=...]`` marker. A marker must not span a line break.
"""

from __future__ import annotations

import re
import threading
from collections import deque
from typing import TYPE_CHECKING

from ..symbols import Token, Unit
from .split import CLOSERS, SENTENCE_END

if TYPE_CHECKING:
    from .frontend import FrontEnd

SOFT_LIMIT = 1000
HARD_LIMIT = 2000
_HARD_RE = re.compile(f"[\r\n]|[{re.escape(SENTENCE_END)}][{re.escape(SENTENCE_END + CLOSERS)}]*")
_SOFT = frozenset("，；：、,;")
_MARKUP_SPAN = 64  # a marker longer than this (padded with whitespace) may be cut at a soft break
_NEVER = 1 << 62


def _is_soft(ch: str) -> bool:
    return ch in _SOFT or ch.isspace()


def _is_word_char(ch: str) -> bool:
    return ch.isascii() and ch.isalnum()


def _markup_prefix(s: str) -> bool:
    """True if ``s`` (from a '[') is a proper prefix of an emotion marker (split._MARKUP_RE) not yet closed."""
    rest = s[1:].lstrip()
    if rest.startswith("/"):
        rest = rest[1:].lstrip()
    word = rest[:7].lower()
    if not "emotion".startswith(word):
        return False
    if len(word) < 7:
        return True
    rest = rest[7:].lstrip()
    if rest[:1] in ("=", ":"):
        rest = rest[1:].lstrip()
        rest = rest.lstrip("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_")
        rest = rest.lstrip()
    return rest == ""


class SentenceReader:
    """An incremental front end (from :meth:`FrontEnd.reader`): :meth:`feed` text in any pieces, then
    :meth:`finish`; :meth:`next_sentence` gives each sentence's units as soon as its block is complete.

    ``feed``/``finish`` may be called from one thread while ``next_sentence`` runs in another; the front-end
    analysis runs outside the lock, so feeding never waits for it. ``next_sentence`` must not be called
    from two threads at once. The current emotion set by inline markup carries from block to block, as it
    does from sentence to sentence.
    """

    def __init__(self, fe: FrontEnd, emotion: str, speaker: str):
        self._fe = fe
        self._default_emotion = emotion
        self._speaker = speaker
        self._state = [emotion]  # the current emotion, changed by markup
        self._lock = threading.Lock()
        # shared with feed()/finish(), under the lock
        self._pieces: list[str] = []
        self._piece_chars = 0
        self._finished = False
        # owned by next_sentence(): the text not yet cut and the position of the next block in it
        self._buf = ""
        self._base = 0  # offset of _buf[0] in everything fed (the prefix already cut is dropped)
        self._start = 0
        self._scan = 0  # no sentence end or line break is pending before this position of the block
        self._queue: deque[tuple[list[Unit], tuple[Token, ...]]] = deque()
        self._last_tokens: tuple[Token, ...] = ()

    # --- producer side ---------------------------------------------------------------------------------------

    def feed(self, piece: str) -> None:
        """More text; any cut is fine (mid-sentence, mid-word, inside a ``[emotion=...]`` marker)."""
        if not isinstance(piece, str):
            from ..errors import InvalidInputError

            raise InvalidInputError(f"text must be a string, got {type(piece).__name__}")
        if not piece:
            return
        with self._lock:
            if self._finished:
                from ..errors import InvalidInputError

                raise InvalidInputError("feed() after finish(): start a new reader for a new text")
            self._pieces.append(piece)
            self._piece_chars += len(piece)

    def finish(self) -> None:
        """No more text will come: the rest of the text is the last block."""
        with self._lock:
            self._finished = True

    # --- consumer side ---------------------------------------------------------------------------------------

    def where(self) -> str | None:
        """Text has no line numbers worth naming in an error (symbol input has)."""
        return None

    def tokens(self) -> tuple[Token, ...]:
        """The tokens of the sentence last returned by :meth:`next_sentence`: what each run of its units
        speaks, with source spans as offsets into the concatenation of every piece fed."""
        return self._last_tokens

    @property
    def pending_chars(self) -> int:
        """Characters fed but not yet analysed (for back-pressure)."""
        with self._lock:
            return self._piece_chars + len(self._buf) - self._start

    @property
    def done(self) -> bool:
        """Finished, and every sentence has been returned."""
        with self._lock:
            finished, pieces = self._finished, self._piece_chars
        if not finished or pieces or self._queue:
            return False
        # what is left may be only whitespace/punctuation that gives no sentence: done only once analysed
        return self._start >= len(self._buf)

    def next_sentence(self) -> list[Unit] | None:
        """The next sentence's units, analysing the next complete block if needed; None when more text is
        needed (or everything is done: see :attr:`done`).
        """
        while not self._queue:
            got = self._next_block()
            if got is None:
                return None
            block, base = got
            tokens: list[tuple[Token, ...]] = []
            sentences = self._fe.block_units(block, self._default_emotion, self._speaker, self._state, base, tokens)
            if len(tokens) != len(sentences):  # a front end that does not report tokens
                tokens = [()] * len(sentences)
            self._queue.extend(zip(sentences, tokens, strict=True))
        units, self._last_tokens = self._queue.popleft()
        return units

    def _next_block(self) -> tuple[str, int] | None:
        """The next complete block and its offset in everything fed."""
        with self._lock:
            if self._pieces:
                # drop the consumed prefix when taking new text in: one copy of the remainder per merge
                self._base += self._start
                self._buf = self._buf[self._start :] + "".join(self._pieces)
                self._scan -= self._start
                self._start = 0
                self._pieces.clear()
                self._piece_chars = 0
            final = self._finished
            buf, s = self._buf, self._start
        if s >= len(buf):
            return None
        cut = self._find_cut(buf, s, final)
        if cut is None:
            return None
        with self._lock:  # pending_chars reads _start
            self._start = self._scan = cut
            base = self._base
        return buf[s:cut], base + s

    def _find_cut(self, t: str, s: int, final: bool) -> int | None:
        """End of the block that starts at ``s``; None if the text known so far cannot decide it."""
        n = len(t)
        soft_end, hard_end = s + SOFT_LIMIT, s + HARD_LIMIT
        hard = self._first_hard_cut(t, s, n, final)  # None: unknown yet, but >= n
        if hard is not None and hard <= soft_end:
            return hard
        if final and hard is None:
            hard = n
        if hard is None and n <= soft_end:
            return None
        # no sentence end in the first SOFT_LIMIT characters: cut after the last soft break there
        for k in range(soft_end - 1, s - 1, -1):
            if self._soft_ok(t, s, k):
                return k + 1
        # else the first soft break or sentence end before HARD_LIMIT
        stop = min(n - 1, hard_end, hard if hard is not None else _NEVER)
        for k in range(soft_end, stop):
            if self._soft_ok(t, s, k):
                return k + 1
        if hard is not None and hard <= hard_end:
            return hard
        if n <= hard_end and not final:
            return None
        if n <= hard_end:
            return n
        # nothing: cut at HARD_LIMIT characters, out of a Latin word or a digit run where possible
        for c in range(hard_end, soft_end, -1):
            if not (_is_word_char(t[c - 1]) and _is_word_char(t[c])):
                return c
        return hard_end

    def _first_hard_cut(self, t: str, s: int, n: int, final: bool) -> int | None:
        """The first line-break or sentence-end cut of the block (``_NEVER`` if past HARD_LIMIT), or None if
        it is not known yet. Resumes where the previous call on the same block stopped (``self._scan``).
        """
        endpos = min(n, s + HARD_LIMIT + 1)
        m = _HARD_RE.search(t, max(self._scan, s), endpos)
        if m is None:
            self._scan = endpos
            if endpos < n:
                return _NEVER
            return n if final else None
        if m.end() < endpos or t[m.start()] in "\r\n":
            return m.end()
        if endpos < n:  # the run goes on past HARD_LIMIT
            return _NEVER
        self._scan = m.start()  # a sentence end at the end of the text: its closers may still come
        return n if final else None

    @staticmethod
    def _soft_ok(t: str, s: int, k: int) -> bool:
        """Whether the block may end after ``t[k]`` (``t[k + 1]`` must be known)."""
        ch = t[k]
        if not _is_soft(ch):
            return False
        if (k > s and t[k - 1].isdigit() and t[k - 1].isascii()) or (t[k + 1].isdigit() and t[k + 1].isascii()):
            return False
        if ch.isspace():
            p = t.rfind("[", max(s, k - _MARKUP_SPAN), k)
            if p >= 0 and _markup_prefix(t[p:k]):
                return False
        return True

"""Symbol input: ttsfrd symbol lines fed in pieces (a file, stdin) -> sentences of typed units.

Each line is parsed once: a whole string is parsed and checked up front (every error before any audio),
and the parsed units are what the stream then takes; lines fed piece by piece are parsed when taken.
"""

from __future__ import annotations

import threading
from collections import deque

from ..errors import InvalidInputError
from ..symbols import Inventories, Token, Unit, encode_units, parse_units, symbol_tokens, with_voice


class SymbolLines:
    """Thread contract as the front end's SentenceReader: ``feed``/``finish`` from one thread,
    ``next_sentence`` from another."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buf = ""
        self._lines: deque[tuple[int, str | list[Unit]]] = deque()  # (line number, text or parsed units)
        self._next_line = 1
        self._finished = False
        self._pending = 0
        self.last_line = 0  # line number of the sentence last returned, for errors found later
        self._last_tokens: tuple[Token, ...] = ()

    @classmethod
    def complete(cls, text: str, inventories: Inventories, emotion: str | None, speaker: str | None) -> SymbolLines:
        """All of ``text`` at once: every line parsed and encoded now, so any error comes before any audio."""
        lines = cls()
        lines.feed(text)
        lines.finish()
        parsed: deque[tuple[int, str | list[Unit]]] = deque()
        for n, line in lines._lines:
            units = line if isinstance(line, list) else _parse(n, line)
            if units:
                try:
                    encode_units(with_voice(units, emotion, speaker), inventories)
                except InvalidInputError as e:
                    raise InvalidInputError(f"symbol line {n}: {e}") from None
            parsed.append((n, units))
        if not any(units for _, units in parsed):
            raise InvalidInputError("nothing to synthesize: the input has no symbol units")
        lines._lines, lines._pending = parsed, 0
        return lines

    def where(self) -> str | None:
        return f"symbol line {self.last_line}"

    def tokens(self) -> tuple[Token, ...]:
        """Symbol input has no text: one phone token per syllable and one per break, no source spans."""
        return self._last_tokens

    def feed(self, piece: str) -> None:
        with self._lock:
            self._buf += piece
            *complete, self._buf = self._buf.split("\n")
            self._add(complete)

    def finish(self) -> None:
        with self._lock:
            self._add([self._buf])
            self._buf = ""
            self._finished = True

    def _add(self, lines: list[str]) -> None:
        for line in lines:
            if line.strip():
                self._lines.append((self._next_line, line))
                self._pending += len(line)
            self._next_line += 1

    def next_sentence(self) -> list[Unit] | None:
        with self._lock:
            if not self._lines:
                return None
            n, line = self._lines.popleft()
            if isinstance(line, str):
                self._pending -= len(line)
        self.last_line = n
        units = line if isinstance(line, list) else _parse(n, line)
        self._last_tokens = symbol_tokens(units)
        return units

    @property
    def done(self) -> bool:
        with self._lock:
            return self._finished and not self._lines

    @property
    def pending_chars(self) -> int:
        """Characters of complete lines not yet taken (a line still arriving is not back-pressure)."""
        with self._lock:
            return self._pending


def _parse(n: int, line: str) -> list[Unit]:
    try:
        return parse_units(line)
    except InvalidInputError as e:
        raise InvalidInputError(f"symbol line {n}: {e}") from None

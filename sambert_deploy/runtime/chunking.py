"""Cutting a stream of frame blocks into context windows for chunked networks (postnet, vocoder).

:class:`WindowCutter` is push-based (frames in with ``push``, windows out with ``pop``) and keeps no
thread or generator of its own, so a scheduler can drive it from whichever worker runs a stream's
next step. :func:`context_windows` is the same cutter over an iterator, for single-threaded callers.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from ..errors import InvalidInputError


@dataclass(frozen=True)
class Window:
    """The network runs on ``frames`` ([n, C]); rows [a, b) of its output are the next chunk, whose
    first row is row ``start`` of the whole sequence. ``last``: the sequence's final window."""

    frames: np.ndarray
    a: int
    b: int
    start: int
    last: bool

    @property
    def rows(self) -> int:
        return self.b - self.a


class WindowCutter:
    """Windows of ``chunk`` new rows (the first one ``first_chunk``, the next ones doubling from it up to
    ``chunk``) with up to ``left`` rows of context
    before and ``right`` after, over ``total`` rows that arrive in blocks of any size.

    With the network's exact receptive field the chunks concatenate to the whole-sequence output.
    Rows older than ``left`` are dropped, so memory stays bounded whatever ``total`` is.
    """

    def __init__(self, total: int, chunk: int, left: int, right: int, first_chunk: int | None = None):
        if chunk < 1:
            raise InvalidInputError(f"chunk size must be >= 1 frame, got {chunk}")
        if first_chunk is not None and first_chunk < 1:
            raise InvalidInputError(f"first chunk size must be >= 1 frame, got {first_chunk}")
        self.total, self.chunk, self.left, self.right = total, chunk, left, right
        self._size = first_chunk or chunk
        self._parts: list[np.ndarray] = []
        self._buf: np.ndarray | None = None
        self._buf_start = 0
        self.received = 0  # rows pushed
        self.done = 0  # rows whose output has been cut into windows

    @property
    def finished(self) -> bool:
        return self.done >= self.total

    @property
    def wanted(self) -> int:
        """Rows still to push before the next window can be cut (0: ``pop`` will return one)."""
        if self.finished:
            return 0
        need = min(self.total, min(self.total, self.done + self._size) + self.right)
        return max(0, need - self.received)

    def push(self, block: np.ndarray) -> None:
        n = int(block.shape[0])
        if self.received + n > self.total:
            raise ValueError(f"{self.received + n} rows pushed into a cutter of {self.total}")
        if n:
            self._parts.append(block)
            self.received += n

    def pop(self) -> Window | None:
        """The next window, or None until enough rows have been pushed (or when finished)."""
        if self.finished or self.wanted:
            return None
        b = min(self.total, self.done + self._size)
        need = min(self.total, b + self.right)
        if self._parts:
            self._buf = np.concatenate(([self._buf] if self._buf is not None else []) + self._parts)
            self._parts = []
        if self._buf is None:  # unreachable with total > 0: wanted() demanded rows first
            raise RuntimeError("window cutter has no rows")
        ws = max(0, self.done - self.left)
        win = Window(self._buf[ws - self._buf_start:need - self._buf_start], self.done - ws, b - ws, self.done,
                     b == self.total)
        self.done = b
        # After a small first window the windows double up to ``chunk``: jumping straight from 16 to
        # 256 frames left playback waiting 370-640 ms after the first chunk (benchmark "worst gap");
        # doubling keeps each window ready before the audio before it has played.
        self._size = min(self.chunk, 2 * self._size) if self._size < self.chunk else self.chunk
        drop = max(0, self.done - self.left) - self._buf_start
        if drop > 0:
            self._buf = self._buf[drop:]
            self._buf_start += drop
        return win


def context_windows(stream: Iterable[np.ndarray], total: int, chunk: int, left: int, right: int,
                    first_chunk: int | None = None) -> Iterator[tuple[np.ndarray, int, int, bool]]:
    """:class:`WindowCutter` over an iterator of blocks: yields (window, a, b, last), reading only as
    many blocks as the next window needs."""
    cut = WindowCutter(total, chunk, left, right, first_chunk)
    it = iter(stream)
    while not cut.finished:
        w = cut.pop()
        if w is None:
            block = next(it, None)
            if block is None:
                raise RuntimeError(f"frame stream ended after {cut.received} of {total} frames")
            cut.push(block)
            continue
        yield w.frames, w.a, w.b, w.last

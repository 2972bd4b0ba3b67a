"""A stream: one call's text -> audio, as its caller sees it.

:class:`Stream` is what :meth:`Synthesizer.stream` returns: an iterator (and async iterator) of
:class:`AudioChunk` with ``info``, ``cancel()`` and context-manager use. Its work runs as tasks on
the Synthesizer's shared :class:`~.scheduler.Scheduler` (:class:`~.state.StreamState`, advancing an
:class:`~.cursor.AcousticCursor`); nothing of it lives on the Synthesizer.

Per stream, in order: sentences from the source (the front end run block by block as the stream
needs them, or symbol lines) -> split at ``max_units`` -> encoded -> acoustic steps (one task plans a
sentence, then one task = its next postnet chunk, whose decoder steps a DecodeGroup may run batched
with other streams' of the voice) -> mel cut into
vocoder windows, each tagged with its sentence and offsets -> window tasks -> chunks handed to the
consumer in order. Each chunk carries the exact timestamps (:class:`~.timestamps.Mark`) of the
syllables, words and breaks that start in it, computed from the durations its sentence was planned with.
"""

from __future__ import annotations

import asyncio
import inspect
import weakref
from collections.abc import Iterable

from ..errors import InvalidInputError
from .state import AudioChunk, StreamInfo, StreamState

__all__ = ["AudioChunk", "Stream", "StreamInfo", "read_input"]

# Text read ahead of the front end from an iterable source (stdin): bounded so a 1 MB pipe does not
# sit in memory, large enough that the reader never starves the front end.
MAX_PENDING_CHARS = 16_384


def read_input(state: StreamState, pieces: Iterable[str]) -> None:
    """Feed an iterable text source (stdin, a generator) into the stream, in its own thread: reading
    may block on I/O, which must never hold a scheduler worker. Reads ahead at most
    ``MAX_PENDING_CHARS`` beyond what the front end has taken, except while the stream waits for more
    input (a sentence longer than that must still arrive whole)."""
    it = iter(pieces)
    end = object()
    try:
        while not state.stopped:
            piece = next(it, end)
            if piece is end:
                state.source.finish()
                break
            if state.stopped:
                break
            if not isinstance(piece, str):
                raise InvalidInputError(f"text pieces must be str, got {type(piece).__name__}")
            state.source.feed(piece)
            with state.cv:
                state.input_changed()
                while state.source.pending_chars > MAX_PENDING_CHARS and not state.waiting_input and not state.stopped:
                    state.cv.wait()  # woken when the acoustic step takes text or waits for it, or the stream ends
    except BaseException as e:  # a failing source fails the stream, reported to its consumer
        with state.cv:
            state.fail(e)
    finally:
        try:
            # Only a generator is ours to close (it stops now, in this thread); a file object the
            # caller passed stays open: it is theirs.
            if inspect.isgenerator(it):
                it.close()
        except BaseException as e:  # noqa: BLE001 - reported to the consumer
            with state.cv:
                state.fail(e)
        finally:
            with state.cv:
                state.input_changed()


class Stream:
    """Audio of one ``Synthesizer.stream()`` call: iterate it (or ``async for``) for :class:`AudioChunk`;
    ``info`` any time; ``cancel()``/``close()`` or leaving a ``with`` block stops its work at once.

    An abandoned stream (dropped without closing) holds no thread and stops using CPU once
    ``max_ahead`` windows are waiting; when it is garbage-collected its work is dropped.
    """

    def __init__(self, state: StreamState):
        self._state = state
        weakref.finalize(self, state.abandon).atexit = False  # at exit daemon workers just stop

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> AudioChunk:
        return self._state.next_chunk()

    def __aiter__(self) -> Stream:
        return self

    async def __anext__(self) -> AudioChunk:
        """Waits without blocking the event loop (a worker resolves a future when something changes)."""
        state = self._state
        loop = asyncio.get_running_loop()
        while True:
            with state.cv:
                try:
                    chunk = state.poll()
                except StopIteration:
                    raise StopAsyncIteration from None
                if chunk is not None:
                    return chunk
                fut = state.add_waiter(loop)
            await fut

    @property
    def info(self) -> StreamInfo:
        return self._state.info()

    @property
    def outstanding(self) -> int:
        """Vocoder windows of this stream waiting, running or done and not yet consumed: bounded by
        ``StreamOptions.max_ahead`` (observability for back-pressure; 0 once the stream has ended)."""
        with self._state.cv:
            return self._state.outstanding

    @property
    def error(self) -> BaseException | None:
        """The error the stream has met, if any: raised by the iteration when it gets there."""
        with self._state.cv:
            return self._state.error

    def cancel(self) -> None:
        self._state.cancel()

    def close(self) -> None:
        self.cancel()

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Stream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    async def aclose(self) -> None:
        self.close()

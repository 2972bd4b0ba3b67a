"""Admission to the speech server: who may synthesize now, who waits, who is refused.

``max_concurrent`` bounds the streams that *compute* (the CPU or GPU they share), not the connections
that are open. A stream whose client stops reading soon stops computing too (the synthesizer works at
most ``max_ahead`` windows ahead of its consumer), yet it would keep its slot until the send timeout
cut it: five clients that stall could deny service for the whole timeout. So a stream whose send has
been blocked for ``park_after_s`` *parks*: it gives its slot to the next in line and stays connected;
when its client reads again it takes the next free slot ahead of every newcomer. At most ``max_parked``
streams park at once (each holds a synthesizer stream and its buffers); past that a blocked stream
keeps its slot until the send timeout, as before.
"""

from __future__ import annotations

import asyncio
from collections import deque
from contextlib import suppress
from typing import Any


class ApiError(Exception):
    """An error answered to the client as OpenAI's ``{"error": {...}}`` with this status."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers or {}


def shutting_down() -> ApiError:
    return ApiError(503, "the server is shutting down; retry on another instance or later", "server_error",
                    code="shutting_down", headers={"Retry-After": "5", "Connection": "close"})


class Admission:
    """At most ``active`` holders and ``queue`` waiters; beyond that ``acquire`` refuses at once. A
    waiter that is cancelled (its client left) leaves the queue at once; a released slot is handed to
    the oldest waiter still there, a resuming (parked) stream first."""

    def __init__(self, active: int, queue: int, retry_after_s: int = 1, max_parked: int = 0):
        self.active, self.queue, self.retry_after_s, self.max_parked = active, queue, retry_after_s, max_parked
        self.running = 0
        self.parked = 0
        self.closed = False
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._resuming: set[asyncio.Future[None]] = set()

    @property
    def waiting(self) -> int:
        """Newcomers waiting for a slot (resuming streams are not counted: they were admitted)."""
        return sum(1 for f in self._waiters if f not in self._resuming)

    @property
    def idle(self) -> bool:
        return self.running == 0 and self.parked == 0 and not self._waiters

    def try_acquire(self) -> bool:
        """Takes a slot if one is free now (no waiting)."""
        self._check_open()
        return self._take()

    async def acquire(self, resume: bool = False) -> None:
        """A slot. ``resume``: a parked stream taking one back: never refused, ahead of newcomers, and
        granted at once while the server drains (running streams finish)."""
        if resume:
            if self.closed:
                self.running += 1
                return
            if self._take():
                return
        elif self.try_acquire():
            return
        elif self.waiting >= self.queue:
            raise ApiError(429, f"server busy: {self.running} streams running and {self.waiting} queued; retry "
                           "later", "rate_limit_error", code="server_busy",
                           headers={"Retry-After": str(self.retry_after_s)})
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if resume:
            # Behind other resuming streams, ahead of every newcomer.
            self._waiters.insert(len(self._resuming), fut)
            self._resuming.add(fut)
        else:
            self._waiters.append(fut)
        try:
            await fut  # release() hands its slot over: `running` already counts this holder
        except BaseException:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self.release()  # handed a slot in the same moment we were cancelled: pass it on
            else:
                with suppress(ValueError):
                    self._waiters.remove(fut)
            raise
        finally:
            self._resuming.discard(fut)

    def release(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return
        self.running -= 1

    def close(self) -> None:
        """Refuses new holders and every waiting newcomer (503): the server is shutting down. Parked
        streams resuming get their slot: they drain like the running ones."""
        self.closed = True
        while self._waiters:
            fut = self._waiters.popleft()
            if fut.done():
                continue
            if fut in self._resuming:
                self.running += 1
                fut.set_result(None)
            else:
                fut.set_exception(shutting_down())

    def _take(self) -> bool:
        if self.running < self.active and not self._waiters:
            self.running += 1
            return True
        return False

    def _check_open(self) -> None:
        if self.closed:
            raise shutting_down()


class Slot:
    """One admitted request's hold on :class:`Admission`: held while it may compute, parked (given to
    the next in line) while its client is not reading, released once when the request ends."""

    def __init__(self, admission: Admission):
        self.admission = admission
        self.held = True
        self.parked = False

    def park(self) -> bool:
        """Gives the slot to the next in line if parking is allowed now; False: keep holding it."""
        adm = self.admission
        if not self.held or adm.parked >= adm.max_parked:
            return False
        self.held, self.parked = False, True
        adm.parked += 1
        adm.release()
        return True

    async def resume(self) -> None:
        """The client reads again: the next free slot, ahead of newcomers."""
        if not self.parked:
            return
        self.parked = False
        self.admission.parked -= 1
        await self.admission.acquire(resume=True)
        self.held = True

    def release(self) -> None:
        if self.held:
            self.held = False
            self.admission.release()
        elif self.parked:
            self.parked = False
            self.admission.parked -= 1


async def _until_disconnect(receive: Any) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def admit(admission: Admission, receive: Any) -> Slot:
    """A slot, or an error; while queued, a client that disconnects gives its place up at once."""
    if admission.try_acquire():
        return Slot(admission)
    waiting = asyncio.ensure_future(admission.acquire())
    gone = asyncio.ensure_future(_until_disconnect(receive))
    try:
        await asyncio.wait({waiting, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if waiting.done():
        waiting.result()  # raises 429/503
        return Slot(admission)
    waiting.cancel()
    with suppress(asyncio.CancelledError):
        await waiting
    raise ApiError(499, "the client closed the connection while queued", code="client_gone")

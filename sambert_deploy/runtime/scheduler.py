"""One CPU budget shared by every stream of a Synthesizer: a fixed set of worker threads per device
lane, running the most urgent ready task of any stream (earliest deadline first).

Streams own no threads. Each stream is a :class:`Client` that, asked under the scheduler's lock,
offers its most urgent runnable task for a lane (an acoustic step or a vocoder window) with a
deadline: when that audio would be due if playback had started when the stream did. A new stream
therefore goes before streams that are already ahead of real time, and streams started together
advance evenly. Tasks run outside the lock; the client is told the outcome under the lock.

Lanes: ``cpu`` has ``threads`` workers (each graph call there is single-threaded, so the budget is
the number of graph calls running at once, never N streams x their own threads); ``cuda`` has a few
workers that mostly wait on the GPU.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Task:
    """One unit of work: ``fn`` runs on a worker of ``lane`` without the scheduler's lock; ``payload`` is
    the client's typed record of what the task is (handed back to it in ``start``/``finish``)."""

    owner: Client
    lane: str
    deadline: float
    tiebreak: tuple[int, int]  # (stream order, task order): equal deadlines go to the older stream
    fn: Callable[[], Any]
    payload: object = None

    @property
    def key(self) -> tuple[float, int, int]:
        return (self.deadline, *self.tiebreak)


class Client(Protocol):
    """What the scheduler needs of a stream. ``offer``, ``start`` and ``finish`` are called with the
    scheduler's lock held and must not block."""

    def offer(self, lane: str) -> Task | None: ...

    def start(self, task: Task) -> None: ...

    def finish(self, task: Task, result: Any, error: BaseException | None) -> None: ...

    def fail(self, error: BaseException) -> None:
        """End the client with ``error`` (its own bookkeeping raised); must not raise."""

    @property
    def defunct(self) -> bool: ...


class Scheduler:
    def __init__(self, lanes: Mapping[str, int], name: str = "sambert"):
        self.lock = threading.Lock()
        self.lanes = {lane: max(1, int(n)) for lane, n in lanes.items()}
        self._cv = {lane: threading.Condition(self.lock) for lane in self.lanes}
        self._clients: list[Client] = []
        self._threads: dict[str, list[threading.Thread]] = {}
        self._closed = False
        self._name = name
        self.busy = dict.fromkeys(self.lanes, 0)

    @property
    def closed(self) -> bool:
        return self._closed

    def condition(self) -> threading.Condition:
        """A condition on the scheduler's lock, for a client's consumer to wait on."""
        return threading.Condition(self.lock)

    def add(self, client: Client, lanes: tuple[str, ...]) -> None:
        """Register a client (lock held by the caller) and make sure its lanes have workers."""
        for lane in lanes:
            if lane not in self.lanes:
                raise ValueError(f"unknown lane {lane!r}")
            if lane not in self._threads:
                self._threads[lane] = [threading.Thread(target=self._work, args=(lane,), daemon=True,
                                                        name=f"{self._name}-{lane}-{k}")
                                       for k in range(self.lanes[lane])]
                for t in self._threads[lane]:
                    t.start()
        self._clients.append(client)
        self.wake()

    def remove(self, client: Client) -> None:
        """Forget a client (lock held); its tasks already running still report to it."""
        try:
            self._clients.remove(client)
        except ValueError:
            pass

    def clients(self) -> list[Client]:
        return list(self._clients)

    def wake(self) -> None:
        """Something became runnable (lock held)."""
        for cv in self._cv.values():
            cv.notify_all()

    def close(self, timeout: float = 10.0) -> None:
        """Stop the workers after their current task (lock NOT held by the caller)."""
        with self.lock:
            self._closed = True
            self.wake()
        me = threading.current_thread()
        for threads in self._threads.values():
            for t in threads:
                if t is not me:
                    t.join(timeout)
        alive = [t.name for ts in self._threads.values() for t in ts if t.is_alive() and t is not me]
        if alive:
            log.warning("scheduler workers still running after %.0f s: %s", timeout, ", ".join(alive))

    def _pick(self, lane: str) -> Task | None:
        best: Task | None = None
        for client in list(self._clients):
            try:
                if client.defunct:
                    self.remove(client)
                    continue
                task = client.offer(lane)
            except Exception as e:  # one stream's bug must not stop the workers that serve the others
                self._drop(client, e)
                continue
            if task is not None and (best is None or task.key < best.key):
                best = task
        return best

    def _drop(self, client: Client, error: BaseException) -> None:
        log.exception("stream bookkeeping failed; ending that stream")
        self.remove(client)
        try:
            client.fail(error)
        except Exception:
            log.exception("could not end the stream")

    def _work(self, lane: str) -> None:
        cv = self._cv[lane]
        with self.lock:
            while not self._closed:
                task = self._pick(lane)
                if task is None:
                    cv.wait()
                    continue
                try:
                    task.owner.start(task)
                except Exception as e:
                    self._drop(task.owner, e)
                    continue
                self.busy[lane] += 1
                self.lock.release()
                result: Any = None
                error: BaseException | None = None
                try:
                    result = task.fn()
                except BaseException as e:  # handed to the stream, raised in its consumer
                    error = e
                finally:
                    self.lock.acquire()
                self.busy[lane] -= 1
                try:
                    task.owner.finish(task, result, error)
                except Exception as e:  # a bug in bookkeeping must not kill the worker serving other streams
                    self._drop(task.owner, e)
                self.wake()

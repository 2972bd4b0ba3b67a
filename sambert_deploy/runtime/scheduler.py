"""One CPU budget shared by every stream of a Synthesizer: a fixed set of worker threads per device
lane, running the most urgent ready task of any stream (earliest deadline first).

Streams own no threads. Each stream is a :class:`Client` that, asked under the scheduler's lock,
offers its most urgent runnable task for a lane (an acoustic step or a vocoder window) with a
deadline: when that audio would be due if playback had started when the stream did. A new stream
therefore goes before streams that are already ahead of real time, and streams started together
advance evenly. Tasks run outside the lock; the client is told the outcome under the lock.

Grouped tasks: a task may name a :class:`Group` (the decoder steps, or the vocoder windows, of one voice's
streams). When the most urgent task has one, the worker also takes every other offered task of that group
that is more urgent than anything outside it (up to the group's ``max_batch``) and runs them as one;
between its steps a group that ``pulls`` (the decoder's) takes more such tasks, and it reports each task's
outcome as soon as it has one. While such a group runs, another worker leaves its tasks to it (a second
call would split the batch: 4 streams on 2 workers averaged 2.2 streams per decoder call so, 3.3 without), unless that worker has
nothing else to do: an idle core cost more than the smaller batch (8 streams: 12.1-12.5 -> 13.3-13.5
audio s/s). No task ever waits for a group to fill: only tasks ready now join.

Lanes: ``cpu`` has ``threads`` workers (each graph call there is single-threaded, so the budget is
the number of graph calls running at once, never N streams x their own threads); ``cuda`` has a few
workers that mostly wait on the GPU.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

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
    group: Group | None = None  # tasks naming the same group may run together (its ``run``)

    @property
    def key(self) -> tuple[float, int, int]:
        return (self.deadline, *self.tiebreak)


class Group(Protocol):
    """Runs several tasks as one: ``run(tasks, pull, report)`` without the scheduler's lock, calling
    ``report(task, result, error)`` once per task (and per pulled task); ``pull(n)`` returns up to n
    more tasks of the group, already started. ``pulls``: whether ``run`` takes tasks offered while it
    runs (the decoder, between its steps); one that does not (a vocoder call) leaves them to others."""

    max_batch: int
    pulls: ClassVar[bool]

    def run(self, tasks: list[Task], pull: Callable[[int], list[Task]],
            report: Callable[[Task, Any, BaseException | None], None]) -> None: ...


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
        self._running: dict[Group, int] = {}  # groups running now: how many calls of each
        self._epoch = 0  # wake() calls so far: nothing new is runnable while it stays the same

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
        self._epoch += 1
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

    def _offers(self, lane: str) -> list[Task]:
        offers = []
        for client in list(self._clients):
            try:
                if client.defunct:
                    self.remove(client)
                    continue
                task = client.offer(lane)
            except Exception as e:  # one stream's bug must not stop the workers that serve the others
                self._drop(client, e)
                continue
            if task is not None:
                offers.append(task)
        return offers

    def _pick(self, lane: str) -> list[Task]:
        """The most urgent task, with the other tasks of its group that are more urgent than any task
        outside it (lock held); [] when nothing is ready."""
        # A group already running takes its tasks between its steps (pull): a second call of the same
        # group on another worker would split the batch, worth it only where that worker would idle.
        every = self._offers(lane)
        offers = [t for t in every if t.group is None or not t.group.pulls or t.group not in self._running]
        if not offers:
            # Nothing else to do: a second call of a running group beats an idle worker.
            offers = every
        if not offers:
            return []
        best = min(offers, key=lambda t: t.key)
        if best.group is None:
            return [best]
        return [best, *self._joiners(best.group, offers, best.group.max_batch - 1, best)]

    @staticmethod
    def _joiners(group: Group, offers: list[Task], n: int, skip: Task | None = None) -> list[Task]:
        outside = [t.key for t in offers if t.group is not group]
        bound = min(outside) if outside else None
        mine = sorted((t for t in offers if t.group is group and t is not skip and (bound is None or t.key < bound)),
                      key=lambda t: t.key)
        return mine[:max(0, n)]

    def _started(self, tasks: list[Task]) -> list[Task]:
        """Tell each owner its task starts (lock held); a task whose owner fails that is dropped."""
        ok = []
        for task in tasks:
            try:
                task.owner.start(task)
            except Exception as e:
                self._drop(task.owner, e)
                continue
            ok.append(task)
        return ok

    def _report(self, task: Task, result: Any, error: BaseException | None) -> None:
        """Hand a task's outcome to its owner (lock held)."""
        try:
            task.owner.finish(task, result, error)
        except Exception as e:  # a bug in bookkeeping must not kill the worker serving other streams
            self._drop(task.owner, e)

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
                picked = self._pick(lane)
                if not picked:
                    cv.wait()
                    continue
                tasks = self._started(picked)
                if not tasks:
                    continue
                if tasks[0].group is not None:
                    group = tasks[0].group  # counted before the lock goes: no other worker starts it too
                    self._running[group] = self._running.get(group, 0) + 1
                self.busy[lane] += 1
                self.lock.release()
                try:
                    if tasks[0].group is None:
                        self._run_one(tasks[0])
                    else:
                        self._run_group(lane, tasks[0].group, tasks)
                finally:
                    self.lock.acquire()
                self.busy[lane] -= 1
                self.wake()

    def _run_one(self, task: Task) -> None:
        """Run ``task`` (lock NOT held), then report it under the lock."""
        result: Any = None
        error: BaseException | None = None
        try:
            result = task.fn()
        except BaseException as e:  # handed to the stream, raised in its consumer
            error = e
        with self.lock:
            self._report(task, result, error)

    def _run_group(self, lane: str, group: Group, tasks: list[Task]) -> None:
        """Run ``tasks`` through their group (lock NOT held); every task is reported exactly once."""
        open_tasks = set(tasks)

        seen = [-1]

        def pull(n: int) -> list[Task]:
            with self.lock:
                # Asked between every decoder step: asking every stream for its offer only pays when
                # something became runnable since the last time.
                if self._closed or self._epoch == seen[0]:
                    return []
                seen[0] = self._epoch
                more = self._started(self._joiners(group, self._offers(lane), n))
                open_tasks.update(more)
                return more

        def report(task: Task, result: Any, error: BaseException | None) -> None:
            with self.lock:
                if task in open_tasks:
                    open_tasks.discard(task)
                    self._report(task, result, error)
                    self.wake()

        try:
            group.run(tasks, pull, report)
        except BaseException as e:  # a bug in the group fails its tasks, never the worker
            log.exception("grouped tasks failed")
            for task in list(open_tasks):
                report(task, None, e)
        finally:
            with self.lock:
                if self._running.get(group, 0) > 1:
                    self._running[group] -= 1
                else:
                    self._running.pop(group, None)
                self.wake()
        for task in list(open_tasks):
            report(task, None, RuntimeError("a grouped task ended without a result"))

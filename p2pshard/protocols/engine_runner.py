"""One task that owns the engine: jobs run one at a time, in the order they were submitted.

The engine is blocking torch code that must not run two calls at once. A lock would serialise the
calls but not order them (tasks started together reach a lock in any order), and the round
protocol's commands must reach the engine in the order it gave them: train round r before applying
round r. So a job is queued synchronously when its command is carried out (:meth:`submit`), and the
caller awaits its result later. A job is an async function, so it can await I/O (a training shard
fetched from peers) before its blocking part, which it runs with ``trio.to_thread.run_sync``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import trio

if TYPE_CHECKING:
    from trio_typing import TaskStatus

__all__ = ["EngineRunner", "Job"]

T = TypeVar("T")


class Job(Generic[T]):
    def __init__(self, work: Callable[[], Awaitable[T]]) -> None:
        self.work = work
        self._done = trio.Event()
        self._value: T | None = None
        self._error: Exception | None = None

    async def _run(self) -> None:
        try:
            self._value = await self.work()
        except Exception as exc:  # handed to whoever awaits the result
            self._error = exc
        finally:
            self._done.set()

    async def result(self) -> T:
        await self._done.wait()
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]


class EngineRunner:
    """Start with ``await nursery.start(runner.run)``; ``capacity`` bounds the queued jobs."""

    def __init__(self, capacity: int = 64) -> None:
        self._send, self._receive = trio.open_memory_channel[Job[Any]](capacity)

    def submit(self, work: Callable[[], Awaitable[T]]) -> Job[T]:
        """Queue ``work`` behind every job submitted before it (raises trio.WouldBlock when the
        queue is full: the caller submits more than the engine can ever run, a local bug)."""
        job = Job(work)
        self._send.send_nowait(job)
        return job

    async def call(self, work: Callable[[], Awaitable[T]]) -> T:
        return await self.submit(work).result()

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        async for job in self._receive:
            await job._run()

"""Small helpers shared by tests."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

CLI = [sys.executable, "-m", "p2pshard"]


async def eventually(predicate: Callable[[], bool], within_s: float = 5.0, interval: float = 0.01) -> None:
    """Wait until ``predicate()`` holds, polling state we have no event for; fail after ``within_s``."""
    with trio.fail_after(within_s):
        while not predicate():  # noqa: ASYNC110 - the state polled here has no event to wait on
            await trio.sleep(interval)


class Proc:
    """A ``p2pshard`` command run as its own process, its stdout read as JSON events by a reader
    thread (so every wait is bounded), ended by its PID."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, log: Path | None = None) -> None:
        self.log = log
        self._err = open(log, "wb") if log is not None else subprocess.PIPE  # noqa: SIM115
        self.p = subprocess.Popen(
            [*CLI, *args],
            stdout=subprocess.PIPE,
            stderr=self._err,
            text=True,
            env={**os.environ, **(env or {})},
        )
        if log is not None:
            self._err.close()  # type: ignore[union-attr]  # the child has its own copy
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.p.stdout is not None
        with contextlib.suppress(ValueError, OSError):  # stdout closed under us at teardown
            for line in self.p.stdout:
                with contextlib.suppress(json.JSONDecodeError):
                    self.events.put(json.loads(line))

    def event(self, timeout: float = 30) -> dict[str, Any]:
        """The next event (raises TimeoutError after ``timeout`` seconds)."""
        try:
            ev = self.events.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no event from {self.p.args} in {timeout}s") from None
        self.seen.append(ev)
        return ev

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            ev = self.event(max(0.01, deadline - time.monotonic()))
            if predicate(ev):
                return ev

    def kill(self) -> None:
        os.kill(self.p.pid, signal.SIGKILL)
        self.p.wait()

    def interrupt(self) -> None:
        """Ctrl-C, without waiting: :meth:`stop` then waits (interrupt several, then stop each)."""
        if self.p.poll() is None:
            os.kill(self.p.pid, signal.SIGINT)

    def stop(self) -> tuple[int, str]:
        self.interrupt()
        try:
            self.p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.kill(self.p.pid, signal.SIGKILL)
            self.p.wait()
        # stdout belongs to the reader thread; stderr is a pipe or the log file
        if self.log is not None:
            err = self.log.read_text(errors="replace")
        else:
            assert self.p.stderr is not None
            err = self.p.stderr.read()
        return self.p.returncode, err

"""Child processes for the interop peers: started with pipes, drained, ended by their PID.

Every peer runs in its own OS process. Its output is read continuously by a task (a child that
blocks on a full pipe would look like a protocol bug) and the last lines are kept for the failure
message. Ending a peer always goes through ``os.kill(pid, …)`` on the PID we started: SIGTERM,
a bounded wait, then SIGKILL — never a kill by name.

No PR_SET_PDEATHSIG: trio starts children from a worker thread, and the signal fires when *that
thread* ends (trio retires idle worker threads after ~10 s), killing healthy peers mid-test
(measured). If the test process is killed outright, the js peer still exits when its stdin
closes; p2pd does not, and would need ending by hand.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import trio

MAX_LINE = 1 << 20  # a longer line from a child is a bug in the child; we fail loudly
TERM_GRACE_S = 5.0  # how long a child gets to exit after SIGTERM before SIGKILL


class PeerProcessError(RuntimeError):
    """A peer process misbehaved: exited early, printed something unparseable, or timed out."""


class LineReader:
    """Splits a trio receive stream into lines; bounded line length."""

    def __init__(self, stream: trio.abc.ReceiveStream, max_line: int = MAX_LINE) -> None:
        self._stream = stream
        self._buf = bytearray()
        self._max = max_line
        self._eof = False

    async def readline(self) -> bytes | None:
        """The next line without its newline, or None at EOF."""
        while True:
            nl = self._buf.find(b"\n")
            if nl >= 0:
                line = bytes(self._buf[:nl])
                del self._buf[: nl + 1]
                return line.rstrip(b"\r")
            if len(self._buf) > self._max:
                raise PeerProcessError(f"child printed a line longer than {self._max} bytes")
            if self._eof:
                if self._buf:
                    line = bytes(self._buf)
                    self._buf.clear()
                    return line
                return None
            chunk = await self._stream.receive_some(65536)
            if not chunk:
                self._eof = True
            else:
                self._buf += chunk


@dataclass
class PeerProcess:
    """A running child: its PID, stdin, and the tail of what it printed."""

    name: str
    process: trio.Process
    tail: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=200))

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        return "\n".join(self.tail)

    def describe(self) -> str:
        return f"{self.name} (pid {self.pid}, exit {self.process.returncode}); last output:\n{self.output()}"


async def _drain(
    stream: trio.abc.ReceiveStream,
    proc: PeerProcess,
    on_line: Callable[[str], None] | None,
    prefix: str,
) -> None:
    reader = LineReader(stream)
    while (raw := await reader.readline()) is not None:
        line = raw.decode("utf-8", "replace")
        proc.tail.append(prefix + line)
        if on_line is not None:
            on_line(line)


async def kill_by_pid(proc: PeerProcess, grace_s: float = TERM_GRACE_S) -> None:
    """SIGTERM the child by PID, wait up to ``grace_s``, then SIGKILL it and reap it."""
    if proc.process.returncode is not None:
        return
    with trio.CancelScope(shield=True):
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        with trio.move_on_after(grace_s):
            await proc.process.wait()
        if proc.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            with trio.move_on_after(grace_s):
                await proc.process.wait()


@asynccontextmanager
async def run_peer_process(
    name: str,
    argv: Sequence[str],
    *,
    cwd: Path | None = None,
    on_stdout: Callable[[str], None] | None = None,
    merge_stderr: bool = False,
    env: dict[str, str] | None = None,
) -> AsyncIterator[PeerProcess]:
    """Start ``argv`` with piped stdin/stdout/stderr; drain its output; end it by PID on exit.

    ``on_stdout`` sees each stdout line (stderr lines only go to the kept tail).
    """
    process = await trio.lowlevel.open_process(
        list(argv),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
        cwd=cwd,
        env=env,
        start_new_session=True,  # a Ctrl-C in the terminal reaches pytest, which then ends it
    )
    proc = PeerProcess(name, process)
    try:
        async with trio.open_nursery() as nursery:
            assert process.stdout is not None
            nursery.start_soon(_drain, process.stdout, proc, on_stdout, "")
            if process.stderr is not None:
                nursery.start_soon(_drain, process.stderr, proc, None, "[stderr] ")
            try:
                yield proc
            finally:
                await kill_by_pid(proc)
                nursery.cancel_scope.cancel()
    finally:
        await kill_by_pid(proc)
        if process.stdin is not None:
            with trio.CancelScope(shield=True):
                await process.stdin.aclose()

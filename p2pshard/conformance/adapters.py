"""Adapters: how the suite asks an implementation for its answers.

:class:`InProcessAdapter` answers with p2pshard's own code. :class:`CommandAdapter` runs a
command once and talks to it over stdin/stdout: one JSON request per line in, one JSON answer per
line out, in order (the contract in specs/vectors/README.md). A late, missing or malformed answer
is a failure of that case, never a hang: every read is bounded by a timeout.
"""

from __future__ import annotations

import contextlib
import json
import queue
import shlex
import subprocess
import threading
from collections.abc import Mapping
from typing import Protocol

from p2pshard.conformance.model import JSON, AnswerError, Runner


class Adapter(Protocol):
    def ask(self, request: Mapping[str, JSON]) -> Mapping[str, JSON]:
        """The adapter's answer object: ``{"output": {...}}`` or ``{"error": "..."}``."""
        ...

    def close(self) -> None: ...


class InProcessAdapter:
    """p2pshard itself, called directly."""

    def __init__(self, runners: Mapping[str, Runner]) -> None:
        self.runners = runners

    def ask(self, request: Mapping[str, JSON]) -> Mapping[str, JSON]:
        return answer_request(self.runners, request)

    def close(self) -> None:
        return None


def answer_request(runners: Mapping[str, Runner], request: Mapping[str, JSON]) -> dict[str, JSON]:
    """p2pshard's answer to one request (what the reference adapter prints)."""
    runner = runners.get(str(request.get("runner")))
    if runner is None:
        return {"error": f"unsupported runner {request.get('runner')!r}"}
    inp = request.get("input")
    if not isinstance(inp, dict):
        return {"error": "input must be an object"}
    try:
        return {"output": dict(runner.answer(str(request.get("handler")), inp))}
    except (AnswerError, KeyError, TypeError, ValueError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


class AdapterGone(Exception):
    """The adapter process exited or stopped answering."""


class CommandAdapter:
    """An external adapter process speaking JSON lines."""

    def __init__(self, command: str, timeout_s: float = 30.0) -> None:
        self.command = command
        self.timeout_s = timeout_s
        self.proc = subprocess.Popen(
            shlex.split(command),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self._lines: queue.Queue[str | None] = queue.Queue(maxsize=16)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.gone: str | None = None

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def ask(self, request: Mapping[str, JSON]) -> Mapping[str, JSON]:
        if self.gone is not None:
            raise AdapterGone(self.gone)
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(request, sort_keys=True) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            self.gone = f"adapter stdin closed: {exc}"
            raise AdapterGone(self.gone) from exc
        try:
            line = self._lines.get(timeout=self.timeout_s)
        except queue.Empty:
            self.gone = f"no answer within {self.timeout_s:.0f}s"
            raise AdapterGone(self.gone) from None
        if line is None:
            self.gone = f"adapter exited (code {self.proc.poll()})"
            raise AdapterGone(self.gone)
        try:
            answer = json.loads(line)
        except ValueError:
            return {"error": f"answer is not JSON: {line[:120]!r}"}
        if not isinstance(answer, dict):
            return {"error": "answer is not a JSON object"}
        return answer

    def close(self) -> None:
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        if self.proc.stderr is not None:
            self.proc.stderr.close()

"""The shapes every conformance runner shares: a case, a runner, and the JSON conventions.

A case is a directory ``specs/vectors/<preset>/<runner>/<handler>/<case>/`` holding:

* ``meta.json``: ``{"description": str, "valid_input": bool}`` — what the case is about, and
  whether its input is well-formed (used to report the share of invalid-input cases);
* input files named by the runner's format (``input.json`` and/or raw ``*.bin`` files);
* ``expected.json``: what a conforming implementation answers.

An adapter receives one request per case, ``{"runner", "handler", "case", "input"}``, where
``input`` holds the keys of ``input.json`` plus one hex string per ``<name>.bin`` file (key
``<name>``). It answers ``{"output": {...}}`` (or ``{"error": "..."}`` when it cannot). The
runner compares ``output`` with ``expected.json`` under the condition its format README states.
Bytes inside JSON are always lowercase hex.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

PRESET: Final = "minimal"

JSON = Any
"""A JSON value (dict / list / str / int / float / bool / None)."""


@dataclass(frozen=True)
class Case:
    """One vector: inputs, the expected answer and a description."""

    runner: str
    handler: str
    name: str
    description: str
    valid_input: bool
    input_json: Mapping[str, JSON] | None = None
    input_bin: Mapping[str, bytes] = field(default_factory=dict)
    expected: Mapping[str, JSON] = field(default_factory=dict)

    @property
    def path(self) -> str:
        return f"{self.runner}/{self.handler}/{self.name}"

    def request_input(self) -> dict[str, JSON]:
        """The ``input`` object an adapter receives for this case."""
        out: dict[str, JSON] = dict(self.input_json or {})
        for stem, data in self.input_bin.items():
            if stem in out:
                raise ValueError(f"{self.path}: {stem}.bin collides with an input.json key")
            out[stem] = data.hex()
        return out

    def request(self) -> dict[str, JSON]:
        return {
            "runner": self.runner,
            "handler": self.handler,
            "case": self.name,
            "input": self.request_input(),
        }


Answer = Callable[[str, Mapping[str, JSON]], Mapping[str, JSON]]
"""(handler, input) -> output: how p2pshard itself answers a runner's requests."""

Check = Callable[[str, Mapping[str, JSON], Mapping[str, JSON], Mapping[str, JSON]], list[str]]
"""(handler, input, expected, output) -> the failed conditions (empty = pass)."""


@dataclass(frozen=True)
class Runner:
    """A runner: its handlers' input files, its case generator, its reference answer and checker."""

    name: str
    files: Mapping[str, frozenset[str]]
    """handler -> the input files each case has (besides meta.json and expected.json)."""
    generate: Callable[[], list[Case]]
    answer: Answer
    check: Check


class AnswerError(Exception):
    """The reference implementation could not answer a request (bad request, not bad input)."""


def unhex(value: JSON, what: str) -> bytes:
    if not isinstance(value, str):
        raise AnswerError(f"{what} must be a hex string")
    try:
        return bytes.fromhex(value)
    except ValueError as exc:
        raise AnswerError(f"{what} is not hex") from exc


def diff(what: str, expected: JSON, got: JSON) -> list[str]:
    """One failure line when ``got != expected``."""
    if expected == got:
        return []
    return [f"{what}: expected {_short(expected)}, got {_short(got)}"]


def _short(value: JSON, limit: int = 160) -> str:
    import json

    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def exact(
    handler: str, inp: Mapping[str, JSON], expected: Mapping[str, JSON], out: Mapping[str, JSON]
) -> list[str]:
    """The common condition: every key of ``expected`` is in the output with the same value."""
    fails: list[str] = []
    for key in sorted(expected):
        fails += diff(key, expected[key], out.get(key))
    return fails

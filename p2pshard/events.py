"""What a node reports while it starts, joins and trains: one event per step, as it happens.

``open_node(config, on_event=callback)`` calls ``callback(event)`` for each of them, from the
node's own trio task (keep the callback quick; it must not block). The command line prints
``event.text`` for people and ``event.to_json()`` with ``--json``; an embedder can show its own
progress from the same events::

    def show(event: p2pshard.NodeEvent) -> None:
        print(f"[{event.kind}] {event.text}")

    async with p2pshard.open_node(config, on_event=show) as node:
        ...

Every event has a ``kind`` (the ``"event"`` key of its JSON form) and ``text`` (one line, or a
few for ``listening``). The kinds, in the order a joining node usually sees them: ``listening``,
``bootstrap_dial``, ``bootstrap_connected`` / ``bootstrap_failed`` / ``waiting``, ``engine_ready``,
``network`` (network id agreed with a peer, or not), ``peers`` (connected and DHT peers),
``schedule`` (round schedule learned), ``checkpoint`` (download started / done, with bytes and
rate), ``shards`` (data shards fetched and verified), ``round`` (each committed round; the first
one also comes as ``first_round``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["EventCallback", "NodeEvent"]


@dataclass(frozen=True)
class NodeEvent:
    """One step of a node's life. ``fields`` holds the step's figures (all JSON-serialisable)."""

    kind: str
    text: str
    fields: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """``{"event": kind, **fields}``: one JSON object per event (``--json`` prints these)."""
        return {"event": self.kind, **self.fields}

    def __getitem__(self, key: str) -> Any:
        return self.fields[key]

    def asdict(self) -> dict[str, Any]:
        return asdict(self)


EventCallback = Callable[[NodeEvent], None]
"""Called with each :class:`NodeEvent` (see the module docstring)."""


def mb(n: float) -> str:
    return f"{n / 1e6:.2f} MB"

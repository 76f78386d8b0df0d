"""The operator's HTTP port: ``/metrics``, the dashboard page and the JSON it polls.

A small HTTP/1.1 server on trio (one request per connection, GET only): it runs in the node's
own nursery and reads the node's state in the node's own thread, so nothing needs a lock. Every
wait is bounded (a request must arrive within ``REQUEST_TIMEOUT_S``), requests are capped in
size, and at most ``MAX_CONNECTIONS`` are served at once.
"""

from __future__ import annotations

import json
import logging
from importlib import resources
from typing import TYPE_CHECKING, Any

import trio
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

import p2pshard
from p2pshard.observe.history import History, poll_peer_hashes
from p2pshard.observe.metrics import registry_for

if TYPE_CHECKING:
    from trio_typing import TaskStatus

    from p2pshard.node import Node

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = 5.0
MAX_REQUEST_BYTES = 8192
MAX_CONNECTIONS = 32
STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
}


class MetricsError(ValueError):
    """The --metrics address is not host:port."""


def parse_hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise MetricsError(f"--metrics wants host:port (e.g. 127.0.0.1:9464), not {text!r}")
    return host.strip("[]"), int(port)


class ObserveServer:
    def __init__(self, node: Node, history: History) -> None:
        self.node, self.history = node, history
        self.registry = registry_for(node, history)
        self.limit = trio.CapacityLimiter(MAX_CONNECTIONS)
        self.url = ""

    async def run(
        self, host: str, port: int, *, task_status: TaskStatus[str] = trio.TASK_STATUS_IGNORED
    ) -> None:
        listeners = await trio.open_tcp_listeners(port, host=host)
        sockname = listeners[0].socket.getsockname()
        shown = f"[{sockname[0]}]" if ":" in sockname[0] else sockname[0]
        self.url = f"http://{shown}:{sockname[1]}/"
        async with trio.open_nursery() as nursery:
            nursery.start_soon(poll_peer_hashes, self.node, self.history)
            await nursery.start(trio.serve_listeners, self._serve, listeners)
            task_status.started(self.url)

    async def _serve(self, stream: trio.SocketStream) -> None:
        if self.limit.available_tokens == 0:
            await stream.aclose()
            return
        async with self.limit, stream:
            try:
                with trio.fail_after(REQUEST_TIMEOUT_S):
                    path = await _read_request(stream)
                    if path is None:
                        await _respond(stream, 400, "text/plain", b"bad request\n")
                        return
                    status, kind, body = self.route(path)
                    await _respond(stream, status, kind, body)
            except (trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return

    def route(self, path: str) -> tuple[int, str, bytes]:
        path = path.split("?", 1)[0]
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest(self.registry)
        if path == "/api/status":
            return 200, "application/json", json.dumps(self.snapshot()).encode()
        if path in STATIC:
            name, kind = STATIC[path]
            return 200, kind, resources.files("p2pshard.observe").joinpath("static", name).read_bytes()
        return 404, "text/plain", b"not found\n"

    def snapshot(self) -> dict[str, Any]:
        """What the dashboard shows: this node, its peers and their scores, the mesh, the rounds."""
        node = self.node
        scores = node.pubsub.scores() if node.pubsub is not None else {}
        mesh: dict[str, list[str]] = {}
        if node.pubsub is not None:
            from libp2p.peer.id import ID

            router = node.pubsub.router
            for topic in sorted(router.subscriptions):
                mesh[topic] = sorted(ID(p).to_base58() for p in router.mesh_peers(topic))
        in_mesh = {p for peers in mesh.values() for p in peers}
        peers = [
            {
                "peer_id": pid,
                "score": scores.get(pid),
                "in_mesh": pid in in_mesh,
                "model": self.history.peer_hashes.get(pid),
            }
            for pid in (p.to_base58() for p in node.peers())
        ]
        trainer = node.trainer
        training: dict[str, Any] | None = None
        if trainer is not None:
            proto = trainer.proto
            current = proto.current
            training = {
                "stage": proto.stage.value,
                "model_round": proto.model_round,
                "round": current.round if current is not None else None,
                "phase": getattr(getattr(current, "phase", None), "value", None),
                "last_round": proto.rounds,
            }
        rows = list(self.history.rows)
        return {
            "peer_id": node.peer_id.to_base58(),
            "version": p2pshard.__version__,
            "network_id": node.config.network_id,
            "addrs": node.addrs,
            "uptime_s": trio.current_time() - node.started_at,
            "peers": peers,
            "mesh": mesh,
            "training": training,
            "rounds": [r.to_json() for r in rows],
            "last_round": rows[-1].to_json() if rows else None,
            "majority": self.history.majority(),
        }


async def _read_request(stream: trio.SocketStream) -> str | None:
    """The path of a ``GET`` request (None: not one we serve)."""
    data = b""
    while b"\r\n\r\n" not in data and b"\n\n" not in data:
        chunk = await stream.receive_some(4096)
        if not chunk:
            break
        data += chunk
        if len(data) > MAX_REQUEST_BYTES:
            return None
    line = data.split(b"\n", 1)[0].decode("latin-1").strip()
    parts = line.split(" ")
    if len(parts) != 3 or parts[0] != "GET" or not parts[1].startswith("/"):
        return None
    return parts[1]


async def _respond(stream: trio.SocketStream, status: int, kind: str, body: bytes) -> None:
    reason = {200: "OK", 400: "Bad Request", 404: "Not Found"}[status]
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
        "Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n"
    )
    await stream.send_all(head.encode() + body)


async def serve(node: Node, address: str, *, task_status: TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve metrics and the dashboard for ``node`` on ``address`` (host:port; port 0 = any)."""
    host, port = parse_hostport(address)
    history = History()
    node.round_listeners.append(history.on_round)
    server = ObserveServer(node, history)
    await server.run(host, port, task_status=task_status)

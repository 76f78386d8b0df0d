"""``conformance live``: check a running node black-box, over the network, rule by rule.

The checker is p2pshard's own node in client mode (no DHT, no discovery). It dials the target,
asks for its status, negotiates protocol ids, sends broken request streams and reads the status
codes, and then — with two more client nodes running our gossip router as probe peers — publishes
valid and invalid messages from one probe and watches what the target forwards to the other.
Every rule yields a :class:`RuleResult`; a rule that could not be checked fails with the reason.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import trio
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from rich.console import Console
from rich.table import Table

from p2pshard.config import NodeConfig
from p2pshard.conformance.runners.reqresp import parse_response
from p2pshard.core.gossip import (
    MESHSUB_V10,
    MESHSUB_V11,
    MESHSUB_V12,
    GossipConfig,
    GossipMessage,
    GossipRouter,
    PeerScoreParams,
    Secp256k1Signer,
)
from p2pshard.core.topics import CLOCK_WINDOW_MS, topic_name
from p2pshard.core.wire import blob_pb2, reqresp_pb2, status_pb2, topics_pb2
from p2pshard.core.wire.framing import encode_frame, encode_uvarint
from p2pshard.net.blob import BLOB_PROTOCOL
from p2pshard.net.host import parse_peer_addr
from p2pshard.net.pubsub import PubSub, PubSubConfig
from p2pshard.net.reqresp import RpcError
from p2pshard.node import Node, open_node
from p2pshard.protocols.status import STATUS_PROTOCOL, fetch_status

if TYPE_CHECKING:  # libp2p pulls in trio-typing, whose stubs shadow trio's own types
    from trio_typing import TaskStatus

UNKNOWN_PROTOCOL = "/p2pshard/conformance-no-such-protocol/1.0.0"
GOSSIP_TOPIC = "votes"
MESHSUB_IDS = (MESHSUB_V12, MESHSUB_V11, MESHSUB_V10)


@dataclass(frozen=True)
class LiveOptions:
    timeout_s: float = 20.0
    gossip_wait_s: float = 3.0
    """How long a probe watches for a message the target must not forward."""
    probe_heartbeat_s: float = 0.5


@dataclass(frozen=True)
class RuleResult:
    rule: str
    passed: bool
    detail: str


class _Results:
    def __init__(self) -> None:
        self.items: list[RuleResult] = []

    def add(self, rule: str, passed: bool, detail: str) -> bool:
        self.items.append(RuleResult(rule, passed, detail))
        return passed

    def skip(self, rules: list[str], why: str) -> None:
        for rule in rules:
            self.add(rule, False, f"not checked: {why}")


def run_live(address: str, options: LiveOptions | None = None) -> list[RuleResult]:
    """Check the node at ``address`` (a full ``/…/p2p/<peer id>`` multiaddr)."""
    info = parse_peer_addr(address)  # AddressError is a ValueError
    return trio.run(check_node, info, options or LiveOptions())


async def check_node(info: PeerInfo, options: LiveOptions) -> list[RuleResult]:
    results = _Results()
    async with open_node(NodeConfig(), client_only=True) as checker:
        try:
            with trio.fail_after(options.timeout_s):
                await checker.connector.connect(info)
        except Exception as exc:  # any dial failure is the finding
            results.add("connect", False, f"cannot connect (TCP + Noise + yamux/mplex): {exc}")
            return results.items
        results.add("connect", True, "TCP + Noise + a muxer negotiated")
        status = await _status_rules(results, checker, info.peer_id, options)
        await _protocol_rules(results, checker, info.peer_id, options)
        await _request_rules(results, checker, info.peer_id, options)
        after = await _call_status(checker, info.peer_id, options)
        results.add(
            "status.after_bad_requests",
            isinstance(after, status_pb2.StatusResponse),
            "still answers status after the broken requests"
            if isinstance(after, status_pb2.StatusResponse)
            else f"no status after the broken requests: {after}",
        )
    await _gossip_rules(results, info, status, options)
    return results.items


async def _call_status(node: Node, peer: ID, options: LiveOptions) -> status_pb2.StatusResponse | str:
    try:
        return await fetch_status(node.client, peer, timeout_s=options.timeout_s)
    except RpcError as exc:
        return str(exc)


async def _status_rules(
    results: _Results, checker: Node, peer: ID, options: LiveOptions
) -> status_pb2.StatusResponse | None:
    status = await _call_status(checker, peer, options)
    if not isinstance(status, status_pb2.StatusResponse):
        results.add("status.answers", False, f"{STATUS_PROTOCOL}: {status}")
        results.skip(["status.peer_id", "protocols.advertised"], "no status")
        return None
    results.add("status.answers", True, f"{STATUS_PROTOCOL} answered OK with a StatusResponse")
    want = peer.to_base58()
    results.add("status.peer_id", status.peer_id == want, f"peer_id {status.peer_id!r} (dialled {want})")
    advertised = set(status.protocols)
    missing = [p for p in (STATUS_PROTOCOL, BLOB_PROTOCOL) if p not in advertised]
    if not any(p in advertised for p in MESHSUB_IDS):
        missing.append("/meshsub/1.x.0")
    results.add(
        "protocols.advertised",
        not missing,
        "advertises " + ", ".join(sorted(advertised)) if not missing else f"missing {', '.join(missing)}",
    )
    return status


async def _protocol_rules(results: _Results, checker: Node, peer: ID, options: LiveOptions) -> None:
    for protocol in (STATUS_PROTOCOL, BLOB_PROTOCOL):
        try:
            with trio.fail_after(options.timeout_s):
                stream = await checker.connector.open_stream(peer, protocol)
            await stream.reset()
            results.add(f"protocols.negotiates {protocol}", True, "multistream-select accepted it")
        except Exception as exc:  # the finding
            results.add(f"protocols.negotiates {protocol}", False, f"refused or failed: {exc!r}")
    try:
        with trio.fail_after(options.timeout_s):
            stream = await checker.connector.open_stream(peer, UNKNOWN_PROTOCOL)
        await stream.reset()
        results.add("protocols.unknown_refused", False, f"accepted {UNKNOWN_PROTOCOL}")
    except trio.TooSlowError:
        results.add("protocols.unknown_refused", False, "no answer to an unknown protocol id")
    except Exception as exc:  # py-libp2p raises the peer's "na" wrapped in its own errors
        results.add("protocols.unknown_refused", True, f"refused ({type(exc).__name__})")


async def _raw_request(
    checker: Node, peer: ID, protocol: str, data: bytes, close_write: bool, timeout_s: float
) -> dict[str, object]:
    """Write raw bytes on a fresh stream and parse whatever comes back as a Response."""
    stream = await checker.connector.open_stream(peer, protocol)
    received = bytearray()
    try:
        with trio.fail_after(timeout_s):
            await stream.write(data)
            if close_write:
                await stream.close_write()  # type: ignore[attr-defined]
            while len(received) < (1 << 20):
                try:
                    chunk = await stream.read(65536)
                except Exception:  # EOF or reset: the answer, if any, is complete
                    break
                if not chunk:
                    break
                received += chunk
    finally:
        with trio.move_on_after(2):
            await stream.reset()
    return parse_response(bytes(received))


async def _request_rules(results: _Results, checker: Node, peer: ID, options: LiveOptions) -> None:
    digest = b"\x5a" * 32
    checks: list[tuple[str, str, bytes, bool, str]] = [
        (
            "framing.valid_request",
            STATUS_PROTOCOL,
            encode_frame(reqresp_pb2.Request(deadline_ms=5000).SerializeToString()),
            True,
            "OK",
        ),
        ("framing.garbage_request", STATUS_PROTOCOL, encode_frame(b"\xff\xff\xff"), True, "INVALID_ARGUMENT"),
        ("framing.malformed_prefix", STATUS_PROTOCOL, b"\xff" * 9 + b"\x01", True, "INVALID_ARGUMENT"),
        ("framing.truncated_frame", STATUS_PROTOCOL, b"\x0a\x0a\x00\x00", True, "INVALID_ARGUMENT"),
        ("framing.empty_stream", STATUS_PROTOCOL, b"", True, "INVALID_ARGUMENT"),
        ("framing.oversized_prefix", STATUS_PROTOCOL, encode_uvarint(1 << 30), False, "RESOURCE_EXHAUSTED"),
        (
            "blob.unknown_digest",
            BLOB_PROTOCOL,
            encode_frame(
                reqresp_pb2.Request(
                    body=blob_pb2.BlobRequest(digest=digest).SerializeToString()
                ).SerializeToString()
            ),
            True,
            "NOT_FOUND",
        ),
        (
            "blob.bad_digest",
            BLOB_PROTOCOL,
            encode_frame(
                reqresp_pb2.Request(
                    body=blob_pb2.BlobRequest(digest=b"\x01").SerializeToString()
                ).SerializeToString()
            ),
            True,
            "INVALID_ARGUMENT",
        ),
    ]
    for rule, protocol, data, close_write, want in checks:
        try:
            got = await _raw_request(checker, peer, protocol, data, close_write, options.timeout_s)
        except trio.TooSlowError:
            results.add(rule, False, f"expected {want}, got no answer in {options.timeout_s:.0f}s")
            continue
        except Exception as exc:  # the stream could not even be opened
            results.add(rule, False, f"expected {want}, stream failed: {exc!r}")
            continue
        code = got.get("code")
        ok = code == want
        detail = f"answered {code}" if code is not None else f"no Response ({got.get('problem')})"
        if ok and want == "OK":
            try:
                status_pb2.StatusResponse().ParseFromString(bytes.fromhex(str(got.get("body"))))
            except Exception:  # protobuf raises DecodeError; anything else is as bad
                ok, detail = False, "answered OK but the body is not a StatusResponse"
        if not ok:
            detail = f"expected {want}, {detail}"
        results.add(rule, ok, detail)


# ---------------------------------------------------------------------------------------- gossip


@dataclass
class _Probe:
    node: Node
    pubsub: PubSub
    received: list[GossipMessage]


@asynccontextmanager
async def _probe(network_id: str, options: LiveOptions) -> AsyncIterator[_Probe]:
    """A client node running our gossip router; refuses peer exchange so it only talks to the target."""
    async with open_node(NodeConfig(network_id=network_id), client_only=True) as node:
        from p2pshard.core.topics import message_id

        cfg = GossipConfig.build(
            message_id_fn=message_id,
            score_params=PeerScoreParams(),
            heartbeat_interval=options.probe_heartbeat_s,
        )
        signer = Secp256k1Signer(bytes(node.identity.private_key.to_bytes()))
        router = GossipRouter(node.host.get_id().to_bytes(), cfg, rng=random.Random(), signer=signer)
        pubsub = PubSub(node.host, node.connector, router, node.counters, PubSubConfig(router=cfg))
        await node.nursery.start(pubsub.run)
        yield _Probe(node, pubsub, [])


async def _collect(
    probe: _Probe, topic: str, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    async with probe.pubsub.subscribe(topic) as channel:
        task_status.started()
        async for message in channel:
            probe.received.append(message)


async def _wait_for(predicate: Callable[[], bool], timeout_s: float, step: float = 0.05) -> bool:
    with trio.move_on_after(timeout_s) as scope:
        while not predicate():  # noqa: ASYNC110 - polling probe state that has no event
            await trio.sleep(step)
    return not scope.cancelled_caught


def _vote(author: bytes, tag: bytes, *, stamp_ms: int | None = None) -> bytes:
    return topics_pb2.ValidationVote(
        validator=author,
        proof_id=hashlib.sha256(tag).digest(),
        valid=True,
        timestamp_ms=int(time.time() * 1000) if stamp_ms is None else stamp_ms,
        signature=b"\x30\x00",
    ).SerializeToString()


GOSSIP_RULES = [
    "gossip.subscribed",
    "gossip.forwards_valid",
    "gossip.drops_outside_clock_window",
    "gossip.drops_author_not_sender",
    "gossip.drops_undecodable",
]


async def _gossip_rules(
    results: _Results, info: PeerInfo, status: status_pb2.StatusResponse | None, options: LiveOptions
) -> None:
    if status is None:
        results.skip(GOSSIP_RULES, "no status (the network id and topics come from it)")
        return
    topic = topic_name(status.network_id or "devnet", GOSSIP_TOPIC)
    subscribed = {m.topic for m in status.mesh}
    if not results.add(
        "gossip.subscribed",
        topic in subscribed,
        f"subscribed to {topic}"
        if topic in subscribed
        else f"status lists no subscription to {topic} (mesh: {sorted(subscribed) or 'none'})",
    ):
        results.skip(GOSSIP_RULES[1:], f"the node is not in {topic}")
        return
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(_probe(status.network_id, options))
        b = await stack.enter_async_context(_probe(status.network_id, options))
        target = info.peer_id.to_bytes()
        try:
            with trio.fail_after(options.timeout_s):
                for p in (a, b):
                    await p.node.connector.connect(info)
                    await p.node.nursery.start(_collect, p, topic)
        except Exception as exc:  # the finding
            results.skip(GOSSIP_RULES[1:], f"probes could not join {topic}: {exc!r}")
            return
        ready = await _wait_for(
            lambda: all(target in p.pubsub.router.mesh_peers(topic) for p in (a, b)), options.timeout_s
        )
        if not ready:
            results.skip(GOSSIP_RULES[1:], "the node did not accept the probes into its mesh (GRAFT)")
            return
        a_id, b_id = a.node.host.get_id().to_bytes(), b.node.host.get_id().to_bytes()
        valid = _vote(a_id, b"valid")
        await a.pubsub.publish(topic, valid)
        got = await _wait_for(lambda: any(m.data == valid for m in b.received), options.timeout_s)
        results.add(
            "gossip.forwards_valid",
            got,
            "a valid vote from probe A reached probe B through the node"
            if got
            else f"a valid vote from probe A did not reach probe B in {options.timeout_s:.0f}s",
        )
        # IGNORE costs the sender nothing, so it goes first; each REJECT comes from its own probe.
        stale = _vote(a_id, b"stale", stamp_ms=int(time.time() * 1000) - 2 * CLOCK_WINDOW_MS)
        wrong_author = _vote(b_id, b"wrong-author")
        undecodable = b"\x0a\xff\x01"
        await a.pubsub.publish(topic, stale)
        await a.pubsub.publish(topic, wrong_author)
        await b.pubsub.publish(topic, undecodable)
        await trio.sleep(options.gossip_wait_s)
        for rule, data, watcher, what in [
            ("gossip.drops_outside_clock_window", stale, b, "a vote stamped 10 minutes ago (IGNORE)"),
            (
                "gossip.drops_author_not_sender",
                wrong_author,
                b,
                "a vote whose validator is not its sender (REJECT)",
            ),
            ("gossip.drops_undecodable", undecodable, a, "bytes that are no ValidationVote (REJECT)"),
        ]:
            leaked = any(m.data == data for m in watcher.received)
            results.add(rule, not leaked, f"{what}: {'FORWARDED' if leaked else 'not forwarded'}")


# ---------------------------------------------------------------------------------------- report


def print_live(results: list[RuleResult], console: Console, address: str, as_json: bool) -> None:
    if as_json:
        console.print_json(
            json.dumps(
                {
                    "address": address,
                    "rules": [asdict(r) for r in results],
                    "passed": all(r.passed for r in results),
                }
            )
        )
        return
    table = Table(title=f"conformance live — {address}")
    table.add_column("rule")
    table.add_column("result")
    table.add_column("detail")
    for r in results:
        table.add_row(r.rule, "[green]PASS[/green]" if r.passed else "[red]FAIL[/red]", r.detail)
    console.print(table)
    failed = sum(not r.passed for r in results)
    console.print(
        f"[green]conformant[/green]: {len(results)} rules passed"
        if not failed
        else f"[red]not conformant[/red]: {failed} of {len(results)} rules failed",
        highlight=False,
    )

"""``conformance live`` against real nodes on 127.0.0.1: a conforming one passes every rule, one
that forwards gossip without validating fails exactly the gossip rules."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial

import trio

from p2pshard import NodeConfig, open_node
from p2pshard.conformance.live import GOSSIP_RULES, LiveOptions, RuleResult, check_node
from p2pshard.core.gossip import GossipMessage, ValidationResult
from p2pshard.core.topics import TOPICS, topic_name, validate
from p2pshard.net.host import parse_peer_addr
from p2pshard.node import Node

OPTIONS = LiveOptions(timeout_s=10.0, gossip_wait_s=1.5, probe_heartbeat_s=0.2)


@asynccontextmanager
async def topic_node(*, validating: bool) -> AsyncIterator[Node]:
    """A node in all of its network's topics, validating them with core.topics.validate — what
    ``p2pshard start`` must do — or, with ``validating=False``, accepting every message (the
    ``forward-invalid`` fault)."""
    network = "livetest"
    async with AsyncExitStack() as stack:
        node = await stack.enter_async_context(
            open_node(NodeConfig(network_id=network, gossip_heartbeat_s=0.2))
        )
        assert node.pubsub is not None

        async def structural(msg: GossipMessage) -> ValidationResult:
            if not validating:
                return ValidationResult.ACCEPT
            return validate(msg, network, int(time.time() * 1000)).result

        for name in TOPICS:
            topic = topic_name(network, name)
            node.pubsub.set_validator(topic, structural)
            await stack.enter_async_context(node.pubsub.subscribe(topic))
        yield node


def _failed(results: list[RuleResult]) -> dict[str, str]:
    return {r.rule: r.detail for r in results if not r.passed}


async def test_a_conforming_node_passes_every_rule() -> None:
    async with topic_node(validating=True) as node:
        results = await check_node(parse_peer_addr(node.addrs[0]), OPTIONS)
    assert _failed(results) == {}
    rules = {r.rule for r in results}
    assert {"framing.oversized_prefix", "protocols.unknown_refused", "status.answers", *GOSSIP_RULES} <= rules


async def test_a_node_that_forwards_invalid_gossip_fails_the_gossip_rules() -> None:
    async with topic_node(validating=False) as node:
        results = await check_node(parse_peer_addr(node.addrs[0]), OPTIONS)
    failed = _failed(results)
    assert set(failed) == {
        "gossip.drops_outside_clock_window",
        "gossip.drops_author_not_sender",
        "gossip.drops_undecodable",
    }
    assert all("FORWARDED" in detail for detail in failed.values())


async def _start(nursery: trio.Nursery, env: dict[str, str]) -> tuple[trio.Process, str]:
    """``p2pshard start --json`` in its own process; returns it and the address it prints."""
    proc = await nursery.start(
        partial(
            trio.run_process,
            [sys.executable, "-m", "p2pshard", "start", "--json", "--no-train"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env={**os.environ, **env},
            check=False,
        )
    )
    assert proc.stdout is not None
    buf = b""
    with trio.fail_after(30):
        while b"\n" not in buf:
            chunk = await proc.stdout.receive_some(4096)
            assert chunk, "p2pshard start exited before printing its address"
            buf += chunk
    event = json.loads(buf.split(b"\n", 1)[0])
    return proc, str(event["addrs"][0])


async def test_p2pshard_start_passes_every_rule() -> None:
    """The real command, in its own process (the in-process tests above show that a node which
    forwards gossip unvalidated fails exactly the gossip rules)."""
    async with trio.open_nursery() as nursery:
        good, good_addr = await _start(nursery, {})
        try:
            results = await check_node(parse_peer_addr(good_addr), OPTIONS)
        finally:
            good.send_signal(signal.SIGTERM)
    assert _failed(results) == {}

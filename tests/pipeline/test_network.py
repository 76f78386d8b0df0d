"""Pipeline inference between in-process nodes on 127.0.0.1: chains of 2 and 4 servers give the
whole model's logits, with and without the KV cache, and greedy generation through the network
equals local generation token for token, also when a server evicted the session mid-way."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import numpy as np
import pytest
import torch
import trio

from p2pshard import NodeConfig, open_node
from p2pshard.core.pipeline import ChainError, ForwardRejected, Reason
from p2pshard.engine.inference import StageExecutor, local_generate
from p2pshard.engine.model import PRESETS, LayerRange, build_model
from p2pshard.node import Node
from p2pshard.protocols.pipeline import RemoteStage, StageFailed, fetch_shard_info, forward
from tests.util import eventually

CFG = PRESETS["micro"]
PROMPT = [5, 17, 200, 3, 99, 42]


@asynccontextmanager
async def servers(ranges: list[str]) -> AsyncIterator[tuple[Node, list[Node]]]:
    """One server per range (the first two through config.serve_layers, the rest through
    Node.serve_stage) and a client-only node."""
    async with AsyncExitStack() as stack:
        nodes = []
        for i, r in enumerate(ranges):
            if i < 2:
                node = await stack.enter_async_context(open_node(NodeConfig(preset="micro", serve_layers=r)))
            else:
                node = await stack.enter_async_context(open_node(NodeConfig()))
                a, b = map(int, r.split(":"))
                node.serve_stage(StageExecutor(CFG, LayerRange(a, b)))
            nodes.append(node)
        client = await stack.enter_async_context(open_node(NodeConfig(), client_only=True))
        yield client, nodes


def _whole_logits(tokens: list[int]) -> np.ndarray:
    with torch.no_grad():
        out: np.ndarray = build_model(CFG, 0).eval()(torch.tensor([tokens])).numpy()
    return out


@pytest.mark.parametrize("ranges", [["0:2", "2:4"], ["0:1", "1:2", "2:3", "3:4"]], ids=["2", "4"])
async def test_a_chain_gives_the_whole_models_logits_and_generation(ranges: list[str]) -> None:
    async with servers(ranges) as (client, nodes):
        # given out of order: the chain is planned from what each server says it serves
        chain = await client.chain([n.addrs[0] for n in reversed(nodes)])
        assert [s.peer for s in chain.stages] == [n.peer_id for n in nodes]
        whole = _whole_logits(PROMPT)
        plain = await chain.forward(np.array([PROMPT]))
        np.testing.assert_allclose(plain, whole, rtol=1e-5, atol=1e-5)
        # with the cache: the prefix, then one token at a time
        sid = b"session-1"
        cached = [await chain.forward(np.array([PROMPT[:4]]), session_id=sid, use_cache=True)]
        for i in (4, 5):
            step = np.array([PROMPT[i : i + 1]])
            cached.append(await chain.forward(step, session_id=sid, start=i, use_cache=True))
        np.testing.assert_allclose(np.concatenate(cached, axis=1), whole, rtol=1e-4, atol=1e-5)
        assert all(n.pipeline is not None and len(n.pipeline.table) == 1 for n in nodes)

        local = local_generate(CFG, 0, PROMPT, 10)
        streamed: list[int] = []
        assert await chain.generate(PROMPT, 10, on_token=streamed.append) == local
        assert streamed == local
        assert await chain.generate(PROMPT, 10, use_cache=False) == local_generate(
            CFG, 0, PROMPT, 10, use_cache=False
        )


async def test_an_expired_session_is_replayed_and_the_text_is_unchanged() -> None:
    async with servers(["0:2", "2:4"]) as (client, nodes):
        now = [0.0]
        second = nodes[1].pipeline
        assert second is not None
        second.clock = lambda: now[0]
        chain = await client.chain([n.addrs[0] for n in nodes])

        def tick(_token: int) -> None:
            now[0] += 1000.0  # past the idle TTL after every token: each step finds it expired

        out = await chain.generate(PROMPT, 5, on_token=tick)
        assert out == local_generate(CFG, 0, PROMPT, 5)
        assert chain.replays == 4  # every step after the first met session_expired once
        assert nodes[1].counters.get("pipeline.rejected.session_expired") == 4


async def test_a_bad_request_over_the_wire_gets_its_typed_error() -> None:
    async with servers(["0:2", "2:4"]) as (client, nodes):
        await client.connect(nodes[1].addrs[0])
        info = await fetch_shard_info(client.client, nodes[1].peer_id)
        assert (info.layer_start, info.layer_end, info.total_layers, info.d_model) == (2, 4, 4, CFG.d_model)
        assert len(info.weights_hash) == 32 and info.model_id.startswith("init-")
        stage = RemoteStage(nodes[1].peer_id, info)
        with pytest.raises(ForwardRejected) as caught:
            await forward(client.client, stage, np.ones((1, 3, CFG.d_model + 1), dtype=np.float32))
        assert caught.value.reason == Reason.WRONG_SHAPE
        with pytest.raises(ForwardRejected) as caught:
            hidden = np.ones((1, 1, CFG.d_model), dtype=np.float32)
            await forward(client.client, stage, hidden, session_id=b"s", start=7, use_cache=True)
        assert caught.value.reason == Reason.UNKNOWN_SESSION
        assert nodes[1].pipeline is not None and len(nodes[1].pipeline.table) == 0


async def test_no_chain_is_a_clear_error() -> None:
    async with servers(["0:2"]) as (client, nodes):
        with pytest.raises(ChainError, match="starting at layer 2"):
            await client.chain([nodes[0].addrs[0]])


async def test_a_server_that_stops_mid_generation_is_replaced_and_the_text_is_unchanged() -> None:
    """Two servers hold layers 2:4; the one in use stops after the third token. The client
    reroutes to the other, replays the sequence, and the text is the local model's.

    A node cancelled in-process leaves its sockets open (py-libp2p's host closes nothing once its
    scope is cancelled), so to the client this is a server that hangs: it is given up on after
    ``hang_min_s`` (1 s here), as a server with a replacement is."""
    async with servers(["0:2"]) as (client, nodes), trio.open_nursery() as nursery:
        doomed_scope = trio.CancelScope()

        async def run_doomed(task_status: trio.TaskStatus[Node]) -> None:
            with doomed_scope:
                async with open_node(NodeConfig(preset="micro", serve_layers="2:4")) as node:
                    task_status.started(node)
                    await trio.sleep_forever()

        doomed: Node = await nursery.start(run_doomed)
        async with open_node(NodeConfig(preset="micro", serve_layers="2:4")) as spare:
            chain = await client.chain([nodes[0].addrs[0], doomed.addrs[0], spare.addrs[0]])
            assert [s.peer for s in chain.stages] == [nodes[0].peer_id, doomed.peer_id]
            seen: list[int] = []

            def kill_after_three(token: int) -> None:
                seen.append(token)
                if len(seen) == 3:
                    doomed_scope.cancel()

            began = trio.current_time()
            out = await chain.generate(PROMPT, 8, on_token=kill_after_three)
            assert trio.current_time() - began < chain.timeout_s  # not the full timeout
            assert out == local_generate(CFG, 0, PROMPT, 8)
            assert [f.stage.peer for f in chain.failovers] == [doomed.peer_id]
            assert [s.peer for s in chain.stages] == [nodes[0].peer_id, spare.peer_id]
            # with nobody left for layers 2:4, the error says so
            spare_stage = chain.stages[1]
            with pytest.raises(ChainError, match="no other chain"):
                chain.reroute(StageFailed(spare_stage, RuntimeError("gone")))
        nursery.cancel_scope.cancel()


async def test_a_client_finds_the_servers_in_the_dht() -> None:
    """Servers provide their network's pipeline key; a client that joined the DHT (and was given
    no server) finds them, plans the chain and generates the local model's text."""
    async with (
        open_node(NodeConfig(preset="micro", serve_layers="0:2")) as head,
        open_node(NodeConfig(preset="micro", serve_layers="2:4", bootstrap=[head.addrs[0]])) as tail,
    ):
        # the tail joined through the head before it announced: the head holds its record
        await eventually(lambda: tail.counters.get("pipeline.announced") >= 1)
        async with open_node(NodeConfig(bootstrap=[head.addrs[0]])) as client:
            chain = await client.chain()
            assert [s.peer for s in chain.stages] == [head.peer_id, tail.peer_id]
            assert await chain.generate(PROMPT, 6) == local_generate(CFG, 0, PROMPT, 6)
    async with open_node(NodeConfig(), client_only=True) as lonely:
        with pytest.raises(ChainError, match="no server"):
            await lonely.chain()

"""Inference benchmark: generation through a chain of layer-range servers, side by side in one run.

The servers and clients are p2pshard nodes IN THIS ONE PROCESS, talking over loopback TCP with
Noise and yamux (the same streams, codec and rules as separate machines; one event loop and one
CPU budget for all of them, so a chain of 4 pays for its 4 servers' work and its 8 hops here).

(a) Greedy generation with the KV cache through 1, 2 and 4 stages, tokens/s against the whole
    model run locally with its cache (same prompt, same number of tokens; the text is checked to
    be the local one).
(b) Aggregate tokens/s of 1, 4, 16 (and 32 without --quick) concurrent sessions through a 2-stage
    chain, spread over up to 4 client nodes. Requests are not batched yet (one forward at a
    time per server), so this measures how much the pipeline overlaps, not batching.
(c) Failover (hang): a 2-stage chain with a spare server for the second range; the server in use stops
    after the 3rd token; time from the stop to the next token, over several stops, and whether
    the text is unchanged. A node stopped in-process keeps its sockets open (see
    tests/pipeline/test_network.py), so this is the "server hangs" case: the client gives up after
    max(HANG_MIN_S, 20 x the usual forward time) and replays on the spare.
(d) Failover (kill): the same with the second range served by `p2pshard serve` processes, the one in
    use killed with SIGKILL after the 3rd token; this is the summary line's failover figure.
Petals is not run here: it is not installed, and ``pip install petals`` pins its own torch,
transformers and hivemind versions (FACTS.md: hivemind needs its own numpy pin on these machines).

Usage::

    python benchmarks/inference.py --quick    # tiny model, ~1 minute
    python benchmarks/inference.py            # more tokens and 32 sessions
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import numpy as np
import trio

from p2pshard import NodeConfig, open_node
from p2pshard.engine.inference import StageExecutor, local_generate
from p2pshard.engine.model import PRESETS, LayerRange
from p2pshard.node import Node

PROMPT = list(b"The network holds the model: ")


def cuts(n_layers_flat: int, stages: int) -> list[LayerRange]:
    bounds = [round(i * n_layers_flat / stages) for i in range(stages + 1)]
    return [LayerRange(a, b) for a, b in itertools.pairwise(bounds)]


@asynccontextmanager
async def serving(preset: str, ranges: list[LayerRange]) -> AsyncIterator[list[Node]]:
    cfg = PRESETS[preset]
    async with AsyncExitStack() as stack:
        nodes = []
        for r in ranges:
            node = await stack.enter_async_context(open_node(NodeConfig()))
            node.serve_stage(StageExecutor(cfg, r))
            nodes.append(node)
        yield nodes


def _local(preset: str, tokens: int) -> tuple[float, list[int]]:
    """The whole model with its KV cache, built before the clock starts (as the servers are)."""
    cfg = PRESETS[preset]
    whole = StageExecutor(cfg, LayerRange.full(cfg), max_batch=1)
    best = float("inf")
    for run in range(3):  # warm, then the best of the rest (the machine may be shared)
        seq = list(PROMPT)
        began = time.perf_counter()
        logits = whole.forward(np.array([seq], dtype=np.float32), 0, "s", last_only=True)
        for _ in range(tokens):
            seq.append(int(np.argmax(logits[0, -1])))
            logits = whole.forward(np.array([seq[-1:]], dtype=np.float32), len(seq) - 1, "s", last_only=True)
        if run:
            best = min(best, time.perf_counter() - began)
    took = best
    out = seq[len(PROMPT) :]
    assert out == local_generate(cfg, 0, PROMPT, tokens)
    return tokens / took, out


async def local_tps(preset: str, tokens: int) -> tuple[float, list[int]]:
    return await trio.to_thread.run_sync(_local, preset, tokens)


async def chain_tps(preset: str, stages: int, tokens: int, expected: list[int]) -> float:
    cfg = PRESETS[preset]
    ranges = cuts(cfg.n_stages_layers, stages)
    async with serving(preset, ranges) as nodes, open_node(NodeConfig(), client_only=True) as client:
        chain = await client.chain([n.addrs[0] for n in nodes])
        await chain.generate(PROMPT, 2)  # connections and first forwards out of the way
        began = time.perf_counter()
        out = await chain.generate(PROMPT, tokens)
        took = time.perf_counter() - began
    assert out == expected, "the network's text differs from the local model's"
    return tokens / took


async def sessions_tps(preset: str, sessions: int, tokens: int) -> float:
    cfg = PRESETS[preset]
    async with serving(preset, cuts(cfg.n_stages_layers, 2)) as nodes, AsyncExitStack() as stack:
        # up to 4 client nodes (a server limits connections per IP address), sessions spread over them
        clients = [
            await stack.enter_async_context(open_node(NodeConfig(), client_only=True))
            for _ in range(min(4, sessions))
        ]
        addrs = [n.addrs[0] for n in nodes]
        chains = [await clients[i % len(clients)].chain(addrs) for i in range(sessions)]
        for chain in chains:
            await chain.generate(PROMPT, 1)
        began = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for chain in chains:
                nursery.start_soon(chain.generate, PROMPT, tokens)
        return sessions * tokens / (time.perf_counter() - began)


async def failover_once(preset: str, tokens: int, expected: list[int]) -> tuple[float, bool]:
    cfg = PRESETS[preset]
    first, second = cuts(cfg.n_stages_layers, 2)
    async with serving(preset, [first]) as (head,), trio.open_nursery() as nursery:
        scope = trio.CancelScope()

        async def doomed_server(task_status: trio.TaskStatus[Node]) -> None:
            with scope:
                async with open_node(NodeConfig()) as node:
                    node.serve_stage(StageExecutor(cfg, second))
                    task_status.started(node)
                    await trio.sleep_forever()

        doomed: Node = await nursery.start(doomed_server)
        async with serving(preset, [second]) as (spare,), open_node(NodeConfig(), client_only=True) as client:
            chain = await client.chain([head.addrs[0], doomed.addrs[0], spare.addrs[0]])
            stamps: list[float] = []
            stopped_at = [0.0]

            def on_token(_token: int) -> None:
                stamps.append(time.perf_counter())
                if len(stamps) == 3:
                    stopped_at[0] = time.perf_counter()
                    scope.cancel()

            out = await chain.generate(PROMPT, tokens, on_token=on_token)
        nursery.cancel_scope.cancel()
    return stamps[3] - stopped_at[0], out == expected and len(chain.failovers) == 1


class ServeProcess:
    """``p2pshard serve`` as its own process (so that a kill closes its sockets, as a crash does)."""

    def __init__(self, preset: str, rng: LayerRange) -> None:
        self.p = subprocess.Popen(
            [sys.executable, "-m", "p2pshard", "serve", "--json", "--preset", preset, "--layers",
             f"{rng.start}:{rng.end}"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        assert self.p.stdout is not None
        for line in self.p.stdout:
            event = json.loads(line)
            if event.get("event") == "ready":
                self.addr = str(event["addrs"][0])
                return
        raise RuntimeError("the server process ended before it was ready")

    def kill(self) -> None:
        if self.p.poll() is None:
            os.kill(self.p.pid, signal.SIGKILL)
        self.p.wait()


async def process_failovers(preset: str, kills: int, expected: list[int]) -> tuple[list[float], bool]:
    cfg = PRESETS[preset]
    first, second = cuts(cfg.n_stages_layers, 2)
    head, spare = ServeProcess(preset, first), ServeProcess(preset, second)
    times, same = [], True
    try:
        for _ in range(kills):
            doomed = ServeProcess(preset, second)
            try:
                async with open_node(NodeConfig(), client_only=True) as client:
                    chain = await client.chain([head.addr, doomed.addr, spare.addr])
                    stamps: list[float] = []

                    def on_token(
                        _token: int, doomed: ServeProcess = doomed, stamps: list[float] = stamps
                    ) -> None:
                        stamps.append(time.perf_counter())
                        if len(stamps) == 3:
                            doomed.kill()
                            stamps.append(time.perf_counter())

                    out = await chain.generate(PROMPT, 8, on_token=on_token)
                times.append((stamps[4] - stamps[3]) * 1000)
                same = same and out == expected and len(chain.failovers) == 1
            finally:
                doomed.kill()
    finally:
        head.kill()
        spare.kill()
    return times, same


async def main(args: argparse.Namespace) -> None:
    preset, tokens = args.preset, args.tokens
    print(f"preset {preset}, prompt {len(PROMPT)} tokens, {tokens} new tokens (greedy, KV cache)\n")
    local, expected = await local_tps(preset, tokens)
    print("(a) generation through a chain of servers (in-process nodes, loopback, Noise + yamux)")
    print(f"{'stages':>8} {'tokens/s':>10} {'vs local':>9}")
    print(f"{'local':>8} {local:10.1f} {1.0:9.3f}")
    ratios = {}
    for stages in (1, 2, 4):
        tps = await chain_tps(preset, stages, tokens, expected)
        ratios[stages] = tps / local
        print(f"{stages:>8} {tps:10.1f} {ratios[stages]:9.3f}")
    print("\n(b) concurrent sessions through 2 stages (no batching yet: one forward at a time per server)")
    print(f"{'sessions':>8} {'tokens/s':>10} {'x one':>7}")
    counts = (1, 4, 16) if args.quick else (1, 4, 16, 32)
    agg = {}
    for n in counts:
        agg[n] = await sessions_tps(preset, n, max(4, tokens // 4))
        print(f"{n:>8} {agg[n]:10.1f} {agg[n] / agg[1]:7.2f}")
    print(f"\n(c) failover: the server in use for the second range hangs after token 3 ({args.kills} times)")
    times, same = [], True
    for _ in range(args.kills):
        took, ok = await failover_once(preset, 8, expected[:8])
        times.append(took * 1000)
        same = same and ok
    p50, worst = statistics.median(times), max(times)
    print(
        f"hang -> next token: p50 {p50:.0f} ms, max {worst:.0f} ms; text unchanged: {'yes' if same else 'no'}"
    )
    if args.process_kills:
        print(f"\n(d) failover when the server's process is killed (SIGKILL, {args.process_kills} kills)")
        ptimes, psame = await process_failovers(preset, args.process_kills, expected[:8])
        p50, worst, same = statistics.median(ptimes), max(ptimes), same and psame
        print(
            f"kill -> next token: p50 {p50:.0f} ms, max {worst:.0f} ms; "
            f"text unchanged: {'yes' if psame else 'no'}"
        )
    print("\nPetals: not run (not installed; `pip install petals` pins its own torch/transformers/hivemind)")
    print(
        f"inference: 4-stage vs local {ratios[4]:.3f}; 16 sessions {agg[16] / agg[1]:.2f} x one; "
        f"failover p50 {p50:.0f} ms max {worst:.0f} ms; text unchanged {'yes' if same else 'no'}"
    )


if __name__ == "__main__":
    logging.getLogger("libp2p").setLevel(logging.CRITICAL)  # its dial retries log every refusal
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer tokens, up to 16 sessions (~1 minute)")
    parser.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    parser.add_argument("--tokens", type=int, default=0, help="new tokens per generation")
    parser.add_argument(
        "--kills", type=int, default=-1, help="trials of a server that hangs (3 quick, else 10)"
    )
    parser.add_argument("--process-kills", type=int, default=10, help="trials killing a server's process")
    ns = parser.parse_args()
    ns.tokens = ns.tokens or (24 if ns.quick else 48)
    ns.kills = ns.kills if ns.kills >= 0 else (3 if ns.quick else 10)
    trio.run(main, ns)

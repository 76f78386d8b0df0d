"""The steps of joining that the node learns by watching its parts (see :mod:`p2pshard.events`).

Connected and DHT peers, the round schedule, a checkpoint being downloaded, data shards fetched
and the first round are read from what the node's parts already keep (the connector, the DHT's
routing table, the round protocol's state, the counters, the round reports), every
``POLL_S``: nothing in the round lifecycle is changed to report them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from p2pshard.events import mb
from p2pshard.protocols.training import RoundReport

if TYPE_CHECKING:
    from p2pshard.node import Node

POLL_S = 0.25
CHECKPOINT_NOTICE_S = 5.0


def round_text(report: RoundReport) -> str:
    loss = f"{report.loss:.4f}" if report.loss is not None else "-"
    return (
        f"round {report.round:>4}  loss {loss}  model {report.model_hash.hex()[:12]}  "
        f"contributors {report.contributors}{'' if report.contributed else ' (not us)'}  "
        f"{report.tokens_per_s:,.0f} tok/s  "
        f"sent {report.bytes_sent / 1e6:.2f} MB  received {report.bytes_received / 1e6:.2f} MB"
    )


def round_fields(report: RoundReport) -> dict[str, object]:
    return {
        "round": report.round,
        "loss": report.loss,
        "model_hash": report.model_hash.hex(),
        "tokens": report.tokens,
        "contributors": report.contributors,
        "contributed": report.contributed,
        "rejected": report.rejected,
        "tokens_per_s": report.tokens_per_s,
        "bytes_sent": report.bytes_sent,
        "bytes_received": report.bytes_received,
    }


def dht_size(node: Node) -> int:
    """Peers in the DHT's routing table."""
    try:
        return int(node.discovery.dht.routing_table.size())
    except Exception:  # py-libp2p's table changing under us: report nothing rather than fail
        return 0


async def watch_progress(node: Node) -> None:
    """Emit ``peers``, ``schedule``, ``checkpoint``, ``shards``, ``round`` and ``first_round``
    events for ``node`` as they happen (runs until the node stops)."""
    first_round = [True]

    def on_round(report: RoundReport) -> None:
        fields = round_fields(report)
        if first_round[0]:
            first_round[0] = False
            node.emit("first_round", f"first round done: round {report.round}", **fields)
        node.emit("round", round_text(report), **fields)

    node.round_listeners.append(on_round)
    last_peers: tuple[list[str], int] | None = None
    schedule_told = False
    download: tuple[float, int, float] | None = None  # (since, bytes fetched before, next notice)
    shards = 0
    last_fetched = node.counters.get("blob.fetched_bytes")
    while True:
        peers = [p.to_base58() for p in node.peers()]
        view = (peers, dht_size(node))
        if view != last_peers:
            node.emit(
                "peers",
                f"peers: {len(peers)} connected, {view[1]} in the DHT routing table",
                count=len(peers),
                dht=view[1],
                peers=peers,
            )
            last_peers = view
        trainer = node.trainer
        if trainer is not None:
            proto = trainer.proto
            if not schedule_told and proto.schedule is not None:
                schedule_told = True
                s = proto.schedule
                current = max(0, s.round_at(trainer.clock.now()))
                node.emit(
                    "schedule",
                    f"round schedule learned: {s.period:g} s rounds, network at round {current}, "
                    f"our model at round {proto.model_round}",
                    period_s=s.period,
                    network_round=current,
                    model_round=proto.model_round,
                    rounds=proto.rounds,
                )
            catching_up = proto.stage.value == "catching_up"  # loading the network's checkpoint
            fetched = node.counters.get("blob.fetched_bytes")
            now_t = trio.current_time()
            if download is None and catching_up:
                # from the count one poll ago: a small checkpoint may be in before we look
                download = (now_t, last_fetched, now_t + CHECKPOINT_NOTICE_S)
                node.emit("checkpoint", "downloading the network's checkpoint", state="started")
            elif download is not None and not catching_up:
                since, before, _ = download
                got, seconds = fetched - before, max(1e-3, now_t - since)
                node.emit(
                    "checkpoint",
                    (
                        f"checkpoint loaded: {mb(got)} in {seconds:.1f} s ({mb(got / seconds)}/s), "
                        if got
                        else "checkpoint loaded (no new bytes fetched), "
                    )
                    + f"model at round {proto.model_round}",
                    state="done",
                    bytes=got,
                    seconds=round(seconds, 2),
                    bytes_per_s=round(got / seconds),
                    round=proto.model_round,
                )
                download = None
            elif download is not None and now_t >= download[2]:
                since, before, _ = download
                got = fetched - before
                node.emit(
                    "checkpoint",
                    f"still downloading the checkpoint: {mb(got)} so far in {now_t - since:.0f} s",
                    state="waiting",
                    bytes=got,
                    seconds=round(now_t - since, 1),
                )
                download = (since, before, now_t + CHECKPOINT_NOTICE_S)
            last_fetched = fetched
            got_shards = node.counters.get("training.shards_fetched")
            if got_shards > shards:
                shards = got_shards
                node.emit(
                    "shards",
                    f"data shards fetched and verified: {shards}",
                    count=shards,
                )
        await trio.sleep(POLL_S)

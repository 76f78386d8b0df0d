"""Prometheus metrics read from the node at scrape time.

Nothing in the node calls a metrics library: :class:`NodeCollector` reads what the node's parts
already keep (the named counters, the gossip router's stats, mesh and scores, the DHT routing
table, the resource manager, the round reports) each time ``/metrics`` is scraped, and names
them as Prometheus families. Every counter the node keeps is also exported as
``p2pshard_counter_total{name=...}``, so a new counter is visible without a change here.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import trio
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

import p2pshard
from p2pshard.observe.history import History

if TYPE_CHECKING:
    from p2pshard.node import Node


def _by_prefix(counts: dict[str, int], prefix: str) -> dict[str, int]:
    return {k.removeprefix(prefix): v for k, v in counts.items() if k.startswith(prefix)}


class NodeCollector(Collector):
    def __init__(self, node: Node, history: History) -> None:
        self.node, self.history = node, history

    def collect(self) -> Iterator[Metric]:
        node = self.node
        counts = dict(node.counters.snapshot())
        yield from self._node(node, counts)
        yield from self._gossip(node, counts)
        yield from self._streams(node, counts)
        yield from self._dht(node, counts)
        yield from self._rounds(node, counts)

    def _node(self, node: Node, counts: dict[str, int]) -> Iterator[Metric]:
        info = InfoMetricFamily("p2pshard_node", "This node.")
        info.add_metric(
            [],
            {
                "peer_id": node.peer_id.to_base58(),
                "version": p2pshard.__version__,
                "network_id": node.config.network_id,
            },
        )
        yield info
        yield GaugeMetricFamily(
            "p2pshard_uptime_seconds",
            "Seconds since the node started.",
            trio.current_time() - node.started_at,
        )
        yield GaugeMetricFamily("p2pshard_peers_connected", "Connected peers.", len(node.peers()))
        every = CounterMetricFamily(
            "p2pshard_counter", "Every named counter the node keeps.", labels=["name"]
        )
        for name, value in counts.items():
            every.add_metric([name], value)
        yield every
        if node.limits is not None:
            used = GaugeMetricFamily("p2pshard_resource_used", "Resource in use.", labels=["resource"])
            limit = GaugeMetricFamily("p2pshard_resource_limit", "Resource limit.", labels=["resource"])
            for resource, (u, lim) in node.limits.resources.usage().items():
                used.add_metric([resource], max(u, 0))
                limit.add_metric([resource], lim)
            yield used
            yield limit

    def _gossip(self, node: Node, counts: dict[str, int]) -> Iterator[Metric]:
        if node.pubsub is None:
            return
        stats = node.pubsub.router.stats
        events = dict(stats.events)
        messages = CounterMetricFamily(
            "p2pshard_gossip_messages",
            "Gossip messages: in = first seen from peers, out = published by us, delivered = to our "
            "subscribers (topic=all: the router counts across topics).",
            labels=["direction", "topic"],
        )
        messages.add_metric(["in", "all"], events.get("message_first_seen", 0))
        messages.add_metric(["out", "all"], events.get("published", 0))
        messages.add_metric(["delivered", "all"], events.get("delivered", 0))
        yield messages
        rpcs = CounterMetricFamily("p2pshard_gossip_rpcs", "Gossip RPCs.", labels=["direction"])
        rpcs.add_metric(["in"], events.get("rpc_received", 0))
        rpcs.add_metric(["out"], events.get("rpc_sent", 0))
        yield rpcs
        yield CounterMetricFamily(
            "p2pshard_gossip_duplicates",
            "Gossip messages received again after the first copy.",
            value=stats.dropped.get("message_duplicate", 0),
        )
        router_events = CounterMetricFamily(
            "p2pshard_gossip_router_events", "Gossip router events.", labels=["event"]
        )
        for event, value in sorted(events.items()):
            router_events.add_metric([event], value)
        yield router_events
        dropped = CounterMetricFamily(
            "p2pshard_gossip_dropped", "What the gossip router discarded, by reason.", labels=["reason"]
        )
        for reason, value in sorted(stats.dropped.items()):
            dropped.add_metric([str(reason)], value)
        yield dropped
        verdicts = CounterMetricFamily(
            "p2pshard_gossip_validation",
            "Verdicts of our topic validators (accept, reject, ignore), by reason.",
            labels=["result", "reason"],
        )
        rejections = CounterMetricFamily(
            "p2pshard_gossip_rejections", "Gossip messages rejected, by reason.", labels=["reason"]
        )
        rejected: dict[str, int] = {}
        for prefix in ("topics.", "training.announcement."):
            for key, value in _by_prefix(counts, prefix).items():
                result, _, reason = key.partition(".")
                if result in ("accept", "reject", "ignore"):
                    verdicts.add_metric([result, reason], value)
                    if result == "reject":
                        rejected[reason] = rejected.get(reason, 0) + value
        for reason, value in _by_prefix(counts, "pubsub.rejected.").items():
            rejected[reason] = rejected.get(reason, 0) + value
        for reason, value in sorted(rejected.items()):
            rejections.add_metric([reason], value)
        yield verdicts
        yield rejections
        mesh = GaugeMetricFamily("p2pshard_gossip_mesh_peers", "Peers in our mesh.", labels=["topic"])
        for topic, size in node.pubsub.mesh_sizes().items():
            mesh.add_metric([topic], size)
        yield mesh
        scores = GaugeMetricFamily("p2pshard_gossip_peer_score", "Gossip peer score.", labels=["peer"])
        for peer, score in node.pubsub.scores().items():
            scores.add_metric([peer], score)
        yield scores

    def _streams(self, node: Node, counts: dict[str, int]) -> Iterator[Metric]:
        usage = node.limits.resources.usage() if node.limits is not None else {}
        yield GaugeMetricFamily("p2pshard_streams_open", "Streams open now.", usage.get("streams", (0, 0))[0])
        moved = CounterMetricFamily(
            "p2pshard_stream_bytes", "Bytes moved over request streams.", labels=["direction", "what"]
        )
        moved.add_metric(["out", "blob"], counts.get("blob.served_bytes", 0))
        moved.add_metric(["in", "blob"], counts.get("blob.fetched_bytes", 0))
        moved.add_metric(["out", "update"], counts.get("training.bytes_sent", 0))
        moved.add_metric(["in", "update"], counts.get("training.bytes_received", 0))
        yield moved
        answered = CounterMetricFamily(
            "p2pshard_stream_requests", "Requests we answered, by status code.", labels=["code"]
        )
        for code, value in _by_prefix(counts, "reqresp.answered.").items():
            answered.add_metric([code], value)
        yield answered
        errors = CounterMetricFamily(
            "p2pshard_stream_errors",
            "Request streams that failed or were refused, by code or reason.",
            labels=["code"],
        )
        for code, value in _by_prefix(counts, "reqresp.answered.").items():
            if code != "ok":
                errors.add_metric([code], value)
        for reason, value in _by_prefix(counts, "reqresp.rejected.").items():
            errors.add_metric([f"refused_{reason}"], value)
        errors.add_metric(["stream_error"], counts.get("reqresp.stream_errors", 0))
        yield errors

    def _dht(self, node: Node, counts: dict[str, int]) -> Iterator[Metric]:
        from p2pshard.progress import dht_size

        yield GaugeMetricFamily(
            "p2pshard_dht_routing_table_peers", "Peers in the DHT routing table.", dht_size(node)
        )
        lookups = CounterMetricFamily(
            "p2pshard_dht_lookups", "DHT lookups and what they found, by outcome.", labels=["outcome"]
        )
        lookups.add_metric(["failed"], counts.get("discovery.lookup_failed", 0))
        lookups.add_metric(["peers_connected"], counts.get("discovery.peers_connected", 0))
        yield lookups

    def _rounds(self, node: Node, counts: dict[str, int]) -> Iterator[Metric]:
        rows = self.history.rows
        last = rows[-1] if rows else None
        yield CounterMetricFamily("p2pshard_rounds", "Rounds committed.", value=self.history.rounds_seen)
        if node.trainer is not None:
            stage = GaugeMetricFamily("p2pshard_round_stage", "The round protocol's stage.", labels=["stage"])
            stage.add_metric([node.trainer.proto.stage.value], 1)
            yield stage
        if last is None:
            return
        yield GaugeMetricFamily("p2pshard_round", "The last committed round.", last.round)
        if last.loss is not None:
            yield GaugeMetricFamily("p2pshard_round_loss", "Training loss of our last round.", last.loss)
        yield GaugeMetricFamily(
            "p2pshard_round_contributors", "Updates in the last round's aggregate.", last.contributors
        )
        yield GaugeMetricFamily(
            "p2pshard_round_tokens_per_second", "Tokens trained per second.", last.tokens_per_s
        )
        yield CounterMetricFamily(
            "p2pshard_training_tokens", "Tokens trained by this node.", value=last.tokens
        )
        per_round = GaugeMetricFamily(
            "p2pshard_round_bytes", "Update bytes moved in the last round.", labels=["direction"]
        )
        per_round.add_metric(["out"], last.sent_in_round)
        per_round.add_metric(["in"], last.received_in_round)
        yield per_round
        if last.seconds is not None:
            yield GaugeMetricFamily(
                "p2pshard_round_seconds", "Time between the last two commits.", last.seconds
            )
        for family, prefix, help_text in (
            ("p2pshard_round_skipped", "training.skipped.", "Rounds we did not contribute to, by reason."),
            ("p2pshard_round_rejected_updates", "training.rejected.", "Peers' updates rejected, by reason."),
        ):
            metric = CounterMetricFamily(family, help_text, labels=["reason"])
            for reason, value in _by_prefix(counts, prefix).items():
                metric.add_metric([reason], value)
            yield metric


def registry_for(node: Node, history: History) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(node, history))
    return registry

"""Simulation: 200 routers, D=6 (issue 3, "What it must show" #1)."""

from __future__ import annotations

from p2pshard.core.gossip import GossipConfig

from .sim import Network

TOPIC = "/p2pshard/sim/gradients/proto"
N = 200


def _config(**kw: object) -> GossipConfig:
    return GossipConfig.build(d=6, d_low=4, d_high=12, d_score=4, d_out=2, **kw)


def test_200_routers_deliver_1000_messages_exactly_once() -> None:
    net = Network(N, _config(), seed=7)
    net.subscribe_all(TOPIC)
    net.run_for(3.0)
    ids: list[bytes] = []
    for batch in range(10):  # 10 heartbeats, 100 messages each, random publishers
        for k in range(100):
            ids.append(net.publish(net.rng.randrange(N), TOPIC, b"m%d-%d" % (batch, k)))
        net.run_for(1.0)
    net.run_for(5.0)
    hist = net.delivery_counts(ids)
    # every router delivered every message to its application exactly once
    assert hist == {1: N * len(ids)}
    assert len(set(ids)) == 1000
    dups = sum(n.router.stats.dropped["message_duplicate"] for n in net.nodes)
    assert dups > 0  # the seen cache did the work: duplicates arrived and were dropped


def test_mesh_degrees_within_bounds_after_three_heartbeats() -> None:
    cfg = _config()
    net = Network(N, cfg, seed=11)
    net.subscribe_all(TOPIC)
    net.run_for(3.0 * cfg.heartbeat_interval + 0.2)  # every router has run >= 3 heartbeats
    assert all(n.router.stats.events["heartbeat"] >= 3 for n in net.nodes)
    degrees = [len(n.router.mesh_peers(TOPIC)) for n in net.nodes]
    assert min(degrees) >= cfg.d_low
    assert max(degrees) <= cfg.d_high
    # meshes are symmetric once GRAFT/PRUNE settled: a in mesh(b) <=> b in mesh(a)
    asym = sum(
        1
        for n in net.nodes
        for p in n.router.mesh_peers(TOPIC)
        if n.peer_id not in net.nodes[net.by_id[p]].router.mesh_peers(TOPIC)
    )
    assert asym == 0

"""Simulation under attack and loss (issue 3, "What it must show" #1 and #4)."""

from __future__ import annotations

from p2pshard.core.gossip import (
    GossipConfig,
    GossipMessage,
    PeerScoreParams,
    PeerScoreThresholds,
    TopicScoreParams,
    ValidationResult,
    score_parameter_decay,
)

from .sim import Network

TOPIC = "/p2pshard/sim/proofs/proto"
N = 200


def _validator(msg: GossipMessage) -> ValidationResult:
    return ValidationResult.REJECT if msg.data.startswith(b"BAD") else ValidationResult.ACCEPT


def _scored_config() -> GossipConfig:
    topic = TopicScoreParams(
        topic_weight=1.0,
        time_in_mesh_weight=0.01,
        first_message_deliveries_weight=1.0,
        first_message_deliveries_cap=10.0,
        invalid_message_deliveries_weight=-100.0,
        invalid_message_deliveries_decay=score_parameter_decay(300.0),  # slow, as deployed
    )
    params = PeerScoreParams(topics={TOPIC: topic}, behaviour_penalty_weight=-1.0)
    thresholds = PeerScoreThresholds(
        gossip_threshold=-10,
        publish_threshold=-50,
        graylist_threshold=-80,
        accept_px_threshold=5,
        opportunistic_graft_threshold=2,
    )
    return GossipConfig.build(
        d=6, d_low=4, d_high=12, d_score=4, d_out=2, score_params=params, score_thresholds=thresholds
    )


def test_invalid_forwarders_get_graylisted_and_honest_delivery_stays_complete() -> None:
    cfg = _scored_config()
    net = Network(N, cfg, seed=3)
    for node in net.nodes:
        node.router.set_validator(TOPIC, _validator)
    net.subscribe_all(TOPIC)
    net.run_for(3.0)
    bad = sorted(net.rng.sample(range(N), N // 5))  # 20% misbehave
    honest = [i for i in range(N) if i not in set(bad)]
    ids: list[bytes] = []
    for rnd in range(6):
        # every bad peer pushes invalid messages into its mesh ...
        for i in bad:
            for k in range(2):
                net.publish(i, TOPIC, b"BAD%d-%d-%d" % (i, rnd, k))
        # ... while honest peers publish valid ones
        for k in range(30):
            ids.append(net.publish(net.rng.choice(honest), TOPIC, b"ok%d-%d" % (rnd, k)))
        net.run_for(1.0)
    net.run_for(4.0)
    assert net.delivery_counts(ids, honest) == {1: len(honest) * len(ids)}
    # each honest router that heard from a bad neighbour scores it below the graylist threshold
    gray = cfg.score_thresholds.graylist_threshold
    checked = 0
    for i in honest:
        router = net.nodes[i].router
        for j in net.neighbours(i):
            if j in bad and router.stats.dropped["validation_reject"]:
                pid = net.nodes[j].peer_id
                if router.scorer is not None and router.scorer.invalid_deliveries(pid, TOPIC):
                    assert router.peer_score(pid) < gray
                    checked += 1
    assert checked > len(bad)  # most bad peers were caught by several honest neighbours
    # graylisted peers' RPCs were ignored (counted), and no bad message reached an app
    assert sum(net.nodes[i].router.stats.dropped["rpc_graylisted"] for i in honest) > 0
    ok_ids = set(ids)
    bad_delivered = [mid for i in honest for mid in net.nodes[i].delivered if mid not in ok_ids]
    assert bad_delivered == []
    # honest peers keep positive or zero scores among themselves
    some = net.nodes[honest[0]].router
    assert all(
        some.peer_score(net.nodes[j].peer_id) >= 0 for j in net.neighbours(honest[0]) if j not in set(bad)
    )


def test_lossy_links_still_deliver_everything_via_ihave_iwant() -> None:
    cfg = GossipConfig.build(d=6, d_low=4, d_high=12, d_score=4, d_out=2)
    net = Network(N, cfg, seed=5)
    net.subscribe_all(TOPIC)
    net.run_for(3.0)
    lossy = net.rng.sample(sorted(k for k in net.links if k[0] < k[1]), len(net.links) // 20)
    for a, b in lossy:  # 10% of links (both directions) drop half their frames
        net.links[(a, b)].loss = 0.5
        net.links[(b, a)].loss = 0.5
    ids: list[bytes] = []
    for rnd in range(4):
        for k in range(50):
            ids.append(net.publish(net.rng.randrange(N), TOPIC, b"x%d-%d" % (rnd, k)))
        net.run_for(1.0)
    net.run_for(5.0)
    assert net.frames_lost > 0
    assert net.delivery_counts(ids) == {1: N * len(ids)}
    served = sum(n.router.stats.events["iwant_served"] for n in net.nodes)
    assert served > 0  # gossip repaired what the lossy links lost

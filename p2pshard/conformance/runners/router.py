"""Runner ``router``: scripted event sequences fed to a gossipsub router (specs/pubsub.md).

Handler ``script``. A script sets router parameters, then feeds events (peers coming and going,
received RPCs, local subscribe / unsubscribe / publish, heartbeats) with explicit times. After
every step the runner compares what the router sent, per peer, and which message ids it handed to
the application. Scripts are built so that the outcome does not depend on the router's random
choices (every random sample in them is a sample of all candidates), so any implementation of
the spec must produce the same sets.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from p2pshard.conformance.model import JSON, AnswerError, Case, Runner, diff, unhex
from p2pshard.conformance.runners.signing import peer_of, secret, signed_message
from p2pshard.core.gossip import (
    FLOODSUB_ID,
    MESHSUB_V10,
    MESHSUB_V11,
    MESHSUB_V12,
    Command,
    Deliver,
    GossipConfig,
    GossipMessage,
    GossipRouter,
    Secp256k1Signer,
    SendRpc,
)
from p2pshard.core.topics import message_id
from p2pshard.core.wire import rpc_pb2

NAME = "router"
FILES = {"script": frozenset({"input.json"})}

T = "/p2pshard/minimal/votes/proto"
T2 = "/p2pshard/minimal/capacity/proto"
LOCAL_KEY = secret(59)
LOCAL = peer_of(LOCAL_KEY)
KEYS = {name: secret(60 + i) for i, name in enumerate("ABCDF")}
P = {name: peer_of(k) for name, k in KEYS.items()}
BASE: dict[str, JSON] = {"d": 3, "d_low": 2, "d_high": 4, "d_score": 1, "d_out": 0, "d_lazy": 2}


# ------------------------------------------------------------------------------- script building


class Script:
    def __init__(self, **config: JSON) -> None:
        self.config = {**BASE, **config}
        self.steps: list[dict[str, JSON]] = []
        self.now = 0.0

    def at(self, now: float) -> Script:
        self.now = now
        return self

    def add(self, name: str, protocol: str = MESHSUB_V12, outbound: bool = True) -> Script:
        self.steps.append(
            {
                "op": "add_peer",
                "peer": P[name].hex(),
                "protocol": protocol,
                "outbound": outbound,
                "now": self.now,
            }
        )
        return self

    def remove(self, name: str) -> Script:
        self.steps.append({"op": "remove_peer", "peer": P[name].hex(), "now": self.now})
        return self

    def rpc(self, name: str, rpc: rpc_pb2.RPC | bytes) -> Script:
        data = rpc if isinstance(rpc, bytes) else rpc.SerializeToString()
        self.steps.append({"op": "rpc", "peer": P[name].hex(), "rpc": data.hex(), "now": self.now})
        return self

    def local(self, op: str, topic: str, data: bytes = b"") -> Script:
        step: dict[str, JSON] = {"op": op, "topic": topic, "now": self.now}
        if op == "publish":
            step["data"] = data.hex()
        self.steps.append(step)
        return self

    def heartbeat(self) -> Script:
        self.steps.append({"op": "heartbeat", "now": self.now})
        return self

    def json(self) -> dict[str, JSON]:
        return {"config": self.config, "local_private_key": LOCAL_KEY.hex(), "seed": 7, "steps": self.steps}


def sub(*topics: str, subscribe: bool = True) -> rpc_pb2.RPC:
    rpc = rpc_pb2.RPC()
    for t in topics:
        rpc.subscriptions.add(subscribe=subscribe, topicid=t)
    return rpc


def msg(author: str, data: bytes, topic: str = T, seq: int = 1) -> rpc_pb2.Message:
    return signed_message(KEYS.get(author, LOCAL_KEY), topic, data, seq.to_bytes(8, "big"))


def pub(*msgs: rpc_pb2.Message) -> rpc_pb2.RPC:
    rpc = rpc_pb2.RPC()
    rpc.publish.extend(msgs)
    return rpc


def ctrl(**fields: list[dict[str, Any]]) -> rpc_pb2.RPC:
    rpc = rpc_pb2.RPC()
    for name, items in fields.items():
        for item in items:
            getattr(rpc.control, name).add(**item)
    return rpc


def mid(m: rpc_pb2.Message) -> bytes:
    return message_id(GossipMessage.from_pb(m))


def meshed(*names: str, protocol: str = MESHSUB_V12, **config: JSON) -> Script:
    """Peers ``names`` connected and subscribed to T, then we subscribe: all are grafted (d = 3)."""
    s = Script(**config)
    for n in names:
        s.add(n, protocol).rpc(n, sub(T))
    return s.local("subscribe", T)


def scripts() -> list[tuple[str, str, bool, Script]]:
    m1 = msg("A", b"vote-1")
    big = msg("A", b"\x01" * 1500, seq=2)
    out: list[tuple[str, str, bool, Script]] = []

    def add(name: str, desc: str, valid: bool, s: Script) -> None:
        out.append((name, desc, valid, s))

    add(
        "subscriptions_on_connect",
        "a new peer is told our subscriptions",
        True,
        Script().local("subscribe", T2).local("subscribe", T).add("A"),
    )
    add(
        "subscribe_grafts_known_peers",
        "subscribing announces the topic and grafts up to D known peers",
        True,
        meshed("A", "B", "C"),
    )
    add(
        "subscribe_skips_unsubscribed",
        "peers not in the topic are told of it but not grafted",
        True,
        Script().add("A").add("B").rpc("B", sub(T)).local("subscribe", T),
    )
    add(
        "forward_to_mesh",
        "a new valid message is delivered and forwarded to the mesh, not back",
        True,
        meshed("A", "B", "C").at(1).rpc("A", pub(m1)).rpc("B", pub(m1)),
    )
    add(
        "duplicate_in_one_rpc",
        "two copies in one RPC: delivered and forwarded once",
        False,
        meshed("A", "B").at(1).rpc("A", pub(m1, m1)),
    )
    add(
        "bad_signature",
        "a message whose data changed after signing is dropped",
        False,
        meshed("A", "B").at(1).rpc("A", pub(_tampered(m1))),
    )
    unsigned = rpc_pb2.Message(data=b"x", topic=T, seqno=b"\x00" * 8)
    setattr(unsigned, "from", P["A"])
    add(
        "missing_signature",
        "StrictSign: an unsigned message is dropped",
        False,
        meshed("A", "B").at(1).rpc("A", pub(unsigned)),
    )
    add(
        "not_subscribed",
        "a message for a topic we are not in is dropped",
        False,
        meshed("A", "B").at(1).rpc("A", pub(msg("A", b"c", T2))),
    )
    add(
        "self_origin",
        "our own message coming back is dropped",
        False,
        meshed("A", "B").at(1).rpc("A", pub(msg("local", b"mine"))),
    )
    add(
        "malformed_rpc",
        "bytes that are not an RPC are dropped",
        False,
        meshed("A", "B").at(1).rpc("A", b"\x0a\xff\xff\x01"),
    )
    add(
        "graft_accepted",
        "a GRAFT for our topic adds the peer: it gets the next message",
        True,
        Script()
        .local("subscribe", T)
        .add("A")
        .add("B")
        .rpc("B", sub(T))
        .rpc("B", ctrl(graft=[{"topicID": T}]))
        .at(1)
        .rpc("A", pub(msg("A", b"g", T))),
    )
    add(
        "graft_unknown_topic",
        "a GRAFT for a topic we are not in is ignored",
        False,
        Script().local("subscribe", T).add("A").rpc("A", ctrl(graft=[{"topicID": T2}])),
    )
    add(
        "graft_in_backoff",
        "a GRAFT right after the peer PRUNEd us is answered with PRUNE (backoff)",
        False,
        meshed("A", "B")
        .at(1)
        .rpc("A", ctrl(prune=[{"topicID": T, "backoff": 60}]))
        .at(2)
        .rpc("A", ctrl(graft=[{"topicID": T}])),
    )
    add(
        "graft_mesh_full",
        "an inbound GRAFT into a full mesh gets PRUNE with peer exchange",
        True,
        meshed("A", "B", "C", d_high=3)
        .add("D", outbound=False)
        .rpc("D", sub(T))
        .rpc("D", ctrl(graft=[{"topicID": T}])),
    )
    add(
        "prune_v10_peer",
        "a /meshsub/1.0.0 peer's PRUNE carries no backoff and no peers",
        False,
        meshed("A", "B", protocol=MESHSUB_V10)
        .at(1)
        .rpc("A", ctrl(prune=[{"topicID": T}]))
        .at(2)
        .rpc("A", ctrl(graft=[{"topicID": T}])),
    )
    add(
        "unsubscribe_prunes",
        "unsubscribing PRUNEs the mesh with the unsubscribe backoff and PX",
        True,
        meshed("A", "B").add("C").at(1).local("unsubscribe", T),
    )
    add(
        "prune_backoff_respected",
        "a pruned peer is not re-grafted during its backoff",
        True,
        meshed("A", "B", "C")
        .at(1)
        .rpc("A", ctrl(prune=[{"topicID": T, "backoff": 30}]))
        .rpc("B", ctrl(prune=[{"topicID": T, "backoff": 30}]))
        .at(2)
        .heartbeat(),
    )
    ids = [b"\x01" * 20, b"\x02" * 20]
    add(
        "ihave_asks_iwant",
        "IHAVE of unseen ids is answered with IWANT; seen ids are not asked",
        True,
        meshed("A", "B")
        .at(1)
        .rpc("A", pub(m1))
        .rpc("B", ctrl(ihave=[{"topicID": T, "messageIDs": [*ids, mid(m1)]}])),
    )
    add(
        "ihave_other_topic",
        "IHAVE for a topic we are not in is ignored",
        False,
        meshed("A").at(1).rpc("A", ctrl(ihave=[{"topicID": T2, "messageIDs": ids}])),
    )
    add(
        "iwant_served",
        "IWANT for a cached message is answered; unknown ids are not",
        True,
        meshed("A", "B")
        .add("C")
        .rpc("C", sub(T))
        .at(1)
        .rpc("A", pub(m1))
        .rpc("C", ctrl(iwant=[{"messageIDs": [mid(m1), b"\x09" * 20]}])),
    )
    add(
        "iwant_retransmission_limit",
        "a peer asking more than gossip_retransmission times is not served",
        False,
        meshed("A")
        .add("C")
        .at(1)
        .rpc("A", pub(m1))
        .rpc("C", ctrl(iwant=[{"messageIDs": [mid(m1)]}]))
        .rpc("C", ctrl(iwant=[{"messageIDs": [mid(m1)]}]))
        .rpc("C", ctrl(iwant=[{"messageIDs": [mid(m1)]}]))
        .rpc("C", ctrl(iwant=[{"messageIDs": [mid(m1)]}])),
    )
    add(
        "idontwant_honoured",
        "a message the peer said IDONTWANT to is not forwarded to it",
        True,
        meshed("A", "B", "C").at(1).rpc("B", ctrl(idontwant=[{"messageIDs": [mid(m1)]}])).rpc("A", pub(m1)),
    )
    s = Script()
    s.add("A").rpc("A", sub(T)).add("B").rpc("B", sub(T)).add("C", MESHSUB_V11).rpc("C", sub(T))
    add(
        "large_message_idontwant",
        "a message over idontwant_threshold triggers IDONTWANT to v1.2 mesh peers",
        True,
        s.local("subscribe", T).at(1).rpc("A", pub(big)),
    )
    add(
        "floodsub_peer",
        "floodsub peers in the topic get every message; their control is ignored",
        True,
        meshed("A", "B")
        .add("F", FLOODSUB_ID)
        .rpc("F", sub(T))
        .rpc("F", ctrl(graft=[{"topicID": T}]))
        .at(1)
        .rpc("A", pub(m1)),
    )
    s = Script(d=2, d_low=1, d_high=3)
    s.add("A").rpc("A", sub(T)).add("B").rpc("B", sub(T)).local("subscribe", T)
    s.add("C").rpc("C", sub(T)).add("D").rpc("D", sub(T)).at(1).rpc("A", pub(m1)).at(2).heartbeat()
    add(
        "heartbeat_ihave",
        "the heartbeat gossips IHAVE of recent ids to topic peers outside the mesh",
        True,
        s,
    )
    add(
        "heartbeat_fills_mesh",
        "a heartbeat grafts peers that joined the topic after we subscribed",
        True,
        Script().local("subscribe", T).add("A").rpc("A", sub(T)).add("B").rpc("B", sub(T)).at(1).heartbeat(),
    )
    add(
        "publish_flood",
        "our publish goes to every topic peer (flood publish) and to us",
        True,
        meshed("A").add("B").rpc("B", sub(T)).add("C").at(1).local("publish", T, b"ours"),
    )
    add(
        "peer_left",
        "a peer that left or unsubscribed gets nothing",
        True,
        meshed("A", "B", "C").at(1).remove("B").rpc("C", sub(T, subscribe=False)).rpc("A", pub(m1)),
    )
    return out


def _tampered(m: rpc_pb2.Message) -> rpc_pb2.Message:
    t = rpc_pb2.Message()
    t.CopyFrom(m)
    t.data = m.data + b"!"
    return t


def generate() -> list[Case]:
    return [_script_case(name, desc, valid, s.json()) for name, desc, valid, s in scripts()]


def _script_case(name: str, desc: str, valid: bool, script: dict[str, JSON]) -> Case:
    return Case(
        NAME,
        "script",
        name,
        desc,
        valid,
        input_json={"script": script},
        expected={"steps": run_script(script)},
    )


# ------------------------------------------------------------------------------- reference answer


def normalise(commands: list[Command]) -> dict[str, JSON]:
    """A step's commands as order-free sets: per peer, what was sent; and what was delivered."""
    rpcs: dict[bytes, rpc_pb2.RPC] = {}
    delivered: list[str] = []
    for cmd in commands:
        if isinstance(cmd, SendRpc):
            rpcs.setdefault(cmd.peer_id, rpc_pb2.RPC()).MergeFromString(cmd.data)
        elif isinstance(cmd, Deliver):
            delivered.append(cmd.msg_id.hex())
    sent: dict[str, JSON] = {}
    for peer, rpc in rpcs.items():
        entry: dict[str, JSON] = {}
        if rpc.subscriptions:
            entry["subscriptions"] = sorted([s.topicid, bool(s.subscribe)] for s in rpc.subscriptions)
        if rpc.publish:
            entry["publish"] = sorted(mid(m).hex() for m in rpc.publish)
        c = rpc.control
        if c.graft:
            entry["graft"] = sorted(g.topicID for g in c.graft)
        if c.prune:
            entry["prune"] = sorted(
                [
                    p.topicID,
                    p.backoff if p.HasField("backoff") else None,
                    sorted(i.peerID.hex() for i in p.peers),
                ]
                for p in c.prune
            )
        if c.ihave:
            ihave: dict[str, list[str]] = {}
            for ih in c.ihave:
                ihave.setdefault(ih.topicID, []).extend(i.hex() for i in ih.messageIDs)
            entry["ihave"] = {t: sorted(v) for t, v in ihave.items()}
        if c.iwant:
            entry["iwant"] = sorted(i.hex() for iw in c.iwant for i in iw.messageIDs)
        if c.idontwant:
            entry["idontwant"] = sorted(i.hex() for d in c.idontwant for i in d.messageIDs)
        sent[peer.hex()] = entry
    return {"sent": sent, "delivered": sorted(delivered)}


def run_script(script: Mapping[str, JSON]) -> list[JSON]:
    config = script.get("config")
    steps = script.get("steps")
    if not isinstance(config, dict) or not isinstance(steps, list):
        raise AnswerError("script needs a config object and a steps list")
    key = unhex(script.get("local_private_key"), "local_private_key")
    signer = Secp256k1Signer(key)
    router = GossipRouter(
        signer.peer_id,
        GossipConfig.build(**config, message_id_fn=message_id),
        rng=random.Random(int(script.get("seed", 0))),
        signer=signer,
    )
    results: list[JSON] = []
    for step in steps:
        op, now = step["op"], float(step["now"])
        if op == "add_peer":
            cmds = router.add_peer(unhex(step["peer"], "peer"), step["protocol"], bool(step["outbound"]), now)
        elif op == "remove_peer":
            cmds = router.remove_peer(unhex(step["peer"], "peer"), now)
        elif op == "rpc":
            cmds = router.handle_rpc(unhex(step["peer"], "peer"), unhex(step["rpc"], "rpc"), now)
        elif op == "subscribe":
            cmds = router.subscribe(step["topic"], now)
        elif op == "unsubscribe":
            cmds = router.unsubscribe(step["topic"], now)
        elif op == "publish":
            cmds = router.publish(step["topic"], unhex(step["data"], "data"), now)[1]
        elif op == "heartbeat":
            cmds = router.heartbeat(now)
        else:
            raise AnswerError(f"unknown op {op!r}")
        results.append(normalise(cmds))
    return results


def answer(handler: str, inp: Mapping[str, JSON]) -> Mapping[str, JSON]:
    if handler != "script":
        raise AnswerError(f"unknown handler {handler!r}")
    script = inp.get("script")
    if not isinstance(script, dict):
        raise AnswerError("script must be an object")
    return {"steps": run_script(script)}


def check(
    handler: str, inp: Mapping[str, JSON], expected: Mapping[str, JSON], out: Mapping[str, JSON]
) -> list[str]:
    want, got = expected["steps"], out.get("steps")
    if not isinstance(got, list) or len(got) != len(want):
        return [
            f"steps: expected {len(want)} step results, got {got if not isinstance(got, list) else len(got)}"
        ]
    script = inp["script"]
    fails: list[str] = []
    for i, (w, g) in enumerate(zip(want, got, strict=True)):
        op = script["steps"][i]["op"]
        fails += diff(f"step {i} ({op}) sent", w["sent"], g.get("sent") if isinstance(g, dict) else None)
        fails += diff(
            f"step {i} ({op}) delivered", w["delivered"], g.get("delivered") if isinstance(g, dict) else None
        )
    return fails


RUNNER = Runner(NAME, FILES, generate, answer, check)

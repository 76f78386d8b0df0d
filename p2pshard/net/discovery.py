"""Peer and content discovery: py-libp2p's Kademlia DHT behind a small interface of our own.

What we add around KadDHT:

* strict namespace validation, with a validator for signed ``/p2pshard/`` records
  (:mod:`p2pshard.core.records`);
* a discovery loop: look up our own id (the Kademlia bootstrap step) and random ids, then
  connect to what the lookups return, up to ``max_peers``. Lookups run quickly while the node
  is young and slow down once it has settled;
* deduplicated provider lists (KadDHT may return one provider several times; FACTS.md);
* every DHT call bounded by a timeout.
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Sequence
from typing import TYPE_CHECKING

import trio
from libp2p.abc import IHost
from libp2p.kad_dht.common import PROTOCOL_ID as KAD_PROTOCOL
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.records.validator import Validator
from libp2p.tools.anyio_service import background_trio_service

from p2pshard.core import records
from p2pshard.core.counters import Counters
from p2pshard.identity import Identity
from p2pshard.net.connector import Connector, DialError

if TYPE_CHECKING:  # libp2p pulls in trio-typing, whose stubs shadow trio's own types
    from trio_typing import TaskStatus

log = logging.getLogger(__name__)

DHT_TIMEOUT_S = 10.0
MIN_LOOKUP_INTERVAL_S = 1.0
MAX_LOOKUP_INTERVAL_S = 30.0


def verify_libp2p_signature(public_key: bytes, message: bytes, signature: bytes) -> str:
    """Verifier for core.records: checks a libp2p-marshalled key's signature, returns its peer id."""
    from libp2p.crypto.serialization import deserialize_public_key

    key = deserialize_public_key(public_key)
    if not key.verify(message, signature):
        raise ValueError("signature does not verify")
    return str(ID.from_pubkey(key).to_base58())


class P2pshardRecordValidator(Validator):
    def validate(self, key: str, value: bytes) -> None:
        records.verify_record(key, value, verify_libp2p_signature)

    def select(self, key: str, values: list[bytes]) -> int:
        return records.select_record(key, values, verify_libp2p_signature)


def content_key(kind: str, digest: bytes) -> str:
    """The DHT key under which providers of a piece of content announce themselves.

    A sha2-256 multihash (``0x12 0x20`` + digest), hex-encoded as KadDHT takes it: js-libp2p's DHT
    rejects provider keys that do not parse as a CID/multihash; go-libp2p and py-libp2p accept it.
    """
    return "1220" + hashlib.sha256(f"/{records.NAMESPACE}/{kind}/".encode() + digest).hexdigest()


class Discovery:
    def __init__(
        self,
        host: IHost,
        identity: Identity,
        connector: Connector,
        counters: Counters,
        *,
        max_peers: int = 50,
        rng: random.Random | None = None,
    ) -> None:
        self.host = host
        self.identity = identity
        self.connector = connector
        self.counters = counters
        self.max_peers = max_peers
        self.rng = rng or random.Random()
        self.dht = KadDHT(host, DHTMode.SERVER, strict_validation=True)
        self.dht.register_validator(records.NAMESPACE, P2pshardRecordValidator())
        self.bootstrap_peers: list[PeerInfo] = []
        self._seq = 0

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with background_trio_service(self.dht):
            task_status.started()
            await self._discover_forever()

    async def bootstrap(self, peers: Sequence[PeerInfo]) -> list[str]:
        """Connect to the bootstrap peers; returns the errors of those that failed."""
        errors = []
        self.bootstrap_peers = list(peers)
        for info in peers:
            try:
                await self.connector.connect(info)
                await self.dht.add_peer(info.peer_id, skip_server_mode_check=True)
            except DialError as exc:
                errors.append(str(exc))
        if len(errors) < len(peers):
            await self.discover_once(self.host.get_id().to_bytes())
        return errors

    async def _discover_forever(self) -> None:
        """Look up our own id (then random ids) and connect to what is found. A lookup that finds
        someone new is repeated 1 s later; each one that finds nobody doubles the wait, up to
        MAX_LOOKUP_INTERVAL_S — a settled network costs one lookup per node every 30 s, not the
        hundreds of DHT queries a second that lookups every second cost eight nodes."""
        interval = MIN_LOOKUP_INTERVAL_S
        lookups = 0
        while True:
            await trio.sleep(interval)
            await self._add_dht_servers()
            if len(self.connector.connected_peers()) >= self.max_peers:
                interval = MAX_LOOKUP_INTERVAL_S
                continue
            target = self.host.get_id().to_bytes() if lookups < 3 else self.rng.randbytes(32)
            lookups += 1
            found = await self.discover_once(target)
            interval = MIN_LOOKUP_INTERVAL_S if found else min(MAX_LOOKUP_INTERVAL_S, interval * 2)

    async def _add_dht_servers(self) -> None:
        """Put connected peers that serve the DHT into the routing table (not mere clients)."""
        store = self.host.get_peerstore()
        for peer in self.connector.connected_peers():
            try:
                protocols = store.get_protocols(peer)
            except Exception:  # identify has not finished for this peer yet
                continue
            if KAD_PROTOCOL in protocols:
                await self.dht.add_peer(peer, skip_server_mode_check=True)

    async def discover_once(self, target: bytes) -> int:
        """One lookup towards ``target``; connects to new peers found. Returns how many."""
        found: list[ID] = []
        with trio.move_on_after(DHT_TIMEOUT_S):
            try:
                found = await self.dht.peer_routing.find_closest_peers_network(target, 20)
            except Exception as exc:  # a lookup failing must not end discovery
                self.counters.incr("discovery.lookup_failed")
                log.debug("lookup failed: %r", exc)
        me = self.host.get_id()
        new = [p for p in dict.fromkeys(found) if p != me and not self.connector.is_connected(p)]
        room = self.max_peers - len(self.connector.connected_peers())
        connected = 0
        for peer in new[: max(0, room)]:
            try:
                await self.connector.ensure(peer)
                connected += 1
            except DialError:
                continue
        self.counters.incr("discovery.peers_connected", connected)
        return connected

    # -- content and records ------------------------------------------------------------

    async def provide(self, kind: str, digest: bytes) -> bool:
        ok = False
        with trio.move_on_after(DHT_TIMEOUT_S):
            ok = bool(await self.dht.provide(content_key(kind, digest)))
        return ok

    async def find_providers(self, kind: str, digest: bytes, count: int = 20) -> list[PeerInfo]:
        """Providers of a piece of content, each peer once, ourselves excluded."""
        result: list[PeerInfo] = []
        with trio.move_on_after(DHT_TIMEOUT_S):
            result = await self.dht.find_providers(content_key(kind, digest), count)
        seen: dict[ID, PeerInfo] = {}
        for info in result:
            if info.peer_id != self.host.get_id():
                seen.setdefault(info.peer_id, info)
        return list(seen.values())

    async def find_peer(self, peer: ID) -> PeerInfo | None:
        info = None
        with trio.move_on_after(DHT_TIMEOUT_S):
            info = await self.dht.find_peer(peer)
        return info

    async def put_record(self, kind: str, name: str, payload: bytes) -> str:
        """Sign and store a record under ``/p2pshard/<kind>/<name>``; returns the key."""
        key = f"/{records.NAMESPACE}/{kind}/{name}"
        self._seq += 1
        public_key = bytes(self.identity.private_key.get_public_key().serialize())
        value = records.make_record(key, self._seq, payload, public_key, self.identity.sign)
        with trio.fail_after(DHT_TIMEOUT_S):
            await self.dht.put_value(key, value)
        return key

    async def get_record(self, kind: str, name: str) -> records.VerifiedRecord | None:
        key = f"/{records.NAMESPACE}/{kind}/{name}"
        value = None
        with trio.move_on_after(DHT_TIMEOUT_S):
            value = await self.dht.get_value(key)
        if value is None:
            return None
        return records.verify_record(key, value, verify_libp2p_signature)

"""``/p2pshard/checkpoint/1.0.0``: a node's current checkpoint and the network's round schedule.

The answer is a ``CheckpointInfo``: round, model hash, the SHA-256 and size of the checkpoint
bytes (served, like every bulk payload, over ``/p2pshard/blob/1.0.0``), and the schedule, which is
how a node that joins later learns when rounds open.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable

from libp2p.peer.id import ID

from p2pshard.core.rounds import RoundSchedule
from p2pshard.core.wire import checkpoint_pb2
from p2pshard.net.reqresp import ProtocolSpec, ReqRespClient, RequestContext, call_unary, unary_spec

CHECKPOINT_PROTOCOL = "/p2pshard/checkpoint/1.0.0"
MIN_PERIOD_S = 0.5
MAX_PERIOD_S = 86400.0
MAX_GENESIS_OFFSET_S = 365 * 86400.0
"""A schedule whose round 0 is further than this from our clock is refused (a peer's bad clock)."""

InfoSource = Callable[[], Awaitable[checkpoint_pb2.CheckpointInfo]]


def schedule_to_pb(s: RoundSchedule, last_round: int) -> checkpoint_pb2.Schedule:
    return checkpoint_pb2.Schedule(
        genesis_time=s.genesis_time,
        period_s=s.period,
        announce_deadline_s=s.announce_deadline,
        fetch_timeout_s=s.fetch_timeout,
        last_round=last_round,
    )


def make_schedule(
    genesis_time: float, period: float, announce_deadline: float, fetch_timeout: float
) -> RoundSchedule:
    """A schedule whose clock-skew allowance is derived, not sent: a quarter of the fetch window
    (at most 1 s), so the widened announce window always closes well before fetching must end."""
    values = (genesis_time, period, announce_deadline, fetch_timeout)
    if not all(math.isfinite(v) for v in values):
        raise ValueError("schedule values must be finite")
    if not MIN_PERIOD_S <= period <= MAX_PERIOD_S:
        raise ValueError(f"round period {period}s outside [{MIN_PERIOD_S}, {MAX_PERIOD_S}]")
    if abs(genesis_time - time.time()) > MAX_GENESIS_OFFSET_S:
        raise ValueError("genesis time is more than a year away from this node's clock")
    skew = min(1.0, fetch_timeout / 4, announce_deadline / 4)
    return RoundSchedule(genesis_time, period, announce_deadline, fetch_timeout, clock_skew=skew)


def schedule_from_pb(pb: checkpoint_pb2.Schedule) -> RoundSchedule:
    """Raises ValueError for a schedule that breaks RoundSchedule's constraints."""
    return make_schedule(pb.genesis_time, pb.period_s, pb.announce_deadline_s, pb.fetch_timeout_s)


def checkpoint_spec(source: InfoSource) -> ProtocolSpec:
    async def handle(
        ctx: RequestContext, request: checkpoint_pb2.CheckpointRequest
    ) -> checkpoint_pb2.CheckpointInfo:
        return await source()

    return unary_spec(
        CHECKPOINT_PROTOCOL,
        checkpoint_pb2.CheckpointRequest,
        handle,
        max_request_size=1024,
        default_deadline_s=30.0,
        max_concurrent=8,
    )


async def fetch_checkpoint_info(
    client: ReqRespClient, peer: ID, timeout_s: float = 30.0
) -> checkpoint_pb2.CheckpointInfo:
    return await call_unary(
        client,
        peer,
        CHECKPOINT_PROTOCOL,
        checkpoint_pb2.CheckpointRequest(),
        checkpoint_pb2.CheckpointInfo,
        timeout_s=timeout_s,
        max_response_size=4096,
    )

"""``/p2pshard/checkpoint/1.0.0``: a node's current checkpoint and the network's round schedule.

The answer is a ``CheckpointInfo``: round, model hash, the SHA-256 and size of the checkpoint
bytes (served, like every bulk payload, over ``/p2pshard/blob/1.0.0``), and the schedule, which is
how a node that joins later learns when rounds open.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from libp2p.peer.id import ID

from p2pshard.core.rounds import RoundSchedule
from p2pshard.core.wire import checkpoint_pb2
from p2pshard.net.reqresp import ProtocolSpec, ReqRespClient, RequestContext, call_unary, unary_spec

CHECKPOINT_PROTOCOL = "/p2pshard/checkpoint/1.0.0"

InfoSource = Callable[[], Awaitable[checkpoint_pb2.CheckpointInfo]]


def schedule_to_pb(s: RoundSchedule, last_round: int) -> checkpoint_pb2.Schedule:
    return checkpoint_pb2.Schedule(
        genesis_time=s.genesis_time,
        period_s=s.period,
        announce_deadline_s=s.announce_deadline,
        fetch_timeout_s=s.fetch_timeout,
        last_round=last_round,
    )


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

"""``/p2pshard/status/1.0.0``: a node describes itself (what `p2pshard status` prints)."""

from __future__ import annotations

from collections.abc import Callable

from libp2p.peer.id import ID

from p2pshard.core.wire import status_pb2
from p2pshard.net.reqresp import ProtocolSpec, ReqRespClient, RequestContext, call_unary, unary_spec

STATUS_PROTOCOL = "/p2pshard/status/1.0.0"
MAX_STATUS_SIZE = 1 << 20

StatusSource = Callable[[ID], status_pb2.StatusResponse]
"""Builds the status for the asking peer (which it leaves out of the peer list)."""


def status_spec(source: StatusSource) -> ProtocolSpec:
    async def handle(ctx: RequestContext, request: status_pb2.StatusRequest) -> status_pb2.StatusResponse:
        return source(ctx.peer_id)

    return unary_spec(
        STATUS_PROTOCOL,
        status_pb2.StatusRequest,
        handle,
        max_request_size=1024,
        default_deadline_s=5.0,
        max_concurrent=16,
    )


async def fetch_status(client: ReqRespClient, peer: ID, timeout_s: float = 5.0) -> status_pb2.StatusResponse:
    return await call_unary(
        client,
        peer,
        STATUS_PROTOCOL,
        status_pb2.StatusRequest(),
        status_pb2.StatusResponse,
        timeout_s=timeout_s,
        max_response_size=MAX_STATUS_SIZE,
    )

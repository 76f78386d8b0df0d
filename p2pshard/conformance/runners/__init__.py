"""Every conformance runner, by name (the order is the report's order)."""

from __future__ import annotations

from p2pshard.conformance.model import Runner
from p2pshard.conformance.runners import (
    framing,
    ledger,
    message_id,
    messages,
    pipeline,
    reqresp,
    router,
    signing,
    tensor,
    validation,
    work,
)

RUNNERS: dict[str, Runner] = {
    r.name: r
    for r in (
        framing.RUNNER,
        reqresp.RUNNER,
        messages.RUNNER,
        signing.RUNNER,
        message_id.RUNNER,
        tensor.RUNNER,
        validation.RUNNER,
        router.RUNNER,
        ledger.RUNNER,
        pipeline.RUNNER,
        work.RUNNER,
    )
}

__all__ = ["RUNNERS"]

"""Pipeline inference rules, sans-IO: what a forward request must be (:mod:`.rules`) and the
KV-cache sessions a stage keeps (:mod:`.sessions`), with time passed in (specs/pipeline.md)."""

from p2pshard.core.pipeline.chain import ChainError, plan_chain
from p2pshard.core.pipeline.rules import (
    ForwardInput,
    ForwardRejected,
    Reason,
    StageSpec,
    check_forward,
    encode_forward,
    encode_output,
    read_output,
)
from p2pshard.core.pipeline.sessions import SessionKey, SessionLimits, SessionTable

__all__ = [
    "ChainError",
    "ForwardInput",
    "ForwardRejected",
    "Reason",
    "SessionKey",
    "SessionLimits",
    "SessionTable",
    "StageSpec",
    "check_forward",
    "encode_forward",
    "encode_output",
    "plan_chain",
    "read_output",
]

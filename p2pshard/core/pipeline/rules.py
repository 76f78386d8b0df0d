"""What a ``pipeline/forward`` request must be before a stage runs it (specs/pipeline.md).

:func:`check_forward` is pure: it reads a decoded ``ForwardRequest`` and the served stage's
:class:`StageSpec`, and returns the :class:`ForwardInput` to run or raises :class:`ForwardRejected`
with a short stable ``reason``. Every size a peer claims is checked against the stage before
memory is allocated for it (the tensor codec refuses a record claiming more elements than the
stage could ever take, e.g. 2^40, before it reads its values). Session rules, which depend on
state, are in :mod:`p2pshard.core.pipeline.sessions`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import numpy.typing as npt

from p2pshard.core.wire import pipeline_pb2 as pb
from p2pshard.core.wire import tensor_pb2
from p2pshard.core.wire.tensor import (
    DecodeLimits,
    EncodeOptions,
    Encoding,
    TensorDecodeError,
    decode_tensors,
    describe_tensors,
    encode_tensors,
)

__all__ = [
    "MAX_SESSION_ID",
    "ForwardInput",
    "ForwardRejected",
    "Reason",
    "StageSpec",
    "check_forward",
    "encode_forward",
    "encode_output",
    "read_output",
]

MAX_SESSION_ID = 64
"""Longest session id, in bytes."""
_ENVELOPE_SLACK = 4096
"""Bytes a tensor payload may carry beyond its values (envelope, protobuf fields, name)."""

TOKENS = "tokens"
HIDDEN = "hidden"
LOGITS = "logits"

_HIDDEN_ENCODINGS = frozenset({Encoding.FLOAT32.value, Encoding.FLOAT16.value, Encoding.BFLOAT16.value})
_TOKEN_ENCODINGS = frozenset({Encoding.FLOAT32.value})


class Reason(StrEnum):
    """Why a forward was refused; the strings are the wire's ``ForwardError.reason``."""

    WRONG_RANGE = "wrong_range"
    WRONG_MODEL = "wrong_model"
    WRONG_INPUT = "wrong_input"
    WRONG_SHAPE = "wrong_shape"
    WRONG_DTYPE = "wrong_dtype"
    TOO_LARGE = "too_large"
    TOO_LONG = "too_long"
    BAD_TENSOR = "bad_tensor"
    BAD_TOKEN = "bad_token"
    NON_FINITE = "non_finite"
    BAD_SESSION_ID = "bad_session_id"
    UNKNOWN_SESSION = "unknown_session"
    SESSION_EXPIRED = "session_expired"
    WRONG_POSITION = "wrong_position"
    SESSION_BUSY = "session_busy"
    TOO_MANY_SESSIONS = "too_many_sessions"
    OUT_OF_MEMORY = "out_of_memory"
    INTERNAL = "internal"


class ForwardRejected(Exception):
    """A forward request refused; nothing was changed by it."""

    def __init__(self, reason: Reason, detail: str = "") -> None:
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)
        self.reason = reason
        self.detail = detail

    def to_proto(self) -> pb.ForwardResponse:
        return pb.ForwardResponse(error=pb.ForwardError(reason=self.reason.value, detail=self.detail))


@dataclass(frozen=True)
class StageSpec:
    """What a server's stage is: the facts a request is checked against (and ShardInfo)."""

    model_id: str
    layer_start: int
    layer_end: int
    total_layers: int
    vocab_size: int
    d_model: int
    context: int
    n_heads: int
    max_batch: int = 8
    n_blocks: int = 0
    """Transformer blocks in the range (each keeps a key and a value per cached token)."""

    def __post_init__(self) -> None:
        if not 0 <= self.layer_start < self.layer_end <= self.total_layers:
            raise ValueError("bad layer range")
        if min(self.vocab_size, self.d_model, self.context, self.n_heads, self.max_batch) < 1:
            raise ValueError("stage dimensions must be positive")

    @property
    def is_first(self) -> bool:
        return self.layer_start == 0

    @property
    def is_last(self) -> bool:
        return self.layer_end == self.total_layers

    @property
    def input_name(self) -> str:
        return TOKENS if self.is_first else HIDDEN

    @property
    def output_name(self) -> str:
        return LOGITS if self.is_last else HIDDEN

    @property
    def output_width(self) -> int:
        return self.vocab_size if self.is_last else self.d_model

    @property
    def kv_bytes_per_token(self) -> int:
        """Cache bytes one token of one batch row costs (float32 keys and values)."""
        return self.n_blocks * 2 * self.d_model * 4

    def max_input_elements(self) -> int:
        width = 1 if self.is_first else self.d_model
        return self.max_batch * self.context * width

    def max_input_bytes(self) -> int:
        return 4 * self.max_input_elements() + _ENVELOPE_SLACK

    def max_request_bytes(self) -> int:
        """The largest ForwardRequest frame worth reading (the reqresp request limit)."""
        return self.max_input_bytes() + 2 * MAX_SESSION_ID + 1024

    def max_output_bytes(self) -> int:
        return 4 * self.max_batch * self.context * self.output_width + _ENVELOPE_SLACK

    def to_proto(self, free_sessions: int = 0, weights_hash: bytes = b"") -> pb.ShardInfo:
        return pb.ShardInfo(
            model_id=self.model_id,
            layer_start=self.layer_start,
            layer_end=self.layer_end,
            total_layers=self.total_layers,
            vocab_size=self.vocab_size,
            d_model=self.d_model,
            context=self.context,
            n_heads=self.n_heads,
            max_batch=self.max_batch,
            weights_hash=weights_hash,
            free_sessions=free_sessions,
        )


@dataclass(frozen=True)
class ForwardInput:
    """A request that passed every stateless rule."""

    session_id: bytes
    start: int
    use_cache: bool
    last_only: bool
    values: npt.NDArray[np.float32]
    """``batch x tokens`` (token ids, integral) or ``batch x tokens x d_model``."""

    @property
    def batch(self) -> int:
        return int(self.values.shape[0])

    @property
    def tokens(self) -> int:
        return int(self.values.shape[1])


def check_forward(req: pb.ForwardRequest, spec: StageSpec) -> ForwardInput:
    """The request's input if it may run on ``spec``; else raises :class:`ForwardRejected`.

    Checks, in order: range, model, session id, the tensor's claimed size (before its values are
    read), name, layout and encoding, shape, position, then the decoded values."""
    if (req.layer_start, req.layer_end) != (spec.layer_start, spec.layer_end):
        raise ForwardRejected(
            Reason.WRONG_RANGE,
            f"asked for [{req.layer_start}, {req.layer_end}), this server runs "
            f"[{spec.layer_start}, {spec.layer_end})",
        )
    if req.model_id and req.model_id != spec.model_id:
        raise ForwardRejected(Reason.WRONG_MODEL, f"this server runs model {spec.model_id}")
    if req.use_cache and not 1 <= len(req.session_id) <= MAX_SESSION_ID:
        raise ForwardRejected(Reason.BAD_SESSION_ID, f"a cached forward needs a 1..{MAX_SESSION_ID}-byte id")
    if len(req.session_id) > MAX_SESSION_ID:
        raise ForwardRejected(Reason.BAD_SESSION_ID, f"longer than {MAX_SESSION_ID} bytes")
    limits = DecodeLimits(
        max_bytes=spec.max_input_bytes(),
        max_tensors=1,
        max_elements=spec.max_input_elements(),
        max_decode_work=0,
    )
    data = bytes(req.input)
    try:
        infos = describe_tensors(data, limits)
    except TensorDecodeError as exc:
        raise ForwardRejected(_codec_reason(exc.reason), exc.reason) from None
    want = spec.input_name
    if len(infos) != 1 or infos[0].name != want:
        names = ", ".join(i.name for i in infos) or "none"
        raise ForwardRejected(Reason.WRONG_INPUT, f"this range takes one tensor {want!r}, got {names}")
    info = infos[0]
    encodings = _TOKEN_ENCODINGS if spec.is_first else _HIDDEN_ENCODINGS
    if info.layout != tensor_pb2.LAYOUT_DENSE or info.encoding not in encodings:
        raise ForwardRejected(
            Reason.WRONG_DTYPE, f"{want} must be dense {'float32' if spec.is_first else 'float32/16'}"
        )
    shape = info.shape
    rank = 2 if spec.is_first else 3
    if len(shape) != rank or (rank == 3 and shape[2] != spec.d_model):
        expected = "batch x tokens" + ("" if spec.is_first else f" x {spec.d_model}")
        raise ForwardRejected(Reason.WRONG_SHAPE, f"{want} must be {expected}, got {list(shape)}")
    batch, tokens = shape[0], shape[1]
    if not 1 <= batch <= spec.max_batch or tokens < 1:
        raise ForwardRejected(
            Reason.WRONG_SHAPE, f"batch must be 1..{spec.max_batch} and tokens >= 1, got {list(shape)}"
        )
    if req.start_position + tokens > spec.context:
        raise ForwardRejected(
            Reason.TOO_LONG,
            f"positions {req.start_position}..{req.start_position + tokens} pass {spec.context}",
        )
    if not req.use_cache and req.start_position != 0:
        raise ForwardRejected(Reason.WRONG_POSITION, "without a cache the whole sequence starts at 0")
    try:
        values = decode_tensors(data, limits)[want]
    except TensorDecodeError as exc:
        raise ForwardRejected(_codec_reason(exc.reason), exc.reason) from None
    if not np.isfinite(values).all():
        raise ForwardRejected(Reason.NON_FINITE, f"{want} holds NaN or infinity")
    if spec.is_first and (
        (values < 0).any() or (values >= spec.vocab_size).any() or (values != np.floor(values)).any()
    ):
        raise ForwardRejected(Reason.BAD_TOKEN, f"token ids must be integers in [0, {spec.vocab_size})")
    return ForwardInput(bytes(req.session_id), req.start_position, req.use_cache, req.last_only, values)


def _codec_reason(reason: str) -> Reason:
    if reason in ("too_many_elements", "payload_too_large", "claimed_size_too_large", "too_many_tensors"):
        return Reason.TOO_LARGE
    if reason == "rank_too_large":
        return Reason.WRONG_SHAPE
    if reason in ("unknown_encoding", "unknown_layout"):
        return Reason.WRONG_DTYPE
    return Reason.BAD_TENSOR


# ----------------------------------------------------------------------------- client side


def encode_forward(
    spec_range: tuple[int, int],
    values: npt.NDArray[np.floating] | npt.NDArray[np.integer],
    *,
    first: bool,
    session_id: bytes = b"",
    start: int = 0,
    use_cache: bool = False,
    last_only: bool = False,
    model_id: str = "",
) -> pb.ForwardRequest:
    """A ForwardRequest for ``values``: token ids (``first``) or hidden states."""
    name = TOKENS if first else HIDDEN
    payload = encode_tensors({name: np.asarray(values, dtype=np.float32)}, EncodeOptions(lz4=False))
    return pb.ForwardRequest(
        layer_start=spec_range[0],
        layer_end=spec_range[1],
        model_id=model_id,
        session_id=session_id,
        start_position=start,
        use_cache=use_cache,
        input=payload,
        last_only=last_only,
    )


def encode_output(values: npt.NDArray[np.float32], last: bool) -> pb.ForwardResponse:
    payload = encode_tensors({LOGITS if last else HIDDEN: values}, EncodeOptions(lz4=False))
    return pb.ForwardResponse(output=payload)


def read_output(
    resp: pb.ForwardResponse, *, last: bool, batch: int, tokens: int, width: int
) -> npt.NDArray[np.float32]:
    """The output of a ForwardResponse, checked to be ``batch x tokens x width``; raises
    :class:`ForwardRejected` with the server's reason for an error answer, and ``bad_tensor`` or
    ``wrong_shape`` for an answer that is not what was asked for."""
    which = resp.WhichOneof("result")
    if which == "error":
        try:
            reason = Reason(resp.error.reason)
        except ValueError:
            reason = Reason.INTERNAL
        raise ForwardRejected(reason, resp.error.detail or resp.error.reason)
    if which != "output":
        raise ForwardRejected(Reason.BAD_TENSOR, "answer holds neither output nor error")
    name = LOGITS if last else HIDDEN
    limits = DecodeLimits(
        max_bytes=4 * batch * tokens * width + _ENVELOPE_SLACK,
        max_tensors=1,
        max_elements=batch * tokens * width,
        max_rank=3,
        max_decode_work=0,
    )
    try:
        out = decode_tensors(bytes(resp.output), limits)
    except TensorDecodeError as exc:
        raise ForwardRejected(_codec_reason(exc.reason), f"answer: {exc.reason}") from None
    values = out.get(name)
    if values is None or len(out) != 1:
        raise ForwardRejected(Reason.WRONG_INPUT, f"answer must hold one tensor {name!r}")
    if values.shape != (batch, tokens, width):
        raise ForwardRejected(Reason.WRONG_SHAPE, f"answer is {list(values.shape)}")
    return values

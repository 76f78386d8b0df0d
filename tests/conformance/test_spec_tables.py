"""The spec's tables and the code's constants agree, and every constant the code uses is in a table.

A reader implements framing, signing, topics and the codec from ``specs/`` alone; these tests are
what keeps the numbers they read there true.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from p2pshard.config import NodeConfig
from p2pshard.conformance.runners import RUNNERS
from p2pshard.conformance.spec_tables import Table, all_tables, constants, name_of, parameters, ticked
from p2pshard.core import records, topics
from p2pshard.core.gossip import (
    GossipConfig,
    PeerScoreParams,
    PeerScoreThresholds,
    TopicScoreParams,
    protocol,
    signing,
)
from p2pshard.core.ledger import ops as ledger_ops
from p2pshard.core.ledger import state as ledger_state
from p2pshard.core.pipeline import rules as pipeline_rules
from p2pshard.core.rounds import (
    ANNOUNCEMENT_RULES,
    RoundConfig,
    RoundProtocol,
    RoundSchedule,
    Timing,
    schedule,
)
from p2pshard.core.wire import eliasfano, framing, reqresp_pb2, tensor
from p2pshard.core.work import proof as work_proof
from p2pshard.core.work import rules as work_rules
from p2pshard.core.work import seen as work_seen
from p2pshard.core.work import settle as work_settle
from p2pshard.core.work import votes as work_votes
from p2pshard.identity import Identity
from p2pshard.net import blob, discovery
from p2pshard.net.reqresp import ProtocolSpec, RetryPolicy
from p2pshard.node import training_options
from p2pshard.protocols import checkpoint, pipeline, round_io, status, training

SPECS = Path(__file__).resolve().parents[2] / "specs"
TABLES = all_tables(SPECS)
CONSTANTS = constants(TABLES)

# Modules whose public constants are wire facts: each must appear in a spec table.
WIRE_MODULES: list[ModuleType] = [
    framing,
    topics,
    records,
    signing,
    tensor,
    status,
    blob,
    protocol,
    discovery,
    checkpoint,
    schedule,
    round_io,
    ledger_state,
    ledger_ops,
    work_proof,
    work_rules,
    work_seen,
    work_settle,
    work_votes,
    pipeline_rules,
    pipeline,
]


def _spec_value(name: str) -> Any:
    entries = CONSTANTS.get(name)
    assert entries, f"{name} is in no `| Name | Value |` table of specs/"
    values = {repr(v) for _, v in entries}
    assert len(values) == 1, f"{name} has different values in {[d for d, _ in entries]}: {values}"
    return entries[0][1]


def _public_constants(module: ModuleType) -> dict[str, Any]:
    return {
        k: v
        for k, v in vars(module).items()
        if re.fullmatch(r"[A-Z][A-Z0-9_]*", k) and type(v) in (int, float, str, bytes, frozenset)
    }


@pytest.mark.parametrize("module", WIRE_MODULES, ids=lambda m: m.__name__)
def test_every_public_constant_of_a_wire_module_is_in_a_spec_table(module: ModuleType) -> None:
    found = _public_constants(module)
    assert found, f"{module.__name__} exports no constants: is it still a wire module?"
    for name, value in found.items():
        assert _spec_value(name) == value, f"{module.__name__}.{name}"


def test_private_wire_constants_and_derived_sizes() -> None:
    ident = Identity.from_secret(b"\x01" * 32)
    marshalled = bytes(ident.private_key.get_public_key().serialize())
    expected = {
        "MAX_INLINE_KEY": signing._MAX_INLINE_KEY,
        "HEADER_SIZE": tensor._HEADER.size,
        "COMPRESSION_NONE": tensor._COMPRESSION_NONE,
        "COMPRESSION_LZ4": tensor._COMPRESSION_LZ4,
        "MAX_CHUNK": tensor._MAX_CHUNK,
        "MAX_SCALE_SPAN": tensor._MAX_SCALE_SPAN,
        "KEY_TYPE_SECP256K1": int(signing.KeyType.SECP256K1),
        "SECRET_KEY_SIZE": len(ident.private_key.to_bytes()),
        "PUBLIC_KEY_SIZE": len(ident.public_key_bytes),
        "MARSHALLED_PUBLIC_KEY_SIZE": len(marshalled),
    }
    expected.update(_derived_training_values())
    for name, value in expected.items():
        assert _spec_value(name) == value, name
    assert ident.peer_id.to_bytes() == b"\x00" + bytes([len(marshalled)]) + marshalled
    assert ident.peer_id.to_base58().startswith("16Uiu2")


def _derived_training_values() -> dict[str, Any]:
    """Training values that are not module constants: the engine's shard-assignment tag (read from
    source: importing the engine would import torch) and the command line's period split."""
    genesis_src = (Path(training.__file__).parents[1] / "engine" / "genesis.py").read_text()
    tag = re.search(r"^_ASSIGN_TAG = (b\".*\")$", genesis_src, re.M)
    assert tag, "p2pshard/engine/genesis.py no longer defines _ASSIGN_TAG"
    period = 2.0  # short enough for the start-delay floor to apply
    short = training_options(NodeConfig(round_s=period)).timing
    long = training_options(NodeConfig(round_s=100 * period)).timing
    return {
        "SHARD_ASSIGNMENT_TAG": ast.literal_eval(tag.group(1)),
        "announce_share": short.announce_deadline_s / period,
        "fetch_share": short.fetch_timeout_s / period,
        "min_start_delay_s": short.start_delay_s,
        "start_delay_periods": long.start_delay_s / (100 * period),
    }


def test_every_spec_constant_is_checked_against_the_code() -> None:
    checked = {n for m in WIRE_MODULES for n in _public_constants(m)}
    checked |= {
        "MAX_INLINE_KEY",
        "HEADER_SIZE",
        "COMPRESSION_NONE",
        "COMPRESSION_LZ4",
        "MAX_CHUNK",
        "MAX_SCALE_SPAN",
        "KEY_TYPE_SECP256K1",
        "SECRET_KEY_SIZE",
        "PUBLIC_KEY_SIZE",
        "MARSHALLED_PUBLIC_KEY_SIZE",
    }
    checked |= set(_derived_training_values())
    checked |= {n for n in CONSTANTS if n.startswith(("status.", "blob.", "checkpoint."))}
    assert set(CONSTANTS) - checked == set(), "a spec constant no test compares with the code"


def _defaults(cls: type, skip: set[str]) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        value = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        out[f.name] = value.name if hasattr(value, "name") and not isinstance(value, str) else value
    return out


def test_pubsub_parameter_tables_match_the_router_defaults() -> None:
    spec = parameters(TABLES, "pubsub.md")
    code = {
        **_defaults(GossipConfig, {"message_id_fn", "score_params", "score_thresholds", "direct_peers"}),
        **_defaults(TopicScoreParams, set()),
        **_defaults(PeerScoreParams, {"topics", "app_specific_score", "ip_colocation_factor_whitelist"}),
        **_defaults(PeerScoreThresholds, set()),
    }
    assert spec == code


def test_request_response_limits_match_the_code() -> None:
    spec = parameters(TABLES, "framing.md")
    server = _defaults(ProtocolSpec, {"protocol_id", "handler"})
    client = _defaults(RetryPolicy, set())
    assert spec == {**server, **client}
    for prefix, proto in (
        ("status", status.status_spec(lambda _: None)),
        ("blob", blob.BlobService(None, None, None).spec()),
        ("checkpoint", checkpoint.checkpoint_spec(None)),
    ):  # type: ignore[arg-type]
        for field in ("max_request_size", "default_deadline_s", "max_deadline_s", "max_concurrent"):
            assert _spec_value(f"{prefix}.{field}") == getattr(proto, field), f"{prefix}.{field}"
    assert blob.BlobService(None, None, None).spec().chunk_size == _spec_value("CHUNK_SIZE")  # type: ignore[arg-type]


def test_checkpoint_client_limits_match_the_code() -> None:
    import inspect

    import trio

    calls: list[dict[str, Any]] = []

    class Client:
        async def call(self, peer: Any, protocol_id: str, body: bytes, **kw: Any) -> bytes:
            calls.append({"protocol_id": protocol_id, "body": body, **kw})
            return b""

    trio.run(checkpoint.fetch_checkpoint_info, Client(), None)
    assert calls == [
        {
            "protocol_id": _spec_value("CHECKPOINT_PROTOCOL"),
            "body": b"",
            "timeout_s": _spec_value("checkpoint.client_timeout_s"),
            "max_response_size": _spec_value("checkpoint.max_response_size"),
        }
    ]
    default = inspect.signature(checkpoint.fetch_checkpoint_info).parameters["timeout_s"].default
    assert default == _spec_value("checkpoint.client_timeout_s")


def _table(doc: str, first_column: str) -> Table:
    found = [t for t in TABLES if t.doc == doc and t.header[0] == first_column]
    assert len(found) == 1, f"{doc}: expected one table starting with {first_column}"
    return found[0]


def test_status_codes_table_matches_reqresp_proto() -> None:
    table = _table("framing.md", "Code")
    spec = {name_of(r["Code"]): int(name_of(r["Number"])) for r in table.rows}
    assert spec == dict(reqresp_pb2.Code.items())


def test_framing_error_reasons_match_the_decoder() -> None:
    table = _table("framing.md", "Rule")
    spec = [name_of(r["Error reason"]) for r in table.rows]
    assert spec == [
        framing.MalformedVarint.reason,
        framing.FrameTooLarge.reason,
        framing.TruncatedFrame.reason,
    ]


def test_connection_stack_protocol_ids() -> None:
    from libp2p.security.noise.transport import PROTOCOL_ID as NOISE
    from libp2p.stream_muxer.mplex.mplex import MPLEX_PROTOCOL_ID as MPLEX
    from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX

    ids = {name_of(r["Protocol id"]) for r in _table("connection.md", "Layer").rows}
    assert {str(NOISE), str(MPLEX), str(YAMUX)} <= ids


def test_topic_table_matches_the_topic_registry() -> None:
    rows = _table("topics.md", "Topic").rows
    spec = {
        name_of(r["Topic"]): (
            name_of(r["Message"]),
            name_of(r["Author field"]),
            tuple(ticked(r["Hash fields"])),
        )
        for r in rows
    }
    code = {n: (s.message_type.__name__, s.author_field, s.hash_fields) for n, s in topics.TOPICS.items()}
    assert spec == code
    assert all(s.max_size == topics.MAX_GOSSIP_MESSAGE for s in topics.TOPICS.values())


def test_topic_validation_reasons_match_the_validator() -> None:
    rows = _table("topics.md", "#").rows
    spec = {tok for r in rows for tok in ticked(r["Reason"]) if "<" not in tok}
    source = Path(topics.__file__).read_text()
    code = set(re.findall(r'(?:reject|ignore)\("([a-z0-9_]+)"\)', source)) | {"ok"}
    code |= {f"bad_{f}" for s in topics.TOPICS.values() for f in s.hash_fields}
    assert spec == code
    verdicts = {name_of(r["Verdict"]) for r in rows} - {"as they say"}
    assert verdicts == {"ACCEPT", "REJECT", "IGNORE"}


def test_tensor_limits_and_error_reasons_match_the_codec() -> None:
    assert parameters(TABLES, "tensor.md") == _defaults(tensor.DecodeLimits, set())
    spec = [name_of(r["Reason"]) for r in _table("tensor.md", "Reason").rows]
    code = re.findall(r'TensorDecodeError\("([a-z0-9_]+)"', Path(tensor.__file__).read_text())
    code += re.findall(r'EliasFanoError\("([a-z0-9_]+)"', Path(eliasfano.__file__).read_text())
    assert set(spec) == set(code)
    assert len(spec) == len(set(spec))


def test_training_tables_match_the_round_machine() -> None:
    spec = parameters(TABLES, "training.md")
    assert {
        k: v for k, v in spec.items() if k in {f.name for f in dataclasses.fields(RoundConfig)}
    } == _defaults(RoundConfig, set())
    schedule = {f.name: f.default for f in dataclasses.fields(RoundSchedule)}
    for name in ("period", "announce_deadline", "fetch_timeout", "clock_skew"):
        want = schedule[name] if schedule[name] is not dataclasses.MISSING else None
        assert spec[name] == want, name
    rows = _table("training.md", "#").rows
    table = [(name_of(r["Verdict"]), name_of(r["Reason"])) for r in rows if name_of(r["Reason"]) != "—"]
    assert table == [(rule.result.name, rule.reason) for rule in ANNOUNCEMENT_RULES]


def test_training_option_tables_match_the_driver() -> None:
    spec = parameters(TABLES, "training.md")
    options = _defaults(training.TrainingOptions, {"timing"}) | _defaults(Timing, set())
    assert options.pop("max_payload_bytes") == spec["max_payload_bytes"]
    assert {k: spec[k] for k in options} == options
    round_params = {f.name for f in dataclasses.fields(RoundConfig)} | {
        "period",
        "announce_deadline",
        "fetch_timeout",
        "clock_skew",
    }
    assert set(spec) == round_params | set(options), "a training.md parameter no test compares"


def test_gradients_validation_steps_follow_the_code() -> None:
    """The Step table of training.md: topics.validate's rules in source order, then the training
    hook's signature check, then the round protocol's, then the round machine's table."""
    structural = re.findall(r'(?:reject|ignore)\("([a-z0-9_]+)"\)', Path(topics.__file__).read_text())
    hashes = [f"bad_{f}" for f in topics.TOPICS[round_io.GRADIENTS].hash_fields]
    structural[-1:-1] = hashes  # hash fields are checked just before the clock window
    judge = Path(round_io.__file__).read_text().split("def judge", 1)[1].split("\n    def ", 1)[0]
    hook = re.findall(r'(?:reject|ignore)\("([a-z_]+)"\)', judge)
    announcement = inspect.getsource(RoundProtocol.announcement)
    machine = re.findall(r'(?:reject|ignore)\("([a-z_]+)"\)', announcement)
    assert (hook, machine) == (["bad_signature"], ["no_schedule"])
    rows = _table("training.md", "Step").rows
    spec = [(name_of(r["Verdict"]), name_of(r["Reason"])) for r in rows]
    verdict = {
        s_: "REJECT" for s_ in ("oversized", "undecodable", "missing_author", "author_not_sender", *hashes)
    }
    expected = [(verdict.get(r, "IGNORE"), r) for r in structural]
    expected += [("REJECT", "bad_signature"), ("IGNORE", "no_schedule")]
    expected += [("as they say", "as they say"), ("ACCEPT", "ok")]
    assert spec == expected


def test_every_document_has_a_lifecycle_header_and_is_indexed() -> None:
    index = (SPECS / "README.md").read_text()
    for path in sorted(SPECS.rglob("*.md")):
        rel = str(path.relative_to(SPECS))
        if rel == "README.md" or rel.startswith("vectors/formats/"):
            continue
        tables = [t for t in TABLES if t.doc == rel]
        assert tables and tables[0].header == ("Lifecycle Stage", "Maturity", "Status", "Latest Revision"), (
            rel
        )
        assert f"]({rel})" in index, f"{rel} is not in specs/README.md"


def test_every_runner_has_a_format_readme() -> None:
    for name in RUNNERS:
        text = (SPECS / "vectors" / "formats" / f"{name}.md").read_text()
        assert "## Test case format" in text and "## Condition" in text, name


def test_record_validation_reasons_match_the_code_in_order() -> None:
    spec = [name_of(r["Reason"]) for r in _table("dht.md", "#").rows]
    assert spec == list(records.REASONS)
    source = Path(records.__file__).read_text()
    raised = re.findall(r'RecordError\(\s*"([a-z_]+)"', source)
    assert sorted(set(raised)) == sorted(records.REASONS)

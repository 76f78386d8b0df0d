"""specs/ledger.md and the code agree: the parameter table is LedgerParams' defaults, the state
decoding table is STATE_ERRORS in order, and each rule table lists the reasons its function
returns, in the order the function checks them."""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from p2pshard.conformance.spec_tables import Table, all_tables, name_of, parameters
from p2pshard.core.ledger import LedgerParams, ops, transitions
from p2pshard.core.ledger.state import STATE_ERRORS

SPECS = Path(__file__).resolve().parents[2] / "specs"
TABLES = [t for t in all_tables(SPECS) if t.doc == "ledger.md"]
_VERDICT = re.compile(r'(reject|ignore)\("([a-z_]+)"\)')


def _rule_tables() -> list[Table]:
    return [t for t in TABLES if t.header[:1] == ("#",)]


def _reasons(*fns: Callable[..., Any]) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for fn in fns:
        found += [(v.upper(), r) for v, r in _VERDICT.findall(inspect.getsource(fn))]
    return found


def _table_rows(index: int) -> list[tuple[str, str]]:
    rows = _rule_tables()[index].rows
    return [(name_of(r["Verdict"]), name_of(r["Reason"])) for r in rows]


def test_parameters_are_the_defaults() -> None:
    spec = parameters(TABLES, "ledger.md")
    code = {f.name: f.default for f in dataclasses.fields(LedgerParams)}
    assert spec == code


def test_state_decoding_reasons_are_state_errors_in_order() -> None:
    table = next(t for t in TABLES if t.header == ("Rule", "Reason"))
    assert [name_of(r["Reason"]) for r in table.rows] == list(STATE_ERRORS)


def test_transfer_and_stake_tables_follow_the_code() -> None:
    parse = _reasons(ops._parse)
    transfer = parse + _reasons(ops.decode_transfer, transitions._signer, transitions._process_transfer)
    transfer += _reasons(transitions._room_for)
    assert _table_rows(0) == [*transfer, ("ACCEPT", "ok")]
    stake = parse + _reasons(ops.decode_stake, transitions._signer, transitions._process_stake)
    assert _table_rows(1) == [*stake, ("ACCEPT", "ok")]


def test_system_operation_and_settlement_tables_follow_the_code() -> None:
    system = _reasons(ops._system)
    reward = system + _reasons(transitions._room_for, transitions._process_reward)
    assert _table_rows(2) == [*reward, ("ACCEPT", "ok")]
    assert _table_rows(3) == [*system, *_reasons(transitions._process_slash), ("ACCEPT", "ok")]
    fee_source = inspect.getsource(ops.op_from_pb).split('if which == "fee":')[1]
    fee = [(v.upper(), r) for v, r in _VERDICT.findall(fee_source) if r != "empty_op"]
    fee += _reasons(transitions._process_fee, transitions._room_for)
    assert _table_rows(4) == [*fee, ("ACCEPT", "ok")]
    settle = _reasons(ops.decode_round, transitions.settle)
    assert _table_rows(5) == [*settle, ("ACCEPT", "ok")]


def test_every_reason_the_code_gives_is_in_the_spec() -> None:
    text = (SPECS / "ledger.md").read_text()
    for module in (ops, transitions):
        for _, reason in _VERDICT.findall(inspect.getsource(module)):
            assert f"`{reason}`" in text, reason

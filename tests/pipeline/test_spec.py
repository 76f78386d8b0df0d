"""specs/pipeline.md's tables and the code agree: the session limits' defaults, every reason in
the code's order, and the forward rules' reasons in the order the code applies them."""

from __future__ import annotations

import re
from pathlib import Path

from p2pshard.conformance.spec_tables import all_tables, name_of, parameters
from p2pshard.core.pipeline import Reason, SessionLimits, rules, sessions

SPECS = Path(__file__).resolve().parents[2] / "specs"
TABLES = all_tables(SPECS)


def _rows(first_column: str) -> list[dict[str, str]]:
    (table,) = [t for t in TABLES if t.doc == "pipeline.md" and t.header[0] == first_column]
    return table.rows


def test_session_limits_match_the_code() -> None:
    import dataclasses

    defaults = {f.name: f.default for f in dataclasses.fields(SessionLimits)}
    assert parameters(TABLES, "pipeline.md") == defaults


def test_every_reason_is_listed_in_the_codes_order() -> None:
    assert [name_of(r["Reason"]) for r in _rows("Reason")] == [r.value for r in Reason]


def test_the_forward_rules_are_the_codes_checks_in_order() -> None:
    spec = [name_of(r["Reason"]) for r in _rows("#")][:-1]  # the last row is ACCEPT
    # the reasons as the code raises them, stateless rules first, then the session table's
    code: list[str] = []
    for module in (rules, sessions):
        source = Path(module.__file__ or "").read_text()
        body = (
            source.split("def check_forward", 1)[1] if module is rules else source.split("def check(", 1)[1]
        )
        body = body.split("\ndef _codec_reason", 1)[0].split("\n    def _tombstoned", 1)[0]
        code += [Reason[m].value for m in re.findall(r"Reason\.([A-Z_]+)", body)]
    codec = ["too_large", "bad_tensor"]  # raised through _codec_reason (rules 4, 5 and 11)
    dedup = []
    for reason in code:
        if not dedup or dedup[-1] != reason:
            dedup.append(reason)
    expected = [r for r in spec if r not in codec]
    assert [r for r in dedup if r not in codec] == expected

"""The spec's test vectors: p2pshard passes them, they regenerate byte for byte, and the runner
fails loudly on a wrong implementation, an unread file or a dead adapter."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from click.testing import CliRunner

from p2pshard.conformance.adapters import CommandAdapter
from p2pshard.conformance.cli import conformance
from p2pshard.conformance.model import PRESET
from p2pshard.conformance.runners import RUNNERS
from p2pshard.conformance.suite import check_generated, default_vectors_dir, run

ROOT = default_vectors_dir()


def test_committed_vectors_match_a_fresh_generation() -> None:
    assert check_generated(ROOT) == [], "run: python -m p2pshard.conformance generate"


def test_p2pshard_passes_every_vector_and_the_suite_is_large_enough() -> None:
    result = run(ROOT)
    assert result.ok, [
        (r.name, r.failures[:2]) for r in result.runners.values() if r.failures
    ] + result.problems
    assert set(result.runners) == set(RUNNERS)
    invalid = sum(r.invalid_inputs for r in result.runners.values())
    assert result.total >= 150
    assert invalid * 3 >= result.total


def test_cli_prints_a_per_runner_table_and_exits_zero() -> None:
    out = CliRunner().invoke(conformance, ["vectors", "--runner", "framing", "--runner", "router"])
    assert out.exit_code == 0, out.output
    assert "framing" in out.output and "router" in out.output and "PASS" in out.output
    assert "conformant" in out.output


def test_reference_adapter_over_json_lines_passes() -> None:
    adapter = CommandAdapter(f"{sys.executable} -m p2pshard.conformance.reference_adapter", timeout_s=30)
    try:
        result = run(ROOT, adapter, only=["framing", "signing", "gossip_validation"])
    finally:
        adapter.close()
    assert result.ok, [r.failures[:2] for r in result.runners.values()]


def test_an_adapter_that_accepts_every_gossip_message_fails_with_a_clear_report() -> None:
    command = f"{sys.executable} -m p2pshard.conformance.examples.accept_all"
    out = CliRunner().invoke(
        conformance,
        ["vectors", "--adapter", command, "--runner", "gossip_validation", "--runner", "message_id"],
    )
    assert out.exit_code == 1
    assert "not conformant" in out.output
    assert "FAIL gossip_validation/capacity/author_not_sender" in out.output
    assert 'result: expected "REJECT", got "ACCEPT"' in out.output
    assert 'result: expected "IGNORE", got "ACCEPT"' in out.output
    row = next(line for line in out.output.splitlines() if "message_id" in line)
    assert "PASS" in row  # the other runner is unaffected


def _copy(tmp_path: Path, runner: str) -> Path:
    shutil.copytree(ROOT / PRESET / runner, tmp_path / PRESET / runner)
    return tmp_path / PRESET / runner


def test_a_vector_file_left_unread_fails_the_suite(tmp_path: Path) -> None:
    base = _copy(tmp_path, "framing")
    (base / "decode" / "one_frame" / "extra.bin").write_bytes(b"\x00")
    result = run(tmp_path, only=["framing"])
    assert not result.ok
    assert ("framing/decode/one_frame", "files left unread: extra.bin") in result.problems


def test_a_missing_file_or_unknown_handler_fails_the_suite(tmp_path: Path) -> None:
    base = _copy(tmp_path, "framing")
    (base / "decode" / "one_frame" / "stream.bin").unlink()
    shutil.copytree(base / "encode", base / "reencode")
    result = run(tmp_path, only=["framing"])
    problems = dict(result.problems)
    assert problems["framing/decode/one_frame"] == "files missing: stream.bin"
    assert "unknown handler" in problems["framing/reencode"]
    assert not result.ok


def test_an_adapter_that_exits_fails_every_case_without_hanging(tmp_path: Path) -> None:
    _copy(tmp_path, "message_id")
    adapter = CommandAdapter(f"{sys.executable} -c pass", timeout_s=10)
    try:
        result = run(tmp_path, adapter, only=["message_id"])
    finally:
        adapter.close()
    res = result.runners["message_id"]
    assert res.passed == 0 and len(res.failures) == res.cases > 0
    assert "adapter exited" in res.failures[0][1][0]


def test_generate_check_reports_a_changed_vector(tmp_path: Path) -> None:
    shutil.copytree(ROOT / PRESET, tmp_path / PRESET)
    target = tmp_path / PRESET / "framing" / "encode" / "short" / "expected.json"
    target.write_text(target.read_text().replace("68656c6c6f", "68656c6c6e"))
    out = CliRunner().invoke(conformance, ["generate", "--check", "--vectors-dir", str(tmp_path)])
    assert out.exit_code == 1
    assert "differs: framing/encode/short/expected.json" in out.output

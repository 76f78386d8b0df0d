"""Counts the cases each decoder fuzzer ran and prints them as a table at the end of the run.

Counts travel in each test report's ``user_properties``, so the table is right under pytest-xdist
too (workers run the fuzzers, the controller prints). The settings profile (cases from
``P2PSHARD_FUZZ_EXAMPLES``, derandomized, no database) is registered in :mod:`tests.fuzz.fuzzing`
and applied per test with its ``FUZZ`` decorator.
"""

from __future__ import annotations

import functools
import traceback
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis.errors import UnsatisfiedAssumption

from tests.fuzz.fuzzing import EXAMPLES


@dataclass
class _Record:
    cases: int = 0
    crashes: set[tuple[str, str, int]] = field(default_factory=set)
    seconds: float = 0.0


_COUNTING: dict[str, _Record] = {}
"""Cases run in this process (a pytest-xdist worker, or the only process)."""
_TABLE: dict[str, _Record] = {}
"""What the reports said, gathered where the summary is printed (the xdist controller)."""


def pytest_runtest_setup(item: pytest.Item) -> None:
    hyp = getattr(getattr(item, "obj", None), "hypothesis", None)
    if hyp is None or getattr(hyp.inner_test, "_p2pshard_counted", False):
        return
    inner = hyp.inner_test
    record = _COUNTING.setdefault(item.name, _Record())

    @functools.wraps(inner)
    def counted(*args: Any, **kwargs: Any) -> Any:
        record.cases += 1
        try:
            return inner(*args, **kwargs)
        except UnsatisfiedAssumption:
            raise
        except Exception as exc:  # a crash: remember where it was raised (distinct bugs)
            last = traceback.extract_tb(exc.__traceback__)[-1]
            record.crashes.add((type(exc).__name__, last.filename, last.lineno or 0))
            raise

    counted._p2pshard_counted = True  # type: ignore[attr-defined]
    hyp.inner_test = counted


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    record = _COUNTING.get(item.name)
    if record is not None and call.when == "call":  # the counts travel with the report
        report = outcome.get_result()
        report.user_properties.append(("fuzz_cases", record.cases))
        report.user_properties.append(("fuzz_crashes", sorted(record.crashes)))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    props: dict[str, Any] = dict(report.user_properties)
    if report.when == "call" and "fuzz_cases" in props:
        record = _TABLE.setdefault(report.nodeid.rpartition("::")[2].removeprefix("test_"), _Record())
        record.cases = props["fuzz_cases"]
        record.crashes = {tuple(c) for c in props["fuzz_crashes"]}
        record.seconds = report.duration


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _TABLE:
        return
    tr = terminalreporter
    width = max(len(name) for name in _TABLE)
    tr.write_sep("=", f"decoder fuzzing: {EXAMPLES} cases asked per decoder (P2PSHARD_FUZZ_EXAMPLES)")
    tr.write_line(f"{'decoder':<{width}} | {'cases':>8} | {'crashes':>7} | {'seconds':>7}")
    tr.write_line(f"{'-' * width}-+-{'-' * 8}-+-{'-' * 7}-+-{'-' * 7}")
    for name, r in sorted(_TABLE.items()):
        tr.write_line(f"{name:<{width}} | {r.cases:>8} | {len(r.crashes):>7} | {r.seconds:>7.1f}")
    total = sum(r.cases for r in _TABLE.values())
    crashes = sum(len(r.crashes) for r in _TABLE.values())
    seconds = sum(r.seconds for r in _TABLE.values())
    tr.write_line(f"total: {total} cases, {crashes} crashes, {seconds:.0f} s in the fuzzers")

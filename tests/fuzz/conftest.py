"""Counts the cases each decoder fuzzer ran and prints them as a table at the end of the run.

The settings profile (cases from ``P2PSHARD_FUZZ_EXAMPLES``, derandomized, no database) is
registered in :mod:`tests.fuzz.fuzzing` and applied per test with its ``FUZZ`` decorator.
"""

from __future__ import annotations

import functools
import time
import traceback
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


_RECORDS: dict[str, _Record] = {}


def pytest_runtest_setup(item: pytest.Item) -> None:
    hyp = getattr(getattr(item, "obj", None), "hypothesis", None)
    if hyp is None or getattr(hyp.inner_test, "_p2pshard_counted", False):
        return
    inner = hyp.inner_test
    record = _RECORDS.setdefault(item.name.removeprefix("test_"), _Record())

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


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call":
        record = _RECORDS.get(report.nodeid.rpartition("::")[2].removeprefix("test_"))
        if record is not None:
            record.seconds += report.duration


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _RECORDS:
        return
    tr = terminalreporter
    width = max(len(name) for name in _RECORDS)
    tr.write_sep("=", f"decoder fuzzing: {EXAMPLES} cases asked per decoder (P2PSHARD_FUZZ_EXAMPLES)")
    tr.write_line(f"{'decoder':<{width}} | {'cases':>8} | {'crashes':>7} | {'seconds':>7}")
    tr.write_line(f"{'-' * width}-+-{'-' * 8}-+-{'-' * 7}-+-{'-' * 7}")
    for name, r in sorted(_RECORDS.items()):
        tr.write_line(f"{name:<{width}} | {r.cases:>8} | {len(r.crashes):>7} | {r.seconds:>7.1f}")
    total = sum(r.cases for r in _RECORDS.values())
    crashes = sum(len(r.crashes) for r in _RECORDS.values())
    tr.write_line(f"total: {total} cases, {crashes} crashes, {time.process_time():.0f} s of CPU")

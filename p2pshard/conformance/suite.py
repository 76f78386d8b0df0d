"""Generating the vectors and running them against an adapter.

``generate`` builds every runner's cases, checks that p2pshard's own answer meets each case's
condition (a vector our implementation fails is a bug to fix, never a file to write), and writes
them. ``run`` loads the vectors, asks the adapter, applies each runner's condition and reports.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from p2pshard.conformance.adapters import Adapter, AdapterGone, InProcessAdapter
from p2pshard.conformance.model import PRESET, Case, Runner
from p2pshard.conformance.runners import RUNNERS
from p2pshard.conformance.store import compare_trees, load_cases, write_cases


def default_vectors_dir() -> Path:
    """``specs/vectors`` of the source tree p2pshard runs from, else of the working directory."""
    here = Path(__file__).resolve().parents[2] / "specs" / "vectors"
    return here if here.is_dir() else Path.cwd() / "specs" / "vectors"


class SelfCheckFailed(Exception):
    """p2pshard does not meet the condition of a case it generated."""


def build_cases(runners: Mapping[str, Runner] = RUNNERS) -> list[Case]:
    cases: list[Case] = []
    problems: list[str] = []
    for runner in runners.values():
        for case in runner.generate():
            inp = case.request_input()
            out = runner.answer(case.handler, inp)
            fails = runner.check(case.handler, inp, case.expected, out)
            if fails:
                problems.append(f"{case.path}: {'; '.join(fails)}")
            cases.append(case)
    if problems:
        raise SelfCheckFailed("p2pshard fails its own vectors:\n  " + "\n  ".join(problems))
    return cases


def generate(root: Path, preset: str = PRESET) -> int:
    return write_cases(root, build_cases(), preset)


def check_generated(root: Path, preset: str = PRESET) -> list[str]:
    """Differences between the vectors under ``root`` and a fresh generation (empty = identical)."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        generate(fresh, preset)
        return compare_trees(root / preset, fresh / preset)


@dataclass
class RunnerResult:
    name: str
    cases: int = 0
    passed: int = 0
    invalid_inputs: int = 0
    failures: list[tuple[str, list[str]]] = field(default_factory=list)


@dataclass
class SuiteResult:
    runners: dict[str, RunnerResult]
    problems: list[tuple[str, str]]
    files_read: int

    @property
    def ok(self) -> bool:
        return not self.problems and all(not r.failures and r.cases for r in self.runners.values())

    @property
    def total(self) -> int:
        return sum(r.cases for r in self.runners.values())


def run(
    root: Path, adapter: Adapter | None = None, only: Sequence[str] = (), preset: str = PRESET
) -> SuiteResult:
    unknown = [n for n in only if n not in RUNNERS]
    if unknown:
        raise ValueError(f"unknown runner(s): {', '.join(unknown)}; known: {', '.join(RUNNERS)}")
    selected = {n: r for n, r in RUNNERS.items() if not only or n in only}
    loaded = load_cases(root, selected, preset)
    adapter = adapter or InProcessAdapter(RUNNERS)
    results = {n: RunnerResult(n) for n in selected}
    for case in loaded.cases:
        res = results[case.runner]
        res.cases += 1
        res.invalid_inputs += not case.valid_input
        runner = selected[case.runner]
        try:
            answer = adapter.ask(case.request())
        except AdapterGone as exc:
            res.failures.append((case.path, [f"adapter: {exc}"]))
            continue
        output = answer.get("output")
        if not isinstance(output, dict):
            res.failures.append(
                (case.path, [f"no output: {answer.get('error', 'answer has no output object')}"])
            )
            continue
        try:
            fails = runner.check(case.handler, case.request_input(), case.expected, output)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            fails = [f"answer does not fit the runner's schema: {type(exc).__name__}: {exc}"]
        if fails:
            res.failures.append((case.path, fails))
        else:
            res.passed += 1
    problems = [(p.path, p.problem) for p in loaded.problems]
    for name, res in results.items():
        if not res.cases:
            problems.append((name, "no cases found for this runner"))
    return SuiteResult(results, problems, loaded.files_read)

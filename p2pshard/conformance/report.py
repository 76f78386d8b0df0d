"""Printing a suite or live-check result as tables (rich) and plain failure lines."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from p2pshard.conformance.suite import SuiteResult

MAX_LINES_PER_CASE = 4
MAX_CASES_SHOWN = 40


def print_suite(result: SuiteResult, console: Console, adapter: str) -> None:
    table = Table(title=f"conformance vectors — {adapter}")
    table.add_column("runner")
    table.add_column("cases", justify="right")
    table.add_column("invalid input", justify="right")
    table.add_column("passed", justify="right")
    table.add_column("failed", justify="right")
    table.add_column("result")
    for r in result.runners.values():
        verdict = "[green]PASS[/green]" if not r.failures and r.cases else "[red]FAIL[/red]"
        table.add_row(
            r.name, str(r.cases), str(r.invalid_inputs), str(r.passed), str(len(r.failures)), verdict
        )
    console.print(table)
    shown = 0
    for r in result.runners.values():
        for path, lines in r.failures:
            if shown >= MAX_CASES_SHOWN:
                break
            console.print(f"[red]FAIL[/red] {path}", highlight=False, soft_wrap=True)
            for line in lines[:MAX_LINES_PER_CASE]:
                console.print(f"    {line}", highlight=False, markup=False, soft_wrap=True)
            shown += 1
    failed = sum(len(r.failures) for r in result.runners.values())
    if failed > shown:
        console.print(f"… and {failed - shown} more failed cases", highlight=False)
    for path, problem in result.problems:
        console.print(f"[red]VECTOR FILES[/red] {path}: {problem}", highlight=False)
    total = result.total
    summary = f"{total - failed}/{total} cases passed, {result.files_read} vector files read"
    if result.ok:
        console.print(f"[green]conformant[/green]: {summary}", highlight=False)
    else:
        console.print(
            f"[red]not conformant[/red]: {summary}; {len(result.problems)} vector file problems",
            highlight=False,
        )

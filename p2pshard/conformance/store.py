"""Vector files on disk: written byte-identically, read back with every file accounted for.

Writing: JSON with sorted keys, two-space indent and a final newline; raw ``.bin`` files as they
are; nothing time- or machine-dependent. Reading: every file of a case must be one the runner's
format names; a file no runner reads (or a case missing one) is reported, never skipped.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from p2pshard.conformance.model import JSON, PRESET, Case, Runner

META = "meta.json"
EXPECTED = "expected.json"
INPUT = "input.json"


def dump_json(value: JSON) -> bytes:
    return (json.dumps(value, sort_keys=True, indent=2, ensure_ascii=True) + "\n").encode()


def case_files(case: Case) -> dict[str, bytes]:
    """The files of one case, by name."""
    files = {
        META: dump_json({"description": case.description, "valid_input": case.valid_input}),
        EXPECTED: dump_json(dict(case.expected)),
    }
    if case.input_json is not None:
        files[INPUT] = dump_json(dict(case.input_json))
    for stem, data in case.input_bin.items():
        files[f"{stem}.bin"] = bytes(data)
    return files


def write_cases(root: Path, cases: Iterable[Case], preset: str = PRESET) -> int:
    """Replace ``root/<preset>`` with ``cases``; returns the number written."""
    base = root / preset
    if base.exists():
        shutil.rmtree(base)
    n = 0
    seen: set[str] = set()
    for case in cases:
        if case.path in seen:
            raise ValueError(f"two cases named {case.path}")
        seen.add(case.path)
        target = base / case.path
        target.mkdir(parents=True)
        for name, data in case_files(case).items():
            (target / name).write_bytes(data)
        n += 1
    return n


@dataclass
class LoadProblem:
    path: str
    problem: str


@dataclass
class Loaded:
    cases: list[Case] = field(default_factory=list)
    problems: list[LoadProblem] = field(default_factory=list)
    files_read: int = 0


def load_cases(root: Path, runners: Mapping[str, Runner], preset: str = PRESET) -> Loaded:
    """Read every case of the selected runners; unknown handlers, unknown files, unread files,
    missing files and undecodable JSON are problems (the suite fails on any)."""
    out = Loaded()
    base = root / preset
    if not base.is_dir():
        out.problems.append(LoadProblem(str(base), "no vectors here"))
        return out
    for runner_dir in sorted(p for p in base.iterdir()):
        name = runner_dir.name
        if name not in runners:
            continue
        runner = runners[name]
        if not runner_dir.is_dir():
            out.problems.append(LoadProblem(name, "not a directory"))
            continue
        for handler_dir in sorted(runner_dir.iterdir()):
            rel = f"{name}/{handler_dir.name}"
            if handler_dir.name not in runner.files:
                out.problems.append(LoadProblem(rel, "unknown handler: its files were left unread"))
                continue
            for case_dir in sorted(handler_dir.iterdir()):
                _load_case(out, runner, handler_dir.name, case_dir, f"{rel}/{case_dir.name}")
    return out


def _load_case(out: Loaded, runner: Runner, handler: str, case_dir: Path, rel: str) -> None:
    if not case_dir.is_dir():
        out.problems.append(LoadProblem(rel, "not a case directory"))
        return
    wanted = set(runner.files[handler]) | {META, EXPECTED}
    present = {p.name for p in case_dir.iterdir()}
    unread = present - wanted
    missing = wanted - present
    if unread:
        out.problems.append(LoadProblem(rel, f"files left unread: {', '.join(sorted(unread))}"))
    if missing:
        out.problems.append(LoadProblem(rel, f"files missing: {', '.join(sorted(missing))}"))
        return
    try:
        meta = json.loads((case_dir / META).read_bytes())
        expected = json.loads((case_dir / EXPECTED).read_bytes())
        input_json = json.loads((case_dir / INPUT).read_bytes()) if INPUT in wanted else None
    except (OSError, ValueError) as exc:
        out.problems.append(LoadProblem(rel, f"unreadable JSON: {exc}"))
        return
    bins = {f[: -len(".bin")]: (case_dir / f).read_bytes() for f in sorted(wanted) if f.endswith(".bin")}
    out.files_read += len(wanted)
    out.cases.append(
        Case(
            runner=runner.name,
            handler=handler,
            name=case_dir.name,
            description=str(meta.get("description", "")),
            valid_input=bool(meta.get("valid_input", True)),
            input_json=input_json,
            input_bin=bins,
            expected=expected,
        )
    )


def compare_trees(a: Path, b: Path) -> list[str]:
    """Relative paths that differ between two directory trees (missing on one side or changed)."""

    def files(root: Path) -> dict[str, Path]:
        return {str(p.relative_to(root)): p for p in root.rglob("*") if p.is_file()} if root.exists() else {}

    fa, fb = files(a), files(b)
    out = [f"only in {a}: {k}" for k in sorted(set(fa) - set(fb))]
    out += [f"only in {b}: {k}" for k in sorted(set(fb) - set(fa))]
    out += [f"differs: {k}" for k in sorted(set(fa) & set(fb)) if fa[k].read_bytes() != fb[k].read_bytes()]
    return out

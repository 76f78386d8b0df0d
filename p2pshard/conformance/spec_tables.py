"""Reading the Markdown tables of ``specs/`` as data, so tests can hold them to the code.

A table is a header row, a ``|---|`` row and body rows. Values are taken from the first
backticked literal of a cell (``4194304``, ``b"P2T1"``, ``"/p2pshard/"``, ``frozenset({...})``,
``True``); a bare identifier (``STRICT_SIGN``) is returned as a string.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_TICKED = re.compile(r"`([^`]*)`")


@dataclass(frozen=True)
class Table:
    doc: str
    header: tuple[str, ...]
    rows: tuple[dict[str, str], ...]

    def column(self, name: str) -> list[str]:
        return [row[name] for row in self.rows]


def _cells(line: str) -> list[str]:
    inner = line.strip()[1:-1] if line.strip().endswith("|") else line.strip()[1:]
    parts = re.split(r"(?<!\\)\|", inner)
    return [p.strip().replace("\\|", "|") for p in parts]


def read_tables(path: Path, root: Path | None = None) -> list[Table]:
    lines = path.read_text(encoding="utf-8").splitlines()
    doc = str(path.relative_to(root)) if root is not None else path.name
    tables: list[Table] = []
    i = 0
    in_code = False
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            in_code = not in_code
        if (
            not in_code
            and line.lstrip().startswith("|")
            and i + 1 < len(lines)
            and re.match(r"^\s*\|[\s:|-]+\|\s*$", lines[i + 1])
        ):
            header = tuple(_cells(line))
            rows = []
            i += 2
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                cells = _cells(lines[i])
                rows.append(dict(zip(header, cells + [""] * (len(header) - len(cells)), strict=False)))
                i += 1
            tables.append(Table(doc, header, tuple(rows)))
            continue
        i += 1
    return tables


def all_tables(specs: Path) -> list[Table]:
    return [t for p in sorted(specs.rglob("*.md")) for t in read_tables(p, specs)]


def ticked(cell: str) -> list[str]:
    return _TICKED.findall(cell)


def literal(cell: str) -> Any:
    """The value of the first backticked literal in ``cell``."""
    found = ticked(cell)
    if not found:
        raise ValueError(f"no `value` in {cell!r}")
    text = found[0]
    if text.startswith("frozenset(") and text.endswith(")"):
        return frozenset(ast.literal_eval(text[len("frozenset(") : -1]))
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", text) and text not in ("True", "False", "None"):
        return text
    return ast.literal_eval(text)


def name_of(cell: str) -> str:
    found = ticked(cell)
    return found[0] if found else cell.strip()


def constants(tables: list[Table]) -> dict[str, list[tuple[str, Any]]]:
    """Every ``| Name | Value | … |`` row: name -> [(doc, value), …] (a name may appear in several docs)."""
    out: dict[str, list[tuple[str, Any]]] = {}
    for t in tables:
        if t.header[:2] == ("Name", "Value"):
            for row in t.rows:
                out.setdefault(name_of(row["Name"]), []).append((t.doc, literal(row["Value"])))
    return out


def parameters(tables: list[Table], doc: str) -> dict[str, Any]:
    """``| Parameter | Type | Default | … |`` rows of one document: name -> default (None for —)."""
    out: dict[str, Any] = {}
    for t in tables:
        if t.doc == doc and t.header[:3] == ("Parameter", "Type", "Default"):
            for row in t.rows:
                name = name_of(row["Parameter"])
                if name in out:
                    raise ValueError(f"{doc}: parameter {name} is in two tables")
                out[name] = literal(row["Default"]) if ticked(row["Default"]) else None
    return out

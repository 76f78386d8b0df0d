"""Developer sessions. ``nox`` alone runs the cheap ones (lint, typecheck, tests).

Every session installs torch==2.13.0 first: on these machines that pin takes the CPU wheel already
on disk, while a looser requirement would pull a multi-GB CUDA build.
"""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "venv"
nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.reuse_existing_virtualenvs = True

TORCH = "torch==2.13.0"


def _install(session: nox.Session, extras: str = "test") -> None:
    session.install(TORCH)
    session.install("-e", f".[{extras}]")


@nox.session
def lint(session: nox.Session) -> None:
    """ruff, and the layering contract (pyproject.toml [tool.importlinter]) with import-linter."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", "p2pshard", "tests", "benchmarks", "interop", "tools", "noxfile.py")
    session.run("ruff", "format", "--check", "p2pshard", "tests", "benchmarks", "interop", "tools")
    _install(session)
    session.run("lint-imports")


@nox.session
def simulate(session: nox.Session) -> None:
    """The round protocol simulator: 1,000 rounds of 16 nodes with churn, invariants printed."""
    _install(session)
    args = session.posargs or ["--nodes", "16", "--rounds", "1000", "--churn"]
    session.run("python", "-m", "tests.rounds.sim", *args)


@nox.session
def typecheck(session: nox.Session) -> None:
    _install(session, "dev")
    session.run("mypy")


@nox.session
def tests(session: nox.Session) -> None:
    _install(session)
    session.run("pytest", "-q", *session.posargs)


@nox.session
def proto(session: nox.Session) -> None:
    """Regenerate p2pshard/core/wire/*_pb2.py from specs/proto (or check with -- --check)."""
    _install(session, "dev")
    session.run("python", "tools/genproto.py", *session.posargs)


@nox.session
def vectors(session: nox.Session) -> None:
    """Regenerate the conformance vectors in specs/vectors (byte-identical on every run)."""
    _install(session)
    session.run("python", "-m", "p2pshard.conformance", "generate", *session.posargs)


@nox.session
def conformance(session: nox.Session) -> None:
    """Committed vectors match a fresh generation, p2pshard passes them, and the runner's own tests."""
    _install(session)
    session.run("python", "-m", "p2pshard.conformance", "generate", "--check")
    session.run("python", "-m", "p2pshard.conformance", "vectors")
    session.run("pytest", "-q", "tests/conformance")


@nox.session
def interop(session: nox.Session) -> None:
    """Against real go-libp2p (p2pd) and js-libp2p peers; needs Node and network access for setup."""
    _install(session)
    session.run("bash", "interop/setup.sh", external=True)
    session.run("pytest", "-q", "interop", "-p", "no:cacheprovider", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """The side-by-side benchmarks (pass -- --quick for the short versions)."""
    _install(session)
    for script in ("streams.py", "gossip.py", "training.py", "averaging.py"):
        session.run("python", f"benchmarks/{script}", *session.posargs)


@nox.session(default=False)
def fuzz(session: nox.Session) -> None:
    """Every decoder on the hostile path, 100,000 cases each (CI runs 1,000 in the tests session);
    ends with a table of cases and crashes per decoder. ``-- -k tensor`` picks decoders."""
    _install(session)
    session.run(
        "pytest",
        "tests/fuzz",
        "-q",
        "-p",
        "no:cacheprovider",
        "--timeout=0",  # one decoder's 100,000 cases take longer than the suite's 300 s per test
        "-o",
        "faulthandler_timeout=0",  # ... and than its 300 s before a stack dump
        *session.posargs,
        env={"P2PSHARD_FUZZ_EXAMPLES": "100000"},
    )

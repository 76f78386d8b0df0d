"""``p2pshard conformance``: run the spec's test vectors, regenerate them, or check a live node.

Registered by p2pshard's CLI as a subcommand group; until then ``python -m p2pshard.conformance``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.console import Console

from p2pshard.conformance.model import PRESET

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(context_settings=CONTEXT)
def conformance() -> None:
    """Check an implementation against the p2pshard specs (specs/).

    \b
      conformance vectors                      # p2pshard itself, in process
      conformance vectors --adapter "./my-adapter"   # any implementation, over JSON lines
      conformance live /ip4/…/tcp/…/p2p/…      # a running node, black-box
      conformance generate [--check]           # rewrite (or verify) specs/vectors
    """


def _vectors_dir(path: Path | None) -> Path:
    from p2pshard.conformance.suite import default_vectors_dir

    return path if path is not None else default_vectors_dir()


@conformance.command()
@click.option(
    "--adapter",
    "command",
    metavar="COMMAND",
    default=None,
    help="Command that answers one JSON request per stdin line (default: p2pshard in process).",
)
@click.option("--runner", "only", multiple=True, metavar="NAME", help="Run only this runner (repeatable).")
@click.option(
    "--vectors-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Root of the vectors (default: specs/vectors).",
)
@click.option("--timeout", default=30.0, show_default=True, help="Seconds to wait for each answer.")
def vectors(command: str | None, only: tuple[str, ...], vectors_dir: Path | None, timeout: float) -> None:
    """Run every test vector; exit 1 on any failure or any vector file left unread."""
    from p2pshard.conformance.adapters import Adapter, CommandAdapter, InProcessAdapter
    from p2pshard.conformance.report import print_suite
    from p2pshard.conformance.runners import RUNNERS
    from p2pshard.conformance.suite import run

    adapter: Adapter
    if command:
        try:
            adapter = CommandAdapter(command, timeout)
        except OSError as exc:
            raise click.ClickException(f"cannot start adapter {command!r}: {exc}") from exc
    else:
        adapter = InProcessAdapter(RUNNERS)
    try:
        result = run(_vectors_dir(vectors_dir), adapter, only)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--runner") from exc
    finally:
        adapter.close()
    print_suite(result, Console(), command or "p2pshard (in process)")
    sys.exit(0 if result.ok else 1)


@conformance.command()
@click.option(
    "--check", is_flag=True, help="Do not write: exit 1 if the committed vectors differ from a fresh run."
)
@click.option(
    "--vectors-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Root of the vectors (default: specs/vectors).",
)
def generate(check: bool, vectors_dir: Path | None) -> None:
    """Regenerate specs/vectors/minimal from the runners (byte-identical on every run)."""
    from p2pshard.conformance.suite import SelfCheckFailed, check_generated
    from p2pshard.conformance.suite import generate as write

    root = _vectors_dir(vectors_dir)
    try:
        if check:
            diffs = check_generated(root)
            if diffs:
                click.echo(
                    f"{len(diffs)} vector files differ from a fresh generation "
                    f"(run: python -m p2pshard.conformance generate):",
                    err=True,
                )
                for line in diffs[:50]:
                    click.echo(f"  {line}", err=True)
                sys.exit(1)
            click.echo(f"vectors under {root / PRESET} match a fresh generation")
            return
        n = write(root)
    except SelfCheckFailed as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"wrote {n} cases under {root / PRESET}")


@conformance.command()
@click.argument("address", metavar="MULTIADDR")
@click.option("--timeout", default=20.0, show_default=True, help="Seconds allowed per check.")
@click.option(
    "--gossip-wait",
    default=3.0,
    show_default=True,
    help="Seconds to watch for a forwarded invalid message before calling it not forwarded.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def live(address: str, timeout: float, gossip_wait: float, as_json: bool) -> None:
    """Dial a running node and check it black-box; exit 1 if any rule fails."""
    import logging

    from p2pshard.conformance.live import LiveOptions, print_live, run_live

    for name in ("libp2p", "multiaddr"):  # py-libp2p logs refused streams and closes as errors
        logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        results = run_live(address, LiveOptions(timeout_s=timeout, gossip_wait_s=gossip_wait))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="MULTIADDR") from exc
    print_live(results, Console(), address, as_json)
    sys.exit(0 if all(r.passed for r in results) else 1)

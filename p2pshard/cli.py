"""The ``p2pshard`` command line."""

from __future__ import annotations

import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

import click
import trio

import p2pshard
from p2pshard.config import DEFAULT_LISTEN, ConfigError, NodeConfig
from p2pshard.identity import Identity, KeyFileError
from p2pshard.net.host import AddressError, parse_peer_addr
from p2pshard.node import JoinError, Node, open_node

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _emit(event: str, as_json: bool, text: str, **fields: Any) -> None:
    if as_json:
        print(json.dumps({"event": event, **fields}), flush=True)
    else:
        print(text, flush=True)


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if verbose < 2:
        # py-libp2p logs a WARNING on every normal stream close (FACTS.md) and chatters on shutdown.
        for name in ("libp2p", "multiaddr"):
            logging.getLogger(name).setLevel(logging.CRITICAL)


@click.group(context_settings=CONTEXT)
@click.version_option(p2pshard.__version__, prog_name="p2pshard")
@click.option("-v", "--verbose", count=True, help="More logging (-vv includes py-libp2p's).")
def main(verbose: int) -> None:
    """p2pshard: train one model together over a peer-to-peer network.

    \b
    Start a network and join it from other shells or machines:
      p2pshard start                       # prints the address to join
      p2pshard join /ip4/…/tcp/…/p2p/…     # joins through that node
      p2pshard status /ip4/…/tcp/…/p2p/…   # asks a node how it is doing
    Or see a whole network on this machine:
      p2pshard devnet --nodes 4
    """
    _setup_logging(verbose)


@main.command()
@click.argument("path", type=click.Path(path_type=Path))
def keygen(path: Path) -> None:
    """Write a new secp256k1 node key to PATH (mode 0600) and print its peer id."""
    if path.exists():
        raise click.ClickException(f"{path} exists; refusing to overwrite a key")
    ident = Identity.generate()
    ident.save(path)
    click.echo(ident.peer_id.to_base58())


def _node_options(fn: Any) -> Any:
    options = [
        click.option(
            "--listen",
            "listen",
            multiple=True,
            metavar="MULTIADDR",
            help=f"Address to listen on (repeatable). Default {DEFAULT_LISTEN}; port 0 = any free port.",
        ),
        click.option(
            "--key",
            type=click.Path(path_type=Path),
            help="Node key file; made (mode 0600) and kept when absent. Default: a new key each run.",
        ),
        click.option(
            "--config",
            "config_file",
            type=click.Path(path_type=Path, exists=True, dir_okay=False),
            help="TOML file with node settings (flags and P2PSHARD_* variables override it).",
        ),
        click.option("--json", "as_json", is_flag=True, help="Print events as JSON lines."),
        click.option("--max-peers", type=int, help="Stop discovering new peers at this many connections."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _config(
    listen: tuple[str, ...],
    key: Path | None,
    config_file: Path | None,
    bootstrap: list[str] | None,
    max_peers: int | None,
) -> NodeConfig:
    try:
        return NodeConfig.load(
            config_file,
            listen=list(listen) or None,
            key=key,
            bootstrap=bootstrap,
            max_peers=max_peers,
        )
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc


@main.command()
@_node_options
def start(
    listen: tuple[str, ...],
    key: Path | None,
    config_file: Path | None,
    as_json: bool,
    max_peers: int | None,
) -> None:
    """Start the first node of a network and print the address others join through."""
    _run_node(_config(listen, key, config_file, None, max_peers), as_json)


@main.command()
@click.argument("bootstrap", nargs=-1, required=True, metavar="MULTIADDR...")
@_node_options
def join(
    bootstrap: tuple[str, ...],
    listen: tuple[str, ...],
    key: Path | None,
    config_file: Path | None,
    as_json: bool,
    max_peers: int | None,
) -> None:
    """Join a network through one or more of its nodes (full /ip4/…/tcp/…/p2p/… addresses)."""
    for addr in bootstrap:
        try:
            parse_peer_addr(addr)
        except AddressError as exc:
            raise click.BadParameter(str(exc), param_hint="MULTIADDR") from exc
    _run_node(_config(listen, key, config_file, list(bootstrap), max_peers), as_json)


def _run_node(config: NodeConfig, as_json: bool) -> None:
    try:
        trio.run(_serve_until_signal, config, as_json)
    except (JoinError, KeyFileError, AddressError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc


async def _serve_until_signal(config: NodeConfig, as_json: bool) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with open_node(config) as node:
            pid = node.peer_id.to_base58()
            _emit(
                "listening",
                as_json,
                f"p2pshard node {pid} listening on:\n  " + "\n  ".join(node.addrs),
                peer_id=pid,
                addrs=node.addrs,
            )
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_report_peers, node, as_json)
                async for signum in signals:
                    _emit(
                        "stopping",
                        as_json,
                        f"stopping ({signal.Signals(signum).name})",
                        signal=signal.Signals(signum).name,
                    )
                    nursery.cancel_scope.cancel()
                    break
    _emit("stopped", as_json, "stopped")


async def _report_peers(node: Node, as_json: bool) -> None:
    last: list[str] = []
    while True:
        peers = [p.to_base58() for p in node.peers()]
        if peers != last:
            _emit("peers", as_json, f"peers: {len(peers)}", count=len(peers), peers=peers)
            last = peers
        await trio.sleep(0.5)


@main.command()
@click.argument("address", metavar="MULTIADDR")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@click.option("--timeout", default=10.0, show_default=True, help="Seconds to wait for the answer.")
def status(address: str, as_json: bool, timeout: float) -> None:
    """Ask a running node for its peers, protocols, version and uptime."""
    from google.protobuf.json_format import MessageToDict

    from p2pshard.net.reqresp import RpcError
    from p2pshard.protocols.status import fetch_status

    try:
        info = parse_peer_addr(address)
    except AddressError as exc:
        raise click.BadParameter(str(exc), param_hint="MULTIADDR") from exc

    async def ask() -> dict[str, Any]:
        async with open_node(NodeConfig(), client_only=True) as node:
            await node.connector.connect(info)
            resp = await fetch_status(node.client, info.peer_id, timeout_s=timeout)
            return MessageToDict(
                resp, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
            )

    try:
        result = trio.run(ask)
    except (RpcError, OSError, Exception) as exc:
        raise click.ClickException(f"no status from {address}: {exc}") from exc
    if as_json:
        click.echo(json.dumps(result, indent=2, sort_keys=True))
        return
    from p2pshard.ui import print_status

    print_status(result)


@main.command()
@click.option("--nodes", default=4, show_default=True, type=click.IntRange(1, 32), help="How many nodes.")
@click.option(
    "--base-port",
    default=0,
    show_default=True,
    type=click.IntRange(0, 65000),
    help="First TCP port (0 = any free ports).",
)
@click.option("--json", "as_json", is_flag=True, help="Print events as JSON lines instead of a live table.")
@click.option(
    "--duration",
    type=float,
    default=None,
    help="Stop after this many seconds (default: until Ctrl-C).",
)
def devnet(nodes: int, base_port: int, as_json: bool, duration: float | None) -> None:
    """Start a local network of NODES nodes on 127.0.0.1 and show it until Ctrl-C."""
    from p2pshard.devnet import run_devnet

    sys.exit(run_devnet(nodes=nodes, base_port=base_port, as_json=as_json, duration=duration))


if __name__ == "__main__":
    main()

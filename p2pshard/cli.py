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
from p2pshard.protocols.training import RoundReport

COMPRESSIONS = ("none", "fp16", "bf16", "int8", "int4", "topk", "sparseloco", "lowrank")
"""Pseudo-gradient compressions (p2pshard.engine.compression.KINDS; a test keeps the two equal)."""

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
        click.option(
            "--train/--no-train",
            default=True,
            show_default=True,
            help="Train the network's model (or only relay, serve and discover).",
        ),
        click.option(
            "--preset",
            type=click.Choice(["micro", "tiny", "small", "base"]),
            help="Model size (all nodes of a network must agree). Default: tiny.",
        ),
        click.option(
            "--rounds", type=click.IntRange(0), help="Stop after this many rounds (0 = run until stopped)."
        ),
        click.option(
            "--round-seconds", type=float, help="Length of one round (the first node decides). Default 12."
        ),
        click.option(
            "--inner-steps", type=click.IntRange(1), help="Local optimizer steps per round. Default 30."
        ),
        click.option(
            "--compression",
            type=click.Choice(list(COMPRESSIONS)),
            help="How pseudo-gradients are compressed on the wire (all nodes of a network must agree; "
            "it is part of the network id). Default: sparseloco, ~100x fewer bytes than fp32.",
        ),
        click.option(
            "--aggregation",
            type=click.Choice(["mean", "trimmed_mean", "median", "krum", "multi_krum", "centered_clip"]),
            help="Robust aggregation rule (part of the network id). Default: mean. With sparse "
            "compression (the default) prefer centered_clip or multi_krum: krum applies one node's few "
            "coordinates per round and median/trimmed_mean count unsent ones as zeros "
            "(benchmarks/training.py, table c).",
        ),
        click.option(
            "--snapshot-dir",
            type=click.Path(path_type=Path, file_okay=False),
            help="Keep hot snapshots here and resume from the newest on restart.",
        ),
        click.option(
            "--genesis",
            type=click.Path(path_type=Path, exists=True, file_okay=False),
            help="Train on a dataset made by `p2pshard genesis build` (default: the embedded corpus).",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _config(config_file: Path | None, bootstrap: list[str] | None, **flags: Any) -> NodeConfig:
    renames = {"round_seconds": "round_s"}
    values = {renames.get(k, k): v for k, v in flags.items() if k not in ("as_json",)}
    values["listen"] = list(values.get("listen") or ()) or None
    try:
        return NodeConfig.load(config_file, bootstrap=bootstrap, **values)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc


@main.command()
@_node_options
def start(config_file: Path | None, as_json: bool, **flags: Any) -> None:
    """Start the first node of a network and print the address others join through."""
    _run_node(_config(config_file, None, **flags), as_json)


@main.command()
@click.argument("bootstrap", nargs=-1, required=True, metavar="MULTIADDR...")
@_node_options
def join(bootstrap: tuple[str, ...], config_file: Path | None, as_json: bool, **flags: Any) -> None:
    """Join a network through one or more of its nodes (full /ip4/…/tcp/…/p2p/… addresses)."""
    for addr in bootstrap:
        try:
            parse_peer_addr(addr)
        except AddressError as exc:
            raise click.BadParameter(str(exc), param_hint="MULTIADDR") from exc
    _run_node(_config(config_file, list(bootstrap), **flags), as_json)


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
                f"p2pshard node {pid} (network {node.config.network_id}) listening on:\n  "
                + "\n  ".join(node.addrs),
                peer_id=pid,
                addrs=node.addrs,
                network_id=node.config.network_id,
            )
            node.round_listeners.append(lambda report: _emit_round(report, as_json))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_report_peers, node, as_json)
                if node.trainer is not None and config.rounds:
                    nursery.start_soon(_stop_when_trained, node, nursery.cancel_scope, as_json)
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


def _emit_round(report: RoundReport, as_json: bool) -> None:
    loss = f"{report.loss:.4f}" if report.loss is not None else "-"
    text = (
        f"round {report.round:>4}  loss {loss}  model {report.model_hash.hex()[:12]}  "
        f"contributors {report.contributors}{'' if report.contributed else ' (not us)'}  "
        f"{report.tokens_per_s:,.0f} tok/s  "
        f"sent {report.bytes_sent / 1e6:.2f} MB  received {report.bytes_received / 1e6:.2f} MB"
    )
    _emit(
        "round",
        as_json,
        text,
        round=report.round,
        loss=report.loss,
        model_hash=report.model_hash.hex(),
        tokens=report.tokens,
        contributors=report.contributors,
        contributed=report.contributed,
        rejected=report.rejected,
        tokens_per_s=report.tokens_per_s,
        bytes_sent=report.bytes_sent,
        bytes_received=report.bytes_received,
    )


async def _stop_when_trained(node: Node, scope: trio.CancelScope, as_json: bool) -> None:
    assert node.trainer is not None
    await node.trainer.done.wait()
    _emit(
        "trained",
        as_json,
        f"finished {node.config.rounds} rounds",
        rounds=node.config.rounds,
        model_hash=node.trainer.engine.model_hash().hex(),
    )
    await trio.sleep(node.config.round_s * 0.3)  # keep serving our last payload to slower peers
    scope.cancel()


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
        result = _hex_hashes(trio.run(ask))
    except (RpcError, OSError, Exception) as exc:
        raise click.ClickException(f"no status from {address}: {exc}") from exc
    if as_json:
        click.echo(json.dumps(result, indent=2, sort_keys=True))
        return
    from p2pshard.ui import print_status

    print_status(result)
    _print_limits(result)


def _print_limits(status: dict[str, Any]) -> None:
    """What the node's resource manager holds of each resource, and what it refused (by reason)."""
    used = [
        f"{r['resource']} {int(r.get('used', 0))}/{int(r['limit']) if int(r['limit']) < 1 << 62 else '-'}"
        for r in status.get("resources", [])
    ]
    if used:
        click.echo("resources: " + ", ".join(used))
    refused = {
        k.removeprefix("limits.refused."): v
        for k, v in status.get("counters", {}).items()
        if k.startswith("limits.refused.")
    }
    if refused:
        click.echo("refused: " + ", ".join(f"{k}={v}" for k, v in sorted(refused.items())))


def _hex_hashes(status: dict[str, Any]) -> dict[str, Any]:
    """protobuf's JSON form writes bytes as base64; a model hash reads better as hex."""
    import base64

    training = status.get("training") or {}
    if training.get("model_hash"):
        training["model_hash"] = base64.b64decode(training["model_hash"]).hex()
    return status


@main.command()
@click.option("--nodes", default=4, show_default=True, type=click.IntRange(1, 32), help="How many nodes.")
@click.option(
    "--rounds",
    default=20,
    show_default=True,
    type=click.IntRange(0),
    help="Train this many rounds, then stop and summarise (0 = until Ctrl-C).",
)
@click.option("--train/--no-train", default=True, show_default=True, help="Train, or only form the network.")
@click.option(
    "--preset", type=click.Choice(["micro", "tiny", "small", "base"]), default="tiny", show_default=True
)
@click.option("--round-seconds", type=float, help="Length of one round (default 12 s).")
@click.option("--inner-steps", type=click.IntRange(1), help="Local optimizer steps per round (default 30).")
@click.option("--compression", type=click.Choice(list(COMPRESSIONS)))
@click.option(
    "--aggregation",
    type=click.Choice(["mean", "trimmed_mean", "median", "krum", "multi_krum", "centered_clip"]),
)
@click.option(
    "--base-port",
    default=0,
    show_default=True,
    type=click.IntRange(0, 65000),
    help="First TCP port (0 = any free ports).",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("devnet-out"),
    show_default=True,
    help="Where the summary and the loss plot go.",
)
@click.option("--json", "as_json", is_flag=True, help="Print events as JSON lines instead of a live table.")
@click.option(
    "--duration", type=float, default=None, help="Stop after this many seconds (default: until done)."
)
def devnet(
    nodes: int,
    rounds: int,
    train: bool,
    preset: str,
    round_seconds: float | None,
    inner_steps: int | None,
    compression: str | None,
    aggregation: str | None,
    base_port: int,
    out: Path,
    as_json: bool,
    duration: float | None,
) -> None:
    """Start a local network of NODES nodes on 127.0.0.1 that trains together, and show it.

    Each node is its own process. With --rounds N (default 20) the devnet ends after N rounds
    with a summary table and a plot of loss against tokens (OUT/loss.png); Ctrl-C stops it early.
    """
    from p2pshard.devnet import run_devnet

    node_args = ["--train" if train else "--no-train", "--preset", preset]
    if train:
        node_args += ["--rounds", str(rounds)]
    for flag, value in (
        ("--round-seconds", round_seconds),
        ("--inner-steps", inner_steps),
        ("--compression", compression),
        ("--aggregation", aggregation),
    ):
        if value is not None:
            node_args += [flag, str(value)]
    sys.exit(
        run_devnet(
            nodes=nodes,
            base_port=base_port,
            as_json=as_json,
            duration=duration,
            rounds=rounds if train else 0,
            node_args=node_args,
            out=out,
        )
    )


@main.group()
def genesis() -> None:
    """Datasets a network trains on: a content-addressed manifest (its digest is part of the network id)."""


@genesis.command("build")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path, exists=True))
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="Folder to write manifest.json and shards/ into.",
)
@click.option("--name", default="custom", show_default=True, help="A name recorded in the manifest.")
@click.option(
    "--shard-size", default=1 << 16, show_default=True, type=click.IntRange(1024), help="Bytes per shard."
)
def genesis_build(paths: tuple[Path, ...], out: Path, name: str, shard_size: int) -> None:
    """Build a genesis from .txt and .jsonl ("text" field) files or folders of them.

    Train on it with `p2pshard start --genesis OUT`. Other nodes need only OUT/manifest.json:
    the shards they lack are fetched from peers and verified by hash.
    """
    from p2pshard.engine.genesis import GenesisError, build_genesis

    try:
        built = build_genesis(paths, name=name, shard_size=shard_size)
    except (GenesisError, ValueError, OSError) as exc:
        raise click.ClickException(f"cannot build a genesis: {exc}") from exc
    built.save(out)
    m = built.manifest
    click.echo(
        f"manifest {m.digest}  ({len(m.train_shards)} training + {len(m.eval_shards)} held-out shards)"
        f"\nwritten to {out}\n(the network id also covers the preset, compression and aggregation; a "
        "training node logs it at start)"
    )


def _register_conformance() -> None:
    from p2pshard.conformance.cli import conformance

    main.add_command(conformance)


_register_conformance()


if __name__ == "__main__":
    main()

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
from p2pshard.events import EventCallback, NodeEvent
from p2pshard.identity import Identity, KeyFileError
from p2pshard.net.host import AddressError, parse_peer_addr
from p2pshard.node import ConnectError, JoinError, ListenError, Node, open_node

COMPRESSIONS = ("none", "fp16", "bf16", "int8", "int4", "topk", "sparseloco", "sparseloco-12bit", "lowrank")
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
            "--data-dir",
            type=click.Path(path_type=Path, file_okay=False),
            help="One folder for this node's key (node.key), snapshots (snapshots/) and settings "
            "(config.toml, read when present); made when absent. A restart with the same folder "
            "keeps the peer id and resumes from the newest snapshot.",
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
        click.option(
            "--layers",
            "serve_layers",
            metavar="A:B",
            help="Serve layers [A, B) of the model for pipeline inference (0 = the embedding, 1..n the "
            "blocks, n+1 the head; tiny: 0:6 is the whole model). Default: serve none.",
        ),
        click.option(
            "--metrics",
            metavar="HOST:PORT",
            help="Serve Prometheus metrics (/metrics) and a live dashboard page (/) here, e.g. "
            "127.0.0.1:9464 (port 0 = any free port). Default: no such port.",
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
    """Start the first node of a network and print the address others join through.

    It prints its own address at once, then each step (the model built, the round schedule,
    each round). Ctrl-C or SIGTERM writes a snapshot (with --data-dir or --snapshot-dir) and
    stops within 10 s; Ctrl-C exits 130.
    """
    _run_node(_config(config_file, None, **flags), as_json)


@main.command()
@click.argument("bootstrap", nargs=-1, required=True, metavar="MULTIADDR...")
@_node_options
def join(bootstrap: tuple[str, ...], config_file: Path | None, as_json: bool, **flags: Any) -> None:
    """Join a network through one or more of its nodes (full /ip4/…/tcp/…/p2p/… addresses).

    It prints its own address at once, then each step of joining as it happens: the bootstrap
    dial, the model built, the network id agreed, peers found, the round schedule, the
    checkpoint download, the first round (--json: one JSON object a line).
    """
    for addr in bootstrap:
        try:
            parse_peer_addr(addr)
        except AddressError as exc:
            raise click.BadParameter(str(exc), param_hint="MULTIADDR") from exc
    _run_node(_config(config_file, list(bootstrap), **flags), as_json)


@main.command()
@click.argument("bootstrap", nargs=-1, metavar="[MULTIADDR...]")
@_node_options
def serve(bootstrap: tuple[str, ...], config_file: Path | None, as_json: bool, **flags: Any) -> None:
    """Serve a layer range (--layers A:B) for pipeline inference, without training.

    Clients run it with `p2pshard infer "prompt" --via <this node's address> ...`, given servers
    whose ranges cover the model's layers in order.
    """
    if not flags.get("serve_layers"):
        raise click.UsageError("serve needs --layers A:B (e.g. --layers 0:3)")
    flags["train"] = False
    _run_node(_config(config_file, list(bootstrap) or None, **flags), as_json)


@main.command()
@click.argument("prompt")
@click.option("--via", multiple=True, metavar="MULTIADDR", help="A server to use (repeatable).")
@click.option(
    "--bootstrap",
    multiple=True,
    metavar="MULTIADDR",
    help="Join the network through this node and find its servers in the DHT (repeatable).",
)
@click.option(
    "--max-new-tokens", default=32, show_default=True, type=click.IntRange(1), help="Tokens to generate."
)
@click.option(
    "--no-cache", is_flag=True, help="Send the whole sequence every step (no KV cache on the servers)."
)
@click.option("--timeout", default=30.0, show_default=True, help="Seconds one forward may take.")
def infer(
    prompt: str,
    via: tuple[str, ...],
    bootstrap: tuple[str, ...],
    max_new_tokens: int,
    no_cache: bool,
    timeout: float,
) -> None:
    """Generate text from PROMPT through a chain of servers covering the model (greedy, byte tokens).

    The chain is planned from what each server says it serves: the --via servers, and with
    --bootstrap the servers of the network found in the DHT. The servers are listed on stderr,
    the prompt and the generated text stream to stdout as tokens arrive.
    """
    import codecs

    from p2pshard.core.pipeline import ChainError, ForwardRejected
    from p2pshard.net.reqresp import RpcError

    if not via and not bootstrap:
        raise click.UsageError("infer needs servers: --via <server address> or --bootstrap <network node>")
    for hint, addrs in (("--via", via), ("--bootstrap", bootstrap)):
        for addr in addrs:
            try:
                parse_peer_addr(addr)
            except AddressError as exc:
                raise click.BadParameter(str(exc), param_hint=hint) from exc
    tokens = list(prompt.encode())
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def show(token: int) -> None:
        click.echo(decoder.decode(bytes([token])), nl=False)
        sys.stdout.flush()

    async def run() -> None:
        async with open_node(NodeConfig(bootstrap=list(bootstrap)), client_only=not bootstrap) as node:
            chain = await node.chain(list(via), timeout_s=timeout)
            for stage in chain.stages:
                i = stage.info
                click.echo(
                    f"layers {i.layer_start}:{i.layer_end} of {i.total_layers} <- {stage.peer}", err=True
                )
            click.echo(prompt, nl=False)
            await chain.generate(tokens, max_new_tokens, use_cache=not no_cache, on_token=show)
            click.echo(decoder.decode(b"", final=True))

    try:
        trio.run(run)
    except ChainError as exc:
        raise click.ClickException(f"no chain of servers covers the model: {exc}") from exc
    except (ConnectError, JoinError, ForwardRejected, RpcError) as exc:
        raise click.ClickException(str(exc)) from exc


EXIT_INTERRUPTED = 130
"""Exit status after Ctrl-C (128 + SIGINT), as shells expect; SIGTERM (a service manager's stop)
exits 0 after the same clean shutdown."""

STOP_GRACE_S = 8.0
"""Time the shutdown (snapshot included) may take before the node is cancelled: within 10 s."""


def _run_node(config: NodeConfig, as_json: bool) -> None:
    expected = (JoinError, ListenError, KeyFileError, AddressError, OSError, ConfigError)
    try:
        stopped_by = trio.run(_serve_until_signal, config, as_json)
    except expected as exc:
        raise click.ClickException(str(exc)) from exc
    except BaseExceptionGroup as group:  # raised from inside the signal watcher's nursery
        leaves = _leaves(group)
        if len(leaves) == 1 and isinstance(leaves[0], expected):
            raise click.ClickException(str(leaves[0])) from None
        raise
    if stopped_by == signal.SIGINT:
        sys.exit(EXIT_INTERRUPTED)


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for e in exc.exceptions for leaf in _leaves(e)]
    return [exc]


def _printer(as_json: bool) -> EventCallback:
    def show(event: NodeEvent) -> None:
        if as_json:
            print(json.dumps(event.to_json()), flush=True)
        else:
            print(event.text, flush=True)

    return show


async def _serve_until_signal(config: NodeConfig, as_json: bool) -> int | None:
    """Run the node until SIGINT/SIGTERM (returned, after a snapshot when the node keeps them)
    or until its last round (None). A signal while the node is still starting stops it at once;
    a second signal stops it without waiting for the snapshot."""
    signalled: list[int] = []
    started: list[Node] = []
    stop = trio.Event()
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as outer:
            with trio.CancelScope() as node_scope:

                async def watch_signals() -> None:
                    async for signum in signals:
                        signalled.append(signum)
                        name = signal.Signals(signum).name
                        _emit("stopping", as_json, f"stopping ({name})", signal=name)
                        stop.set()
                        if not started or len(signalled) > 1:
                            node_scope.cancel()

                outer.start_soon(watch_signals)
                async with open_node(config, on_event=_printer(as_json)) as node:
                    started.append(node)
                    node.emit(
                        "ready",
                        f"ready: network {node.config.network_id}",
                        peer_id=node.peer_id.to_base58(),
                        addrs=node.addrs,
                        network_id=node.config.network_id,
                    )
                    async with trio.open_nursery() as nursery:
                        if node.trainer is not None and config.rounds:
                            nursery.start_soon(_stop_when_trained, node, stop, as_json)
                        await stop.wait()
                        nursery.cancel_scope.cancel()
                    if signalled:
                        with trio.move_on_after(STOP_GRACE_S):
                            await _snapshot_before_exit(node, as_json)
            outer.cancel_scope.cancel()
    _emit("stopped", as_json, "stopped")
    return signalled[0] if signalled else None


async def _snapshot_before_exit(node: Node, as_json: bool) -> None:
    try:
        path = await node.write_snapshot()
    except Exception as exc:  # a failing disk must not keep the node from stopping
        _emit("snapshot_failed", as_json, f"could not write a snapshot: {exc}", reason=str(exc))
        return
    if path is not None:
        _emit("snapshot", as_json, f"snapshot written: {path}", path=path)


async def _stop_when_trained(node: Node, stop: trio.Event, as_json: bool) -> None:
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
    stop.set()


@main.command()
@click.argument("address", metavar="MULTIADDR")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@click.option("--timeout", default=10.0, show_default=True, help="Seconds to wait for the answer.")
def status(address: str, as_json: bool, timeout: float) -> None:
    """Ask a running node for its peers, protocols, version and uptime."""
    from p2pshard.net.reqresp import RpcError
    from p2pshard.protocols.status import fetch_status

    try:
        info = parse_peer_addr(address)
    except AddressError as exc:
        raise click.BadParameter(str(exc), param_hint="MULTIADDR") from exc

    async def ask() -> dict[str, Any]:
        async with open_node(NodeConfig(), client_only=True) as node:
            await node.connect(info)
            resp = await fetch_status(node.client, info.peer_id, timeout_s=timeout)
            return status_to_dict(resp)

    try:
        result = trio.run(ask)
    except ConnectError as exc:
        raise click.ClickException(str(exc)) from exc
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


def status_to_dict(resp: Any) -> dict[str, Any]:
    """A status answer as JSON-ready data: numbers as numbers (protobuf's JSON form writes 64-bit
    integers as strings, ``"round": "8"``), hashes as hex (it writes bytes as base64)."""
    from google.protobuf.json_format import MessageToDict

    data = MessageToDict(resp, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    typed: dict[str, Any] = _typed(data, resp.DESCRIPTOR)
    return typed


def _hex_hashes(status: dict[str, Any]) -> dict[str, Any]:
    """protobuf's JSON form writes bytes as base64; a model hash reads better as hex (kept for
    callers holding MessageToDict's output; :func:`status_to_dict` does this and the numbers)."""
    import base64

    training = status.get("training") or {}
    if training.get("model_hash"):
        training["model_hash"] = base64.b64decode(training["model_hash"]).hex()
    return status


def _typed(data: Any, descriptor: Any) -> Any:
    import base64

    from google.protobuf.descriptor import FieldDescriptor as F

    ints = {F.TYPE_INT64, F.TYPE_UINT64, F.TYPE_SINT64, F.TYPE_FIXED64, F.TYPE_SFIXED64}

    def value(field: Any, v: Any) -> Any:
        if field.type in ints:
            return int(v)
        if field.type == F.TYPE_BYTES:
            return base64.b64decode(v).hex()
        if field.type == F.TYPE_MESSAGE:
            return _typed(v, field.message_type)
        return v

    out = dict(data)
    for field in descriptor.fields:
        if field.name not in out:
            continue
        v = out[field.name]
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            out[field.name] = {k: value(value_field, x) for k, x in v.items()}
        elif field.label == F.LABEL_REPEATED:
            out[field.name] = [value(field, x) for x in v]
        else:
            out[field.name] = value(field, v)
    return out


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

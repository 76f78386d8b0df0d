"""deploy/: the systemd unit's and the container's command lines are ones p2pshard accepts."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import click

from p2pshard.cli import main

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def _parses(args: list[str]) -> click.Context:
    """Parse ``args`` as the command line would (options checked, nothing run)."""
    ctx = main.make_context("p2pshard", list(args), resilient_parsing=False)
    command = main.get_command(ctx, args[0])
    assert command is not None, args
    return command.make_context(args[0], list(args[1:]), parent=ctx)


def test_systemd_unit_runs_a_node_with_a_data_dir_and_stops_on_sigterm() -> None:
    unit = (DEPLOY / "p2pshard.service").read_text()
    exec_start = re.search(r"^ExecStart=(.*)$", unit, re.M)
    assert exec_start is not None
    argv = shlex.split(exec_start.group(1))
    assert argv[0].endswith("/p2pshard")
    ctx = _parses(argv[1:])
    assert ctx.params["data_dir"] == Path("/var/lib/p2pshard")
    assert ctx.params["metrics"].startswith("127.0.0.1:")  # no port published by surprise
    assert "KillSignal=SIGTERM" in unit and int(re.search(r"TimeoutStopSec=(\d+)", unit)[1]) > 10  # type: ignore[index]


def test_container_runs_a_node_with_its_state_in_a_volume() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    cmd = json.loads(re.search(r"^CMD (.*)$", dockerfile, re.M)[1])  # type: ignore[index]
    ctx = _parses(cmd)
    assert ctx.params["data_dir"] == Path("/var/lib/p2pshard")
    assert "VOLUME /var/lib/p2pshard" in dockerfile and "STOPSIGNAL SIGTERM" in dockerfile
    assert "download.pytorch.org/whl/cpu" in dockerfile  # not PyPI's multi-GB CUDA build

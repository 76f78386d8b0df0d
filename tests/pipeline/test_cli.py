"""`p2pshard serve --layers` and `p2pshard infer` as a user runs them: real processes on
127.0.0.1, each ended by its PID; the streamed text is the local model's greedy text."""

from __future__ import annotations

import subprocess

import pytest
from click.testing import CliRunner

from p2pshard.cli import main
from p2pshard.config import ConfigError, NodeConfig
from p2pshard.engine.inference import local_generate
from p2pshard.engine.model import PRESETS
from p2pshard.node import make_stage
from tests.util import CLI, Proc

pytestmark = pytest.mark.slow


def _serving(p: Proc) -> str:
    event = p.wait_for(lambda e: e.get("event") == "ready", timeout=60)
    return str(event["addrs"][0])


def test_serve_two_ranges_and_infer_through_them(procs: list[Proc]) -> None:
    head = Proc("serve", "--json", "--preset", "micro", "--layers", "0:2")
    procs.append(head)
    first = _serving(head)
    tail = Proc("serve", first, "--json", "--preset", "micro", "--layers", "2:4")  # joins through head
    procs.append(tail)
    _serving(tail)
    prompt = "Hello"
    # no server named: both are found in the DHT through the first
    out = subprocess.run(
        [*CLI, "infer", prompt, "--max-new-tokens", "8", "--bootstrap", first],
        capture_output=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    expected = bytes(local_generate(PRESETS["micro"], 0, list(prompt.encode()), 8))
    assert out.stdout.rstrip(b"\n") == prompt.encode() + expected.decode(errors="replace").encode()
    err = out.stderr.decode()
    assert "layers 0:2 of 4" in err and "layers 2:4 of 4" in err

    gap = subprocess.run([*CLI, "infer", prompt, "--via", first], capture_output=True, text=True, timeout=60)
    assert gap.returncode == 1
    assert "no chain of servers covers the model" in gap.stderr and "starting at layer 2" in gap.stderr
    for p in procs:
        code, err = p.stop()
        assert code == 130 and "Traceback" not in err, err


def test_serve_without_layers_or_with_a_range_past_the_model_is_a_clear_error() -> None:
    out = CliRunner().invoke(main, ["serve"])
    assert out.exit_code == 2 and "--layers" in out.output
    out = CliRunner().invoke(main, ["infer", "hi"])
    assert out.exit_code == 2 and "--via" in out.output and "--bootstrap" in out.output
    with pytest.raises(ConfigError, match="micro has 4 layers"):
        make_stage(NodeConfig(preset="micro", serve_layers="2:9"))
    with pytest.raises(ConfigError, match="A:B"):
        NodeConfig(serve_layers="3:3")

"""--metrics: Prometheus metrics a scraper parses, changing across a round, and the dashboard's
files and JSON on the same port (real processes on 127.0.0.1)."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.util import Proc

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("training_processes")]  # one at a time

TRAIN = ["--preset", "micro", "--round-seconds", "3", "--inner-steps", "2", "--metrics", "127.0.0.1:0"]
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def get(url: str) -> tuple[str, bytes]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.headers["Content-Type"], resp.read()


def scrape(url: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Every sample of ``url``'s metrics, by family name and labels, as prometheus-client parses them."""
    _, body = get(url)
    families: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(body.decode()):
        samples = families.setdefault(family.name, {})
        for sample in family.samples:
            samples[(("__name__", sample.name), *sorted(sample.labels.items()))] = sample.value
    return families


def total(families: dict[str, Any], name: str, **labels: str) -> float:
    return sum(
        v for key, v in families.get(name, {}).items() if all((k, lv) in key for k, lv in labels.items())
    )


def test_metrics_are_prometheus_text_and_change_across_a_round(procs: list[Proc]) -> None:
    first = Proc("start", "--json", *TRAIN, env=ONE_THREAD)
    procs.append(first)
    boot = first.wait_for(lambda e: e["event"] == "ready", 60)["addrs"][0]
    joiner = Proc("join", boot, "--json", *TRAIN, env=ONE_THREAD)
    procs.append(joiner)
    metrics = joiner.wait_for(lambda e: e["event"] == "metrics", 30)
    url = str(metrics["metrics"])
    assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics")

    before = joiner.wait_for(lambda e: e["event"] == "round", 90)
    at_round = scrape(url)
    after = joiner.wait_for(lambda e: e["event"] == "round" and e["round"] > before["round"], 30)
    next_round = scrape(url)

    families = {
        "gossip": ["p2pshard_gossip_messages", "p2pshard_gossip_duplicates", "p2pshard_gossip_rejections",
                   "p2pshard_gossip_mesh_peers", "p2pshard_gossip_peer_score", "p2pshard_gossip_dropped"],
        "streams": ["p2pshard_stream_bytes", "p2pshard_streams_open", "p2pshard_stream_errors"],
        "dht": ["p2pshard_dht_routing_table_peers", "p2pshard_dht_lookups"],
        "rounds": ["p2pshard_round", "p2pshard_round_loss", "p2pshard_round_contributors",
                   "p2pshard_round_bytes", "p2pshard_round_tokens_per_second", "p2pshard_rounds"],
    }  # fmt: skip
    for group, names in families.items():
        missing = [n for n in names if n not in next_round]
        assert not missing, f"{group} families missing: {missing}"

    assert total(next_round, "p2pshard_round") == after["round"] > total(at_round, "p2pshard_round")
    assert total(next_round, "p2pshard_rounds") > total(at_round, "p2pshard_rounds")
    assert total(next_round, "p2pshard_gossip_messages", direction="in") > total(
        at_round, "p2pshard_gossip_messages", direction="in"
    )  # the other node's announcement of the new round
    assert total(next_round, "p2pshard_stream_bytes", direction="in") > total(
        at_round, "p2pshard_stream_bytes", direction="in"
    )  # its update, fetched
    assert total(next_round, "p2pshard_dht_routing_table_peers") >= 1
    assert total(next_round, "p2pshard_gossip_mesh_peers") >= 1
    assert total(next_round, "p2pshard_round_loss") == pytest.approx(after["loss"])

    # the Grafana dashboard in deploy/ asks only for families the node exports
    grafana = json.loads((Path(__file__).parents[1] / "deploy" / "grafana-dashboard.json").read_text())
    asked = {
        re.sub(r"_(total|info)$", "", name)
        for panel in grafana["panels"]
        for target in panel["targets"]
        for name in re.findall(r"p2pshard_\w+", target["expr"])
    }
    assert asked and not asked - set(next_round), sorted(asked - set(next_round))

    # the dashboard on the same port: its page, script and the JSON it polls
    base = url.removesuffix("metrics")
    kind, page = get(base)
    assert kind.startswith("text/html") and b'src="/dashboard.js"' in page
    assert b"http" not in page.lower()  # nothing fetched from elsewhere (no CDN)
    kind, script = get(base + "dashboard.js")
    assert kind.startswith("text/javascript") and b"/api/status" in script
    _, body = get(base + "api/status")
    status = json.loads(body)
    assert status["peer_id"] == joiner.seen[0]["peer_id"]
    assert status["last_round"]["round"] >= after["round"]
    assert [p["peer_id"] for p in status["peers"]] == [boot.split("/p2p/")[1]]

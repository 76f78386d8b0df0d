from __future__ import annotations

from pathlib import Path

import pytest

from p2pshard.config import ConfigError, NodeConfig


def test_precedence_file_env_flags(tmp_path: Path) -> None:
    cfg_file = tmp_path / "node.toml"
    cfg_file.write_text('listen = ["/ip4/127.0.0.1/tcp/4001"]\nmax_peers = 7\nnetwork_id = "file"\n')
    env = {"P2PSHARD_MAX_PEERS": "9", "P2PSHARD_NETWORK_ID": "env"}
    cfg = NodeConfig.load(cfg_file, env=env, network_id="flag", listen=None)
    assert cfg.listen == ["/ip4/127.0.0.1/tcp/4001"]  # from the file; the flag was not given
    assert cfg.max_peers == 9  # env beats file
    assert cfg.network_id == "flag"  # flag beats env


def test_env_lists_are_comma_separated() -> None:
    cfg = NodeConfig.load(env={"P2PSHARD_MUXERS": "mplex, yamux"})
    assert cfg.muxers == ["mplex", "yamux"]


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"P2PSHARD_MAX_PEERS": "many"}, "max_peers"),
        ({"P2PSHARD_MUXERS": "quic"}, "muxers"),
        ({"P2PSHARD_MAX_PEERS": "0"}, "max_peers"),
        ({"P2PSHARD_ROUND_S": "0.3"}, "round_s must be at least 0.5 s"),
    ],
)
def test_bad_values_are_clear_errors(env: dict[str, str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        NodeConfig.load(env=env)


def test_unknown_file_key(tmp_path: Path) -> None:
    cfg_file = tmp_path / "node.toml"
    cfg_file.write_text("colour = 'blue'\n")
    with pytest.raises(ConfigError, match="colour"):
        NodeConfig.load(cfg_file, env={})

"""The embedding API's page, generated from its docstrings with pdoc (as CI builds it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

MODULES = ["p2pshard", "p2pshard.node", "p2pshard.config", "p2pshard.events"]
"""What ``python -m pdoc p2pshard p2pshard.node p2pshard.config p2pshard.events -o DIR`` documents."""


def test_api_page_builds_and_documents_the_embedding_api(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "pdoc", *MODULES, "-o", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    node = (tmp_path / "p2pshard" / "node.html").read_text()
    for name in ("open_node", "connect", "put_blob", "fetch_blob", "write_snapshot", "ConnectError"):
        assert f'id="{name}"' in node or f'id="Node.{name}"' in node, name
    assert "await b.connect(a.addrs[0])" in node  # Node's example
    assert "BlobService" in node and "&#39;BlobService&#39;" not in node  # real types, not strings
    config = (tmp_path / "p2pshard" / "config.html").read_text()
    for field in ("listen", "bootstrap", "data_dir", "metrics", "preset"):
        assert f'id="NodeConfig.{field}"' in config, field
    assert "no such port is opened" in config  # a field's own docstring
    assert "on_event" in (tmp_path / "p2pshard" / "events.html").read_text()

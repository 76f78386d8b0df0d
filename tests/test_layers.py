"""The layering contract (pyproject.toml, [tool.importlinter]): core -> net -> protocols -> engine
-> node -> cli, each importing only the layers below it; the sans-IO core imports no trio, libp2p or
torch; only the engine imports torch. import-linter reads the real import graph, lazy and
TYPE_CHECKING imports included."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_layering_contract_holds() -> None:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert exe is not None, "import-linter is not installed (pip install -e '.[test]')"
    result = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from tests.util import Proc

# py-libp2p logs a WARNING on every normal stream close; keep test output readable.
logging.getLogger("libp2p").setLevel(logging.CRITICAL)


@pytest.fixture
def anyio_backend() -> str:
    return "trio"


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    """Processes a test starts; each is ended by its PID when the test is over."""
    started: list[Proc] = []
    yield started
    for p in started:  # all at once: each node takes a second or two to shut down
        p.interrupt()
    for p in started:
        p.stop()

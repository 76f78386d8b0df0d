from __future__ import annotations

import logging

import pytest

# py-libp2p logs a WARNING on every normal stream close; keep test output readable.
logging.getLogger("libp2p").setLevel(logging.CRITICAL)


@pytest.fixture
def anyio_backend() -> str:
    return "trio"

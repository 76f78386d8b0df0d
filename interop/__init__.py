"""Interop tests: p2pshard's Python side against real go-libp2p and js-libp2p peers."""

import pytest

# The scenarios hold the assertions; let pytest show their operands on failure.
pytest.register_assert_rewrite("interop.scenarios")

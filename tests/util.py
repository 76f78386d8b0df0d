"""Small helpers shared by tests."""

from __future__ import annotations

from collections.abc import Callable

import trio


async def eventually(predicate: Callable[[], bool], within_s: float = 5.0, interval: float = 0.01) -> None:
    """Wait until ``predicate()`` holds, polling state we have no event for; fail after ``within_s``."""
    with trio.fail_after(within_s):
        while not predicate():  # noqa: ASYNC110 - the state polled here has no event to wait on
            await trio.sleep(interval)

"""The clock nodes share, read through trio's clock so that tests can drive it.

Rounds are a function of Unix time (every node computes the same windows from its own clock), so
the network's time is wall-clock seconds. Reading ``time.time()`` in protocol code would put that
time out of reach of ``trio.testing.MockClock``; a :class:`NetworkClock` instead adds trio's clock
to an offset read from the wall clock once per ``trio.run`` (every clock of the run shares it, so
nodes started at different moments of a mocked run agree on the time). Under a MockClock, network
time then moves exactly as the mock's virtual time does.
"""

from __future__ import annotations

import time

import trio

__all__ = ["NetworkClock"]

_OFFSET: trio.lowlevel.RunVar[float] = trio.lowlevel.RunVar("p2pshard_network_clock_offset")


class NetworkClock:
    """Make it inside ``trio.run``; ``epoch`` (Unix seconds at this moment) sets this clock apart
    from the run's shared one."""

    def __init__(self, epoch: float | None = None) -> None:
        if epoch is not None:
            self._offset = epoch - trio.current_time()
            return
        try:
            self._offset = _OFFSET.get()
        except LookupError:
            self._offset = time.time() - trio.current_time()
            _OFFSET.set(self._offset)

    def now(self) -> float:
        return self._offset + trio.current_time()

    async def sleep_until(self, t: float) -> None:
        await trio.sleep_until(t - self._offset)

    def trio_time(self, t: float) -> float:
        """Network time ``t`` on trio's clock (for ``move_on_at`` and ``fail_at``)."""
        return t - self._offset

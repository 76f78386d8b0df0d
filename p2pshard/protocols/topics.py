"""The node's side of p2pshard's topics: subscribe to all of them, validate, dispatch to handlers.

Every message on a network topic passes :func:`p2pshard.core.topics.validate` (structure, author,
clock window) and then the topic's application hook, if one is set. The verdict goes back to the
router (only REJECT penalises the forwarding peer) and is counted as
``topics.<accept|reject|ignore>.<reason>``. Accepted messages go to the topic's handler; a topic
with no handler yet counts its messages as ``topics.unhandled.<name>`` rather than dropping them
unseen.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import trio
from google.protobuf.message import Message as ProtoMessage

from p2pshard.core import topics as core_topics
from p2pshard.core.counters import Counters
from p2pshard.core.gossip import GossipMessage, ValidationResult
from p2pshard.net.clock import NetworkClock
from p2pshard.net.pubsub import PubSub

if TYPE_CHECKING:
    from trio_typing import TaskStatus

log = logging.getLogger(__name__)

Handler = Callable[[GossipMessage, ProtoMessage], Awaitable[None]]


class Topics:
    def __init__(self, pubsub: PubSub, network_id: str, counters: Counters) -> None:
        self.pubsub = pubsub
        self.network_id = network_id
        self.counters = counters
        self._hooks: dict[str, core_topics.Hook] = {}
        self._handlers: dict[str, Handler] = {}

    def name(self, short: str) -> str:
        return core_topics.topic_name(self.network_id, short)

    def set_hook(self, short: str, hook: core_topics.Hook | None) -> None:
        """An application validation rule for topic ``short``, run after the structural ones."""
        if hook is None:
            self._hooks.pop(short, None)
        else:
            self._hooks[short] = hook

    def on_message(self, short: str, handler: Handler) -> None:
        self._handlers[short] = handler

    async def publish(self, short: str, message: ProtoMessage) -> bytes:
        return await self.pubsub.publish(self.name(short), message.SerializeToString())

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.clock = NetworkClock()
        async with trio.open_nursery() as nursery:
            for short in core_topics.TOPICS:
                self.pubsub.set_validator(self.name(short), self._validator(short))
                await nursery.start(self._consume, short)
            task_status.started()

    def _validator(self, short: str) -> Callable[[GossipMessage], Awaitable[ValidationResult]]:
        async def validate(msg: GossipMessage) -> ValidationResult:
            now_ms = int(self.clock.now() * 1000)
            verdict = core_topics.validate(msg, self.network_id, now_ms, self._hooks.get(short))
            self.counters.incr(f"topics.{verdict.result.name.lower()}.{verdict.reason}")
            return verdict.result

        return validate

    async def _consume(self, short: str, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        spec = core_topics.TOPICS[short]
        async with self.pubsub.subscribe(self.name(short)) as messages:
            task_status.started()
            async for msg in messages:
                handler = self._handlers.get(short)
                if handler is None:
                    self.counters.incr(f"topics.unhandled.{short}")
                    continue
                try:
                    decoded = spec.message_type()
                    decoded.ParseFromString(msg.data)  # validated above
                    await handler(msg, decoded)
                except Exception:
                    self.counters.incr(f"topics.handler_errors.{short}")
                    log.exception("handler for %s failed", short)

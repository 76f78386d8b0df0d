"""Typed errors of the gossip core.

Local mistakes (a bad configuration, publishing something we may not publish) raise; remote
mistakes (a peer's bad bytes) never raise out of the router: they become counted drops and a
:class:`~p2pshard.core.gossip.commands.Rejected` command, because one peer must not be able to
stop the router by sending garbage.
"""

from __future__ import annotations


class GossipError(Exception):
    """Base class of every error raised by ``p2pshard.core.gossip``."""


class ConfigError(GossipError, ValueError):
    """A configuration value breaks a gossipsub constraint."""


class MeshDegreeError(ConfigError):
    """The mesh degrees break ``d_out < d_low <= d <= d_high``, ``d_out <= d // 2`` or ``d_score <= d``."""


class GossipParamError(ConfigError):
    """A gossip or history parameter is out of range (``history_gossip <= history_length``, ...)."""


class TimingError(ConfigError):
    """A duration is not positive (heartbeat, TTLs, backoffs, windows)."""


class LimitError(ConfigError):
    """A size or count limit is not positive."""


class SignaturePolicyError(ConfigError):
    """The signature policy does not fit the rest of the configuration (e.g. StrictNoSign with
    the default ``from+seqno`` message id, which would make every message id empty)."""


class ScoreParamsError(ConfigError):
    """A peer-score parameter breaks the v1.1 constraints (weight signs, decays in (0, 1), ...)."""


class ThresholdError(ScoreParamsError):
    """Score thresholds out of order (``graylist <= publish <= gossip <= 0``, ``accept_px >= 0``)."""


class UnknownProtocolError(GossipError, ValueError):
    """``add_peer`` was given a protocol id this router does not speak."""


class PublishError(GossipError):
    """A local publish was refused; ``reason`` says why."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class SigningError(GossipError):
    """A key could not be parsed or a message could not be signed."""

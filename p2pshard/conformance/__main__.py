"""``python -m p2pshard.conformance`` until ``p2pshard conformance`` is registered."""

from __future__ import annotations

from p2pshard.conformance.cli import conformance

if __name__ == "__main__":
    conformance()

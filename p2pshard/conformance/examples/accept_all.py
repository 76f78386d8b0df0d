"""A broken adapter: p2pshard's answers, except that every gossip message is accepted.

``python -m p2pshard.conformance.examples.accept_all`` — the suite must fail on it, in the
``gossip_validation`` runner, with one failure per case whose expected verdict is not ACCEPT.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping

from p2pshard.conformance.model import JSON
from p2pshard.conformance.reference_adapter import serve


def accept_everything(request: Mapping[str, JSON], answer: dict[str, JSON]) -> dict[str, JSON]:
    if request.get("runner") == "gossip_validation":
        return {"output": {"result": "ACCEPT", "reason": "ok"}}
    return answer


if __name__ == "__main__":
    sys.exit(serve(accept_everything))

"""p2pshard as an external adapter: ``python -m p2pshard.conformance.reference_adapter``.

Reads one JSON request per line on stdin, writes one JSON answer per line on stdout. This is the
shape another implementation's adapter takes (specs/vectors/README.md); it is also used to test
the command-adapter path of the suite.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping

from p2pshard.conformance.adapters import answer_request
from p2pshard.conformance.model import JSON
from p2pshard.conformance.runners import RUNNERS

Rewrite = Callable[[Mapping[str, JSON], dict[str, JSON]], dict[str, JSON]]


def serve(rewrite: Rewrite | None = None) -> int:
    """Answer requests until stdin closes; ``rewrite`` may alter answers (for broken examples)."""
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
        except ValueError:
            print(json.dumps({"error": "request is not JSON"}), flush=True)
            continue
        answer = answer_request(RUNNERS, request)
        if rewrite is not None:
            answer = rewrite(request, answer)
        print(json.dumps(answer, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(serve())

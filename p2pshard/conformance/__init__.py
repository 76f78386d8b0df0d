"""The p2pshard conformance suite: spec test vectors, their runners, and a live black-box check.

* ``python -m p2pshard.conformance generate [--check]`` writes (or verifies) ``specs/vectors``;
* ``python -m p2pshard.conformance vectors [--adapter CMD]`` runs them against p2pshard or any
  implementation that answers JSON lines (specs/vectors/README.md);
* ``python -m p2pshard.conformance live MULTIADDR`` checks a running node over the network.
"""

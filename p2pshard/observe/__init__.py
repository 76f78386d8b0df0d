"""What an operator watches: Prometheus metrics and a live dashboard page, on one HTTP port.

``NodeConfig(metrics="127.0.0.1:9464")`` (``p2pshard start --metrics 127.0.0.1:9464``) serves
``/metrics`` (Prometheus text, read from the node's own counters and state at scrape time by
:class:`~p2pshard.observe.metrics.NodeCollector`), ``/`` (the dashboard: static HTML and JS
shipped in this package, no CDN, no build step) and ``/api/status`` (the JSON the page polls).
Nothing is served unless asked for.
"""

"""fmdiag's mixin: Grafana dashboards and Prometheus rules rendered from one config.

``config`` holds selectors, thresholds and labels; ``queries`` turns them into PromQL;
``boards`` lays dashboards out with grafana-foundation-sdk; ``rules`` defines alert and
recording-rule groups with their promtool tests; ``build`` writes it all (docs/dashboards.md).
Only ``boards``, ``panels`` and ``build`` import grafana-foundation-sdk, so the rules (and
``fmdiag alerts check``) need just the base install.
"""

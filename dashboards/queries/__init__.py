"""PromQL as functions of the config, one module per subsystem, kept apart from panel layout.

Every function returns a PromQL string for a :class:`~fmdiag.dashboards.queries.scope.Scope`
(no filters in rule files, template variables in dashboards) and a range ``window``
(``5m`` in rules, ``$__rate_interval`` in dashboards), so the very string a panel shows can be
run against a Prometheus holding simulated history.
"""

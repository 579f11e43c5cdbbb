"""Prometheus rules (alerts and recording rules) as data built from the config, one module per
rule group, each with its promtool unit-test cases beside it (so a test file per group)."""

"""Grafana dashboards built with grafana-foundation-sdk; generated JSON is committed beside them."""

"""Per-node Prometheus exporter (`fmdiag exporter`): one collector per source behind one interface."""

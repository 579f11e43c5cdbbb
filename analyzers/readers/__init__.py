"""Readers: Kineto traces, step records, node metrics (files or Prometheus) into frames."""

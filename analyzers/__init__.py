"""Step-time bottleneck analysis: ingest -> frames -> breakdown -> features -> verdicts -> report."""

"""Frames: per-rank, per-step breakdowns and cross-rank spreads computed from what the readers return."""

"""A virtual training cluster with injected bottlenecks and their ground truth (`fmdiag simulate`)."""

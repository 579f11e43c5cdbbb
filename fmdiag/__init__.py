"""fmdiag: observability and bottleneck diagnosis for foundation-model training clusters."""

__version__ = "0.1.0"

"""fmdiag.testbed: a real multi-process JAX training job on CPU, with real injected faults."""

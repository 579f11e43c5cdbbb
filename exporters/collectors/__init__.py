"""One module per source (efa, lustre, host, steps, ...); each registers itself by name."""

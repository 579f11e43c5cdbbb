"""Reports: the terminal, JSON and HTML renderings of an analysis."""

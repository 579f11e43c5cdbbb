"""`python -m fmdiag` runs the CLI (tests start exporters this way, with the venv's interpreter)."""

from fmdiag.cli import main

main()

"""`python -m fmdiag.testbed`: the real-process test bed's command line."""

from fmdiag.testbed.cli import main

main()

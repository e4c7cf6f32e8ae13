"""`python -m egodistill`: the same command line as the `egodistill` script."""

from egodistill.cli import main

main()

"""`python -m export.cli`: the same as the `steerbake` script."""

from export.cli import main

main()

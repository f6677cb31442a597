"""`python -m vitconvert ...` is the `vitconvert` command."""

from vitconvert.cli import main

main()

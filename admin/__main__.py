"""`python -m admin` is the `triage` command."""

from .cli import main

main()

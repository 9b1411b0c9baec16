"""`python -m triage.admin` is the `triage` command."""

from .cli import main

main()

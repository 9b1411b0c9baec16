"""The operator surface: the `triage` CLI, the local runner and the demo producer."""

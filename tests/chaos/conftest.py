"""Chaos suite: `make chaos` runs all of it and prints the results table; tests marked `fast`
also run in `make test`, the others are marked slow."""

from __future__ import annotations

import pytest

from .harness import RESULTS


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/chaos/" in str(item.fspath) and item.get_closest_marker("fast") is None:
            item.add_marker(pytest.mark.slow)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not RESULTS:
        return
    terminalreporter.write_sep("=", "chaos results")
    terminalreporter.write_line("| fault | lost | duplicated | recovery | note |")
    terminalreporter.write_line("|---|---|---|---|---|")
    for row in RESULTS:
        terminalreporter.write_line(
            f"| {row['fault']} | {row['lost']} | {row['duplicated']} | {row['recovery']} | {row['note']} |"
        )

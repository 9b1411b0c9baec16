"""Prints the suite's line coverage of the library from combined coverage data, and names every
module below the threshold (85 % unless given): a report, never a failure. Python modules only
(the dashboard's Jinja templates are measured too, as the code they compile to, and skipped here)."""

from __future__ import annotations

import os
import sys

import coverage


def main(threshold: float = 85.0) -> None:
    cov = coverage.Coverage()
    cov.load()
    rows = []
    for path in sorted(cov.get_data().measured_files()):
        if not path.endswith(".py"):
            continue  # a Jinja template runs as code under its own file name: not a module
        _, statements, _, missing, _ = cov.analysis2(path)
        if statements:
            rows.append((100.0 * (len(statements) - len(missing)) / len(statements), len(statements), path))
    lines = sum(n for _, n, _ in rows)
    total = sum(pct * n for pct, n, _ in rows) / lines if lines else 0.0
    below = [(pct, n, path) for pct, n, path in rows if pct < threshold]
    print(f"line coverage of triage/: {total:.1f} % over {len(rows)} modules; {len(below)} below {threshold:g} %:")
    for pct, n, path in sorted(below):
        print(f"  {pct:5.1f} %  {n:5d} lines  {os.path.relpath(path)}")


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 85.0)

"""`triage deploy-files DIR`: the deploy files the package ships, copied out for an app.

Guarantees:
- Copies every file of the installed package's `triage/deploy` (Prometheus alert rules and
  their promtool tests, an example scrape config, the Grafana dashboard, the runbook, a
  Procfile) into DIR, keeping their layout; reads them through importlib.resources, so the
  same files come from a wheel and from a checkout.
- Overwrites nothing unless `force`: if any target exists, it writes no file at all and
  names the ones in the way.
- `app`, a dotted module name (checked: it goes into shell command lines), replaces the
  Procfile's placeholder module in its command lines; without it the placeholder stays.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path, PurePosixPath

PLACEHOLDER = "myapp.tasks"  # the Procfile template's module, replaced by `app`
PROCFILE = PurePosixPath("Procfile")
_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")

# What each file is for, in the command's report (one line per file).
DESCRIPTIONS = {
    "Procfile": "one process per tier, the web process and the scheduler",
    "RUNBOOK.md": "per alert: what it means, what to check, what to do",
    "grafana/triage.json": "the Grafana dashboard",
    "prometheus/prometheus.yml": "an example Prometheus scrape config",
    "prometheus/rules.yml": "the alert rules",
    "prometheus/rules.test.yml": "the alert rules' unit tests (promtool test rules)",
}


class DeployFilesError(ValueError):
    """Bad input or files in the way; the message names the problem."""


@dataclass(frozen=True)
class Written:
    path: Path
    description: str


def shipped() -> dict[PurePosixPath, Traversable]:
    """Every file under the package's `deploy` directory, by its path relative to it."""
    found: dict[PurePosixPath, Traversable] = {}

    def walk(node: Traversable, prefix: PurePosixPath) -> None:
        for child in node.iterdir():
            if child.is_dir():
                walk(child, prefix / child.name)
            elif child.is_file():
                found[prefix / child.name] = child

    walk(files("triage") / "deploy", PurePosixPath())
    return dict(sorted(found.items()))


def check_app(app: str) -> str:
    if not _MODULE.fullmatch(app):
        raise DeployFilesError(f"--app must be a dotted Python module name such as myapp.tasks, not {app!r}")
    return app


def _with_module(procfile: str, app: str) -> str:
    """The Procfile's command lines with `app` in place of the placeholder (comments as they are)."""
    lines = procfile.splitlines(keepends=True)
    return "".join(line if line.startswith("#") else line.replace(PLACEHOLDER, app) for line in lines)


def write_deploy_files(directory: Path, *, app: str | None, force: bool) -> list[Written]:
    """Copy the shipped files into `directory` (created if needed); what was written, in order."""
    if app is not None:
        check_app(app)
    if directory.exists() and not directory.is_dir():
        raise DeployFilesError(f"{directory} exists and is not a directory")
    sources = shipped()
    targets = {relative: directory.joinpath(*relative.parts) for relative in sources}
    if not force:
        taken = [str(target) for target in targets.values() if target.exists()]
        if taken:
            lines = "".join(f"\n  {path}" for path in taken)
            raise DeployFilesError(f"{len(taken)} file(s) exist, none written (--force overwrites them):{lines}")
    written = []
    for relative, source in sources.items():
        content = source.read_bytes()
        if relative == PROCFILE and app is not None:
            content = _with_module(content.decode(), app).encode()
        target = targets[relative]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
        written.append(Written(target, DESCRIPTIONS.get(str(relative), "")))
    return written

"""The reference documents everything there is: every setting, every CLI command, every HTTP route.

- Settings: the variable of every field of `triage.settings.Settings` (and of every key `triage config
  --json` prints) appears in docs/reference/settings.md (README.md until that page exists). A field
  of tier-keyed models (`tiers`) needs one variable per model field; the page may write the tier as
  `<TIER>` (or `{TIER}`) and continue a variable in the same line with `…`, as in
  "`TRIAGE_TIERS__<TIER>__MIN_BACKOFF_MS`, `…__MAX_BACKOFF_MS`".
- CLI and HTTP: the site is built once (`mkdocs build --strict`); every command of
  `triage.admin.cli:main`, as its full path ("triage dlq requeue"), appears in reference/cli/, and every
  route of `create_app` but the dashboard's pages, as its method next to its path ("POST
  /api/v1/admin/breakers/{name}/reset", either order), in reference/http-api/. Without mkdocs.yml or
  mkdocs these are skipped, except under CI (`CI` set), where they fail.
Failures list everything missing.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import typing
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import NoReturn

import click
import pytest
from pydantic import AliasChoices, BaseModel
from starlette.routing import BaseRoute, Route

from tests.docs.examples import ROOT
from tests.helpers import BIN, env_with, triage
from triage.admin.cli import main as cli
from triage.admin.ops import Admin
from triage.admin.web import create_app
from triage.settings import TIER_NAMES, Settings

SETTINGS_PAGE = next(p for p in (ROOT / "docs/reference/settings.md", ROOT / "README.md") if p.exists())
TIERS = tuple(tier.upper() for tier in TIER_NAMES)
_VARIABLE = re.compile(r"(?:(?:…|\.\.\.)_+)?(?:[A-Z][A-Z0-9]*|<[A-Z]+>)(?:_+(?:[A-Z0-9]+|<[A-Z]+>))*")


def variables_of(field: str) -> list[str]:
    """The environment variables that set the `Settings` field (tier placeholders filled in)."""
    info = Settings.model_fields.get(field)
    alias = info.validation_alias if info else None
    if isinstance(alias, AliasChoices):
        alias = alias.choices[0]  # the first is the documented one: REDIS_URL, not TRIAGE_REDIS_URL
    name = alias if isinstance(alias, str) else f"TRIAGE_{field.upper()}"
    annotation = info.annotation if info else None
    if typing.get_origin(annotation) is dict:
        key, value = typing.get_args(annotation)
        if set(typing.get_args(key)) == set(TIER_NAMES) and isinstance(value, type) and issubclass(value, BaseModel):
            return [f"{name}__{tier}__{sub.upper()}" for tier in TIERS for sub in value.model_fields]
    return [name]


def documented_variables(text: str) -> set[str]:
    """Every variable the text names, `<TIER>` expanded to each tier, `…__FIELD` to the full name."""
    found: set[str] = set()
    for line in text.replace("{", "<").replace("}", ">").splitlines():
        previous = ""
        for token in _VARIABLE.findall(line):
            if token.startswith(("…", "...")):
                if not previous:
                    continue
                rest = token.lstrip("….")
                separator = "__" if rest.startswith("__") else "_"
                token = previous.rsplit(separator, 1)[0] + rest
            else:
                previous = token
            found.update(token.replace("<TIER>", tier) for tier in TIERS)
    return found


def _missing_listed(missing: list[str]) -> str:
    """The names, a tier-placeholder form for a name missing for every tier."""
    shown: list[str] = []
    for name in missing:
        generic = re.sub(rf"(?<![A-Z])({'|'.join(TIERS)})(?![A-Z])", "<TIER>", name)
        if generic != name and all(generic.replace("<TIER>", tier) in missing for tier in TIERS):
            name = generic
        if name not in shown:
            shown.append(name)
    return ", ".join(shown)


def _assert_documented(expected: list[str], what: str) -> None:
    documented = documented_variables(SETTINGS_PAGE.read_text(encoding="utf-8"))
    missing = [name for name in expected if name not in documented]
    assert not missing, (
        f"{SETTINGS_PAGE.relative_to(ROOT)} does not document {len(missing)} variable(s) of {what}: "
        f"{_missing_listed(missing)}"
    )


def test_every_setting_has_its_variable_in_the_reference() -> None:
    # Given every field of the settings model, as the variables that set it
    expected = [name for field in Settings.model_fields for name in variables_of(field)]
    # When the settings reference is read / Then each one is named there
    _assert_documented(expected, "triage.settings.Settings")


def test_every_key_of_triage_config_is_in_the_reference() -> None:
    # Given what `triage config --json` prints (the service's app, the suite's Redis)
    done = triage("config", "--json")
    assert done.returncode == 0, done.stderr
    keys = list(json.loads(done.stdout))
    assert "redis_url" in keys
    # When the settings reference is read / Then the variable of each key is named there
    _assert_documented([name for key in keys for name in variables_of(key)], "`triage config --json`")


class _Text(HTMLParser):
    """The text a reader sees: no script or style."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self._hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._hidden += tag in ("script", "style")

    def handle_endtag(self, tag: str) -> None:
        self._hidden -= tag in ("script", "style") and self._hidden > 0

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self.parts.append(data)


def page_text(html: str) -> str:
    """The page's text, whitespace collapsed (tags separate words)."""
    parser = _Text()
    parser.feed(html)
    return " ".join(" ".join(parser.parts).split())


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(f"CI is set but {reason}: the reference checks must run in CI", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The documentation site, built once for this module with `mkdocs build --strict`."""
    if not (ROOT / "mkdocs.yml").exists():
        _unavailable("there is no mkdocs.yml (the documentation site) in the repository")
    if not (BIN / "mkdocs").exists():
        _unavailable("mkdocs is not installed (`make install` installs the dev extra)")
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [str(BIN / "mkdocs"), "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env=env_with(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode:
        pytest.fail(f"mkdocs build --strict failed:\n{(done.stdout + done.stderr)[-4000:]}", pytrace=False)
    return out


def _page(site: Path, page: str) -> str:
    path = site / page / "index.html"
    assert path.exists(), f"the built site has no {page}/index.html"
    return page_text(path.read_text(encoding="utf-8"))


def command_shown(text: str, command: str) -> bool:
    """The command's full path is in the text (mkdocs-click's usage line and full-path headings)."""
    return bool(re.search(rf"(?<![\w-]){re.escape(command)}(?![\w-])", text))


def route_shown(text: str, method: str, path: str) -> bool:
    """The text names the method next to the path: before it (a heading, a table row), or after it
    when that method is not the one of the next path (a path heading, then its methods)."""
    p = re.escape(path) + r"(?![\w/{}.-])"
    before = rf"\b{method}\b[\s:|`]{{0,8}}{p}"
    after = rf"{p}[\s:|`]{{0,8}}\b{method}\b(?![\s:|`]*/)"
    return bool(re.search(f"{before}|{after}", text))


def commands(group: click.Group, path: str = "triage") -> Iterator[str]:
    """The full path of every command under `group`, groups included, hidden ones not."""
    for name, command in sorted(group.commands.items()):
        if command.hidden:
            continue
        yield f"{path} {name}"
        if isinstance(command, click.Group):
            yield from commands(command, f"{path} {name}")


def test_every_cli_command_is_in_the_reference(site: Path) -> None:
    # Given every command and subcommand of `triage`
    every = list(commands(cli))
    assert "triage dlq requeue" in every
    # When the built CLI reference is read
    text = _page(site, "reference/cli")
    # Then each command's full path is there
    missing = [command for command in every if not command_shown(text, command)]
    assert not missing, f"reference/cli does not show {len(missing)} command(s): {', '.join(missing)}"


def _flat(routes: list[BaseRoute]) -> Iterator[BaseRoute]:
    for route in routes:
        inner = getattr(route, "original_router", None)  # an included router is one entry: its routes are inside
        yield from _flat(inner.routes) if inner is not None else [route]


def http_operations() -> list[tuple[str, str]]:
    """(method, path) of every route of the web app but the dashboard's pages (HEAD implied by GET)."""
    app = create_app(Admin(Settings()), token="reference-check-token")
    operations = []
    for route in _flat(list(app.routes)):
        if not isinstance(route, Route) or route.endpoint.__module__.startswith("triage.admin.dashboard"):
            continue
        operations += [(method, route.path) for method in sorted(route.methods or ()) if method != "HEAD"]
    return operations


def test_every_http_route_is_in_the_reference(site: Path) -> None:
    # Given every route of the web app: the admin API and the public ones (not the dashboard's pages)
    every = http_operations()
    assert ("GET", "/healthz") in every
    assert ("POST", "/api/v1/admin/queue/{queue}/pause") in every
    # When the built HTTP reference is read
    text = _page(site, "reference/http-api")
    # Then each route is there as its method next to its path
    missing = [f"{method} {path}" for method, path in every if not route_shown(text, method, path)]
    assert not missing, f"reference/http-api does not show {len(missing)} route(s): {', '.join(missing)}"


def test_the_notation_of_the_settings_reference_is_read() -> None:
    # Given a table in the notation of the reference: a tier placeholder, a `…` continuation, an alias
    text = (
        "| `REDIS_URL` (or `TRIAGE_REDIS_URL`) | x |\n"
        "| `TRIAGE_TIERS__<TIER>__MIN_BACKOFF_MS`, `…__MAX_BACKOFF_MS` | y |\n"
        "| `TRIAGE_REDIS_SSL_CERTFILE`, `…_KEYFILE` | z |\n"
        "| `TRIAGE_TENANT_RPM_{TIER}` | w |\n"
    )
    # When its variables are read
    found = documented_variables(text)
    # Then each is expanded to the names the settings model gives
    assert {"REDIS_URL", "TRIAGE_REDIS_URL", "TRIAGE_REDIS_SSL_KEYFILE", "TRIAGE_TENANT_RPM_BACKGROUND"} <= found
    assert {f"TRIAGE_TIERS__{tier}__MAX_BACKOFF_MS" for tier in TIERS} <= found
    assert variables_of("redis_url") == ["REDIS_URL"]
    assert variables_of("forwarded_allow_ips") == ["FORWARDED_ALLOW_IPS"]
    assert "TRIAGE_TIERS__CRITICAL__DEAD_LETTERS_MAX_AGE_DAYS" in variables_of("tiers")
    assert _missing_listed([f"TRIAGE_TENANT_RPM_{tier}" for tier in TIERS] + ["TRIAGE_X"]) == (
        "TRIAGE_TENANT_RPM_<TIER>, TRIAGE_X"
    )


def test_the_built_pages_are_read_as_the_reference_renders_them() -> None:
    # Given pages as mkdocs-click and an OpenAPI rendering write them
    cli_page = page_text(
        '<h2 id="triage-dlq">triage dlq</h2><pre><code>triage dlq requeue [OPTIONS] QUEUE\n</code></pre>'
    )
    http_page = page_text(
        "<h3><code>POST</code> <code>/api/v1/admin/breakers/{name}/reset</code></h3>"
        "<table><tr><td>GET</td><td>/api/v1/admin/breakers</td></tr></table>"
        "<h3>/healthz</h3><p>GET</p>"
    )
    # When commands and routes are looked for / Then a full path or a method next to its path is found
    assert command_shown(cli_page, "triage dlq requeue")
    assert command_shown(cli_page, "triage dlq")
    assert not command_shown(cli_page, "triage dlq purge")
    assert route_shown(http_page, "POST", "/api/v1/admin/breakers/{name}/reset")
    assert route_shown(http_page, "GET", "/api/v1/admin/breakers")
    assert route_shown(http_page, "GET", "/healthz")
    # And a path that only begins another, or a method of another route, is not
    assert not route_shown(http_page, "POST", "/api/v1/admin/breakers")
    assert not route_shown(http_page, "GET", "/api/v1/admin/breakers/{name}/reset")
    assert not route_shown(http_page, "POST", "/api/v1/admin/breakers/{name}")

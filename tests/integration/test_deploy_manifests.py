"""The Render and Heroku manifests (`render.yaml`, `app.json`, at the root, where the platforms
look for them) run the Procfile's processes with its commands, a Redis, a health-checked web
service and a generated admin token; the web process believes the platform's router's
X-Forwarded-For there (and only there: not in the Procfile, which runs anywhere)."""

from __future__ import annotations

import json
import re

from tests.helpers import ROOT

RENDER = ROOT / "render.yaml"  # where Render looks for a Blueprint
HEROKU = ROOT / "app.json"  # where Heroku looks for the app manifest


def procfile() -> dict[str, str]:
    processes = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, command = line.split(":", 1)
            processes[name.strip()] = command.strip()
    return processes


def render_services() -> list[dict[str, str]]:
    """Each service of render.yaml as its top-level scalar fields, plus its raw text under `text`.
    A line-based read (PyYAML is not a dependency): the file keeps one field a line and
    single-quoted start commands."""
    text = RENDER.read_text()
    blocks = re.split(r"^  - (?=type: )", text.split("\nservices:\n", 1)[1], flags=re.MULTILINE)[1:]
    services = []
    for block in blocks:
        fields = {"text": block}
        for match in re.finditer(r"^(?:    )?(\w+): (.+?)\s*(?:#.*)?$", block, re.MULTILINE):
            if match.group(1) not in fields:
                fields[match.group(1)] = match.group(2)
        if "startCommand" in fields:
            quoted = re.fullmatch(r"'((?:[^']|'')*)'", fields["startCommand"])
            assert quoted, f"startCommand must be single-quoted: {fields['startCommand']}"
            fields["startCommand"] = quoted.group(1).replace("''", "'")
        services.append(fields)
    return services


# -- Render and Heroku ------------------------------------------------------------------


def test_render_runs_each_procfile_process_with_the_procfiles_command() -> None:
    # Given the Procfile and the Render blueprint
    processes = procfile()
    services = [service for service in render_services() if "startCommand" in service]
    # Then each Procfile process is one service (triage-web, triage-worker-critical, ...)
    # whose start command is the Procfile's line, and there is no other
    commands = {
        service["name"].removeprefix("triage-").replace("-", "_"): service["startCommand"] for service in services
    }
    assert commands == processes
    for service in services:
        # And each installs the library and reads REDIS_URL from the Key Value instance
        assert service["buildCommand"] == "pip install ."
        assert re.search(
            r"- key: REDIS_URL\n\s+fromService:\n\s+type: keyvalue\n"
            r"\s+name: triage-redis\n\s+property: connectionString",
            service["text"],
        ), service["name"]
        assert service["type"] == ("web" if service["name"] == "triage-web" else "worker")


def test_render_web_service_is_health_checked_and_its_admin_token_generated() -> None:
    # Given the Render blueprint's web service and its Key Value instance
    by_name = {service["name"]: service for service in render_services()}
    web, redis = by_name["triage-web"], by_name["triage-redis"]
    # Then the web service is checked on /healthz, listens on all interfaces with a generated token
    assert web["healthCheckPath"] == "/healthz"
    assert re.search(r"- key: TRIAGE_WEB_HOST\n\s+value: 0\.0\.0\.0\n", web["text"])
    assert re.search(r"- key: TRIAGE_ADMIN_TOKEN\n\s+generateValue: true\n", web["text"])
    # And it believes the router's X-Forwarded-For (the only way in), so the login throttle sees clients
    assert re.search(r"- key: FORWARDED_ALLOW_IPS\n\s+value: '\*'\n", web["text"])
    others = [service for service in render_services() if service["name"] != "triage-web"]
    assert all("FORWARDED_ALLOW_IPS" not in service["text"] for service in others)
    # And Redis is private and never evicts a message
    assert redis["type"] == "keyvalue"
    assert redis["ipAllowList"] == "[]"
    assert redis["maxmemoryPolicy"] == "noeviction"


def test_heroku_app_runs_each_procfile_process_with_redis_and_a_generated_token() -> None:
    # Given the Procfile and app.json (Heroku runs the Procfile's commands itself)
    processes = procfile()
    app = json.loads(HEROKU.read_text())
    # Then the formation has exactly the Procfile's process types, one dyno each
    assert set(app["formation"]) == set(processes)
    assert all(dyno["quantity"] >= 1 for dyno in app["formation"].values())
    # And Heroku Redis provides REDIS_URL; the web process listens on all interfaces with a secret token
    assert [addon["plan"].split(":")[0] for addon in app["addons"]] == ["heroku-redis"]
    assert app["env"]["TRIAGE_ADMIN_TOKEN"]["generator"] == "secret"
    assert app["env"]["TRIAGE_WEB_HOST"]["value"] == "0.0.0.0"  # noqa: S104 (the PaaS setting under test)
    # And the web process believes the router's X-Forwarded-For (a dyno is reachable only through it)
    assert app["env"]["FORWARDED_ALLOW_IPS"]["value"] == "*"


def test_the_procfile_trusts_no_proxy_header_by_itself() -> None:
    # Given the Procfile, which also runs off the platforms (a VM, a container with a public port)
    processes = procfile()
    # Then it leaves FORWARDED_ALLOW_IPS to the environment (the platforms' manifests set it):
    # believing every X-Forwarded-For where clients can connect directly would let them pick their address
    assert all("FORWARDED_ALLOW_IPS" not in command for command in processes.values())


def test_the_procfile_parser_reads_the_web_line() -> None:
    # Given the Procfile
    # When it is parsed
    processes = procfile()
    # Then the web process is the web server on $PORT, and every tier has its worker group
    assert processes["web"].startswith("exec triage serve --port ${PORT")
    assert {"worker_critical", "worker_default", "worker_background"} <= set(processes)

"""What `triage/deploy/` ships (in the wheel too, for `triage deploy-files`) stays true to the
service: the alert rules load and pass their unit tests, the Prometheus and Grafana files name
only metrics that Triage exports, every alert has a test and a runbook section, and the Render
and Heroku files run the Procfile's commands."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from typing import Any

import click
import pytest

from tests.grafana_schema import dropped_keys, model_problems
from tests.helpers import ROOT
from triage.admin.cli import main as triage_cli

DEPLOY = ROOT / "triage" / "deploy"
RULES = DEPLOY / "prometheus" / "rules.yml"
RULES_TESTS = DEPLOY / "prometheus" / "rules.test.yml"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "triage.json"
RUNBOOK = DEPLOY / "RUNBOOK.md"

# The metrics the rules and the dashboard may use. Fleet metrics: the web process (`triage
# serve`, read from Redis at each scrape). Worker metrics: each worker group's TRIAGE_METRICS_PORT.
FLEET_METRICS = {
    "triage_redis_up",
    "triage_queue_messages",
    "triage_queue_messages_by_priority",
    "triage_queue_oldest_waiting_seconds",
    "triage_queue_sla_seconds",
    "triage_queue_avg_age_seconds",
    "triage_queue_paused",
    "triage_queue_dead_letters",
    "triage_queue_workers",
    "triage_queue_tenants_held_back",
    "triage_queue_enqueued_total",
    "triage_queue_acked_total",
    "triage_queue_retries_total",
    "triage_queue_deferred_total",
    "triage_queue_moved_total",
    "triage_queue_dead_lettered_total",
    "triage_queue_shed_total",
    "triage_queue_duplicates_total",
    "triage_breaker_state",
    "triage_breaker_opened_total",
    "triage_breaker_rejected_total",
    "triage_breaker_failures_total",
}
WORKER_HISTOGRAMS = {"triage_message_wait_seconds", "triage_message_run_seconds"}
WORKER_METRICS = {
    "triage_messages_total",
    "triage_messages_in_progress",
    "triage_worker_threads",
    *(f"{name}_{suffix}" for name in WORKER_HISTOGRAMS for suffix in ("bucket", "sum", "count")),
}
KNOWN_METRICS = FLEET_METRICS | WORKER_METRICS
SEVERITIES = {"S2", "warning"}
DS_UID = "${DS_PROMETHEUS}"

# Skipped only where the package cannot be installed; CI installs it (make tools), so there it must run.
needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None and not os.environ.get("CI"),
    reason="promtool is not on PATH (Debian and Ubuntu: apt-get install prometheus)",
)


# -- helpers ----------------------------------------------------------------------------


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)


_LABEL_LISTS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "offset", "bool"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not its functions, keywords or labels)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    expr = re.sub(r"\{[^}]*\}", " ", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # range selectors
    expr = _LABEL_LISTS.sub(" ", expr)  # grouping and matching label lists
    names = set()
    for token in re.finditer(r"\d[\w.]*|[A-Za-z_:][\w:]*", expr):
        word = token.group()
        if word[0].isdigit() or word.lower() in _KEYWORDS or word.lower() in {"inf", "nan"}:
            continue
        if expr[token.end() :].lstrip().startswith("("):
            continue  # a function or an aggregation
        names.add(word)
    return names


def alert_blocks() -> dict[str, str]:
    """Each alert of rules.yml and the text of its rule (a line-based read: PyYAML is not a dependency)."""
    text = RULES.read_text()
    starts = list(re.finditer(r"^\s*- alert: (\S+)\s*$", text, re.MULTILINE))
    ends = [match.start() for match in starts[1:]] + [len(text)]
    return {match.group(1): text[match.start() : end] for match, end in zip(starts, ends, strict=True)}


def rule_field(block: str, field: str) -> str:
    match = re.search(rf"^ +{field}: (.+)$", block, re.MULTILINE)
    assert match, f"no {field} in:\n{block}"
    return match.group(1).strip().strip("\"'")


def rule_expr(block: str) -> str:
    """The `expr: |` block scalar of a rule."""
    match = re.search(r"^( +)expr: \|\n((?:\1 .*\n| *\n)+)", block, re.MULTILINE)
    assert match, f"no block expr in:\n{block}"
    return match.group(2)


def anchor(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def runbook_anchors() -> set[str]:
    return {anchor(match.group(1)) for match in re.finditer(r"^#{1,6} (.+)$", RUNBOOK.read_text(), re.MULTILINE)}


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for panel in board["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))  # a collapsed row holds its panels
    return found


# -- the Prometheus files ---------------------------------------------------------------


@needs_promtool
def test_the_alert_rules_load() -> None:
    # Given the alert rules
    # When promtool checks them
    result = promtool("check", "rules", str(RULES))
    # Then they are valid, and every rule was found
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_blocks())} rules found" in result.stdout


@needs_promtool
def test_the_alert_rules_pass_their_unit_tests() -> None:
    # Given the rules' unit tests (series in, alerts with exact labels and annotations out)
    # When promtool runs them
    result = promtool("test", "rules", str(RULES_TESTS))
    # Then every test passes
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@needs_promtool
def test_the_example_prometheus_config_is_valid() -> None:
    # Given the example scrape configuration, which loads the rules
    # When promtool checks it
    result = promtool("check", "config", str(PROMETHEUS_CONFIG))
    # Then it is valid and its rule file loads
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout


def test_the_scrape_config_targets_the_web_process_and_each_worker_group() -> None:
    # Given the example scrape configuration
    text = PROMETHEUS_CONFIG.read_text()
    # Then it scrapes the web process and one metrics port per tier, every 15 s, and loads rules.yml
    assert re.search(r"^\s+scrape_interval: 15s$", text, re.MULTILINE)
    assert re.search(r"^rule_files:\n\s+- rules\.yml$", text, re.MULTILINE)
    assert 'targets: ["localhost:8000"]' in text
    for port in (9191, 9192, 9193):
        assert f'targets: ["localhost:{port}"]' in text


def test_every_alert_has_a_severity_annotations_and_a_runbook_section() -> None:
    # Given the alerts of rules.yml and the runbook's sections
    alerts = alert_blocks()
    anchors = runbook_anchors()
    assert alerts, "no alert found in rules.yml"
    for name, block in alerts.items():
        # Then each alert has a known severity, a summary and a description
        assert rule_field(block, "severity") in SEVERITIES, name
        rule_field(block, "summary")
        assert re.search(r"^\s+description: ", block, re.MULTILINE), name
        # And its runbook annotation points to its own section of deploy/RUNBOOK.md
        runbook = rule_field(block, "runbook")
        assert runbook == f"deploy/RUNBOOK.md#{anchor(name)}", name
        assert anchor(name) in anchors, f"deploy/RUNBOOK.md has no section '## {name}'"


def test_every_alert_has_a_test_that_fires_it_and_one_that_must_not() -> None:
    # Given the alerts of rules.yml and the unit tests of rules.test.yml
    tests = RULES_TESTS.read_text()
    for name in alert_blocks():
        # Then some evaluation expects the alert with exact labels, and some expects no alert
        fires = rf"alertname: {name}\n\s+exp_alerts:\n\s+- exp_labels:"
        silent = rf"alertname: {name}\n\s+exp_alerts: \[\]"
        assert re.search(fires, tests), f"rules.test.yml never expects {name} to fire"
        assert re.search(silent, tests), f"rules.test.yml never expects {name} to stay silent"


def test_the_critical_alerts_page_and_the_others_warn() -> None:
    # Given the alerts of rules.yml
    severities = {name: rule_field(block, "severity") for name, block in alert_blocks().items()}
    # Then critical work that is late or cannot run pages, and so does Redis down
    assert severities == {
        "TriageCriticalBacklog": "S2",
        "TriageBackgroundBacklog": "warning",
        "TriageCriticalWaitOverSLA": "S2",
        "TriageWaitOverSLA": "warning",
        "TriageDeadLettered": "warning",
        "TriageBreakerOpen": "warning",
        "TriageCriticalNoWorkers": "S2",
        "TriageNoWorkers": "warning",
        "TriageRedisDown": "S2",
    }


def test_the_alert_rules_name_only_metrics_triage_exports() -> None:
    # Given each rule's expression
    for name, block in alert_blocks().items():
        used = metric_names(rule_expr(block))
        # Then it selects metrics, and only known ones
        assert used, f"{name}: no metric found in its expression"
        assert used <= KNOWN_METRICS, f"{name}: unknown metrics {sorted(used - KNOWN_METRICS)}"


def test_metric_names_finds_the_metrics_of_an_expression_and_nothing_else() -> None:
    # Given an expression with functions, aggregations, matchers, ranges, offsets and numbers
    expr = (
        'histogram_quantile(0.95, sum by (queue, le) (rate(triage_message_wait_seconds_bucket{tier=~"$tier"}[5m])))'
        " > on (queue) group_left max by (queue) (triage_queue_sla_seconds offset 10m) * 2"
        ' or absent(triage_redis_up) unless bogus_metric{state="open"}'
    )
    # When its metric names are read
    # Then they are exactly the selected series, an unknown one included
    assert metric_names(expr) == {
        "triage_message_wait_seconds_bucket",
        "triage_queue_sla_seconds",
        "triage_redis_up",
        "bogus_metric",
    }


# -- the runbook --------------------------------------------------------------------------


def test_the_runbook_names_only_real_triage_commands_and_options() -> None:
    # Given every `triage ...` command the runbook quotes
    quoted = re.findall(r"`(triage [^`]+)`", RUNBOOK.read_text())
    assert len(quoted) > 10
    for line in quoted:
        words = shlex.split(line.replace("...", ""))[1:]
        command: click.Command = triage_cli
        # When it is resolved against the CLI, subcommand by subcommand
        while isinstance(command, click.Group) and words and not words[0].startswith("-"):
            name = words.pop(0)
            assert name in command.commands, f"{line!r}: no command {name!r}"
            command = command.commands[name]
        # Then every option it passes exists
        options = {opt for param in command.params for opt in param.opts}
        for word in words:
            if word.startswith("--"):
                assert word.split("=", 1)[0] in options, f"{line!r}: no option {word}"


# -- the Grafana dashboard --------------------------------------------------------------


def test_the_dashboard_is_a_schema_39_dashboard_with_datasource_tier_and_queue_variables() -> None:
    # Given the dashboard
    board = dashboard()
    # Then it is a schema-39 dashboard with a title and a uid
    assert board["schemaVersion"] == 39
    assert board["title"]
    assert board["uid"]
    # And its variables: the Prometheus data source, then tier and queue from label_values
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    for name in ("tier", "queue"):
        assert variables[name]["type"] == "query"
        assert variables[name]["datasource"] == {"type": "prometheus", "uid": DS_UID}
        query = re.fullmatch(r"label_values\((.+), *(\w+)\)", variables[name]["query"]["query"])
        assert query, variables[name]["query"]
        assert query.group(2) == name
        assert metric_names(query.group(1)) <= KNOWN_METRICS


def test_every_panel_queries_prometheus_with_known_metrics_only() -> None:
    # Given the dashboard's panels
    board = dashboard()
    queried = set()
    ids = [panel["id"] for panel in panels(board)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels(board):
        if panel["type"] == "row":
            continue
        # Then each panel queries the templated Prometheus data source
        assert panel["datasource"] == {"type": "prometheus", "uid": DS_UID}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == {"type": "prometheus", "uid": DS_UID}, panel["title"]
            used = metric_names(target["expr"])
            # And names only metrics that Triage exports
            assert used, f"{panel['title']}: no metric in {target['expr']}"
            assert used <= KNOWN_METRICS, f"{panel['title']}: unknown metrics {sorted(used - KNOWN_METRICS)}"
            queried |= used
    # And together the panels show the fleet: depth, priority, wait, SLA, throughput, failures,
    # breakers, tenants and worker utilisation
    assert {
        "triage_queue_messages",
        "triage_queue_messages_by_priority",
        "triage_message_wait_seconds_bucket",
        "triage_queue_sla_seconds",
        "triage_queue_oldest_waiting_seconds",
        "triage_queue_acked_total",
        "triage_messages_total",
        "triage_queue_dead_lettered_total",
        "triage_breaker_state",
        "triage_queue_tenants_held_back",
        "triage_message_run_seconds_sum",
        "triage_worker_threads",
        "triage_queue_workers",
    } <= queried


def test_the_dashboard_panels_do_not_overlap() -> None:
    # Given the panels' positions on Grafana's 24-column grid
    taken: dict[tuple[int, int], str] = {}
    for panel in dashboard()["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0, panel["title"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        # Then no two panels share a cell
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in taken, f"{panel['title']!r} overlaps {taken[(x, y)]!r}"
                taken[(x, y)] = panel["title"]


def test_the_dashboard_fits_grafanas_own_dashboard_schema() -> None:
    """Grafana publishes no JSON Schema for dashboards in a package registry; its foundation SDK
    (grafana-foundation-sdk on PyPI) holds Python models generated from Grafana's dashboard and
    panel schemas. The dashboard must read into them with no key left over (no unknown field),
    each value of its schema type (enumerations included), each panel a known panel type and
    each query a Prometheus query."""
    # Given Grafana's models (a dev dependency: nothing is installed here)
    sdk = pytest.importorskip(
        "grafana_foundation_sdk.models.dashboard",
        reason="grafana-foundation-sdk is not installed (dev dependency: grafana-foundation-sdk==1769699734!11.0.0)",
    )
    encoder = pytest.importorskip("grafana_foundation_sdk.cog.encoder")
    plugins = pytest.importorskip("grafana_foundation_sdk.cog.plugins")
    runtime = pytest.importorskip("grafana_foundation_sdk.cog.runtime")
    prometheus = pytest.importorskip("grafana_foundation_sdk.models.prometheus")
    plugins.register_default_plugins()
    source = dashboard()
    # When the dashboard is read into them, and written back
    model = sdk.Dashboard.from_json(source)
    read_back = json.loads(json.dumps(model, cls=encoder.JSONEncoder))
    # Then nothing was left over, and every value fits its type
    assert dropped_keys(source, read_back) == []
    assert model_problems(model, "$") == []
    # And every panel is of a type Grafana knows, every query a Prometheus one
    for panel in model.panels:
        if panel.type_val != "row":
            assert runtime.panelcfg_config(panel.type_val) is not None, panel.type_val
            assert all(isinstance(target, prometheus.Dataquery) for target in panel.targets), panel.title

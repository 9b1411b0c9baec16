"""The `triage` CLI as an operator runs it: stats from Redis, config without secrets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis

import triage as triage_package
from actors import runtime
from tests import worker_actors
from tests.helpers import ROOT, dramatiq_worker, env_with, triage, wait_for
from tests.integration.test_deploy_manifests import procfile

broker = runtime.broker
CONTRACT_FIELDS = {"queued", "delayed", "running", "dead_letters_total", "paused"}
DEPLOY = ROOT / "triage" / "deploy"  # what `triage deploy-files` copies out of the package


def test_stats_json_counts_queued_delayed_running_and_dead(r: redis.Redis) -> None:
    # Given queued, delayed, running and dead-lettered messages
    for i in range(3):
        worker_actors.record_background.send(f"b{i}")
    worker_actors.record_background.send_with_options(args=("later",), delay=60_000)
    worker_actors.always_fails.send("x")
    worker_actors.wait_for_release.send("slow")
    with dramatiq_worker("actors", "tests.worker_actors", queues=["critical", "default"]):
        wait_for(lambda: r.zcard(broker.keys("critical").dead) == 1)
        wait_for(lambda: b"started:slow" in r.lrange(worker_actors.DONE, 0, -1))
        # When an operator asks for the stats while the slow message runs
        done = triage("stats", "--json")
        r.rpush("test:release", "go")
    # Then the JSON has the contract's shape and the right counts
    assert done.returncode == 0, done.stderr
    queues = json.loads(done.stdout)["queues"]
    assert {"critical", "default", "background", "email", "reports"} <= set(queues)
    # And every queue carries the tier it belongs to, as the worker recorded it in Redis
    assert {q: queues[q]["tier"] for q in ("email", "reports", "critical")} == {
        "email": "default",
        "reports": "background",
        "critical": "critical",
    }
    for row in queues.values():
        assert set(row) >= CONTRACT_FIELDS
        assert row["paused"] is False
    assert queues["background"]["queued"] == 3
    assert queues["background"]["delayed"] == 1
    assert queues["critical"]["dead_letters_total"] == 1
    assert queues["default"]["running"] == 1
    assert queues["critical"]["queued"] == queues["critical"]["running"] == 0


def test_stats_table(r: redis.Redis) -> None:
    worker_actors.record_critical.send("c")
    done = triage("stats")
    assert done.returncode == 0, done.stderr
    header, *rows = done.stdout.splitlines()
    assert "dead_letters_total" in header
    critical = next(row for row in rows if row.startswith("critical"))
    assert critical.split()[:3] == ["critical", "critical", "1"]


def test_stats_names_unreachable_redis_without_password() -> None:
    done = triage("stats", env=env_with(REDIS_URL="redis://:hunter2@127.0.0.1:1/0"))
    assert done.returncode == 1
    assert "cannot reach Redis at redis://:***@127.0.0.1:1/0" in done.stderr
    assert "hunter2" not in done.stdout + done.stderr
    assert "Traceback" not in done.stderr


def test_config_redacts_the_password() -> None:
    done = triage("config", "--json", env=env_with(REDIS_URL="redis://admin:hunter2@10.0.0.5:6380/2"))
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["redis_url"] == "redis://admin:***@10.0.0.5:6380/2"
    assert "hunter2" not in done.stdout


def test_bad_configuration_exits_2_naming_the_variable() -> None:
    done = triage("stats", env=env_with(TRIAGE_MAX_PAYLOAD_BYTES="lots"))
    assert done.returncode == 2
    assert "TRIAGE_MAX_PAYLOAD_BYTES: Input should be a valid integer" in done.stderr
    assert "Traceback" not in done.stderr


def test_queues_of_a_tier_for_the_procfile() -> None:
    done = triage("queues", "background")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["background", "reports"]
    extra = triage("queues", "default", env=env_with(TRIAGE_QUEUES='{"sms": "default"}'))
    assert extra.stdout.split() == ["default", "email", "sms"]


def test_pause_and_resume_from_the_cli(r: redis.Redis) -> None:
    # Given a message on the critical queue
    worker_actors.record_critical.send("c")
    # When an operator pauses the queue
    paused = triage("pause", "critical")
    assert paused.returncode == 0, paused.stderr
    # Then it is persisted in Redis and shown by stats
    assert broker.is_paused("critical")
    assert json.loads(triage("stats", "--json").stdout)["queues"]["critical"]["paused"] is True
    # And resume clears it
    resumed = triage("resume", "critical")
    assert resumed.returncode == 0, resumed.stderr
    assert not broker.is_paused("critical")


def test_pause_of_an_unknown_queue_names_the_known_ones() -> None:
    done = triage("pause", "nope")
    assert done.returncode == 2
    assert "unknown queue 'nope'; known queues: critical, default, background" in done.stderr


def test_demo_keeps_going_while_redis_is_unreachable() -> None:
    # Given no Redis at the configured URL
    done = triage("demo", "--rate", "5", "--duration", "2", env=env_with(REDIS_URL="redis://127.0.0.1:1/0"))
    # Then the demo reports the outage and retries until its time is up, without a traceback
    assert done.returncode == 0, done.stderr
    assert "Redis unavailable" in done.stderr
    assert "Traceback" not in done.stderr


def test_operator_commands_work_while_the_app_fails_to_import(r: redis.Redis) -> None:
    # Given an app module that cannot be imported, and a message on the critical queue
    worker_actors.record_critical.send("c")
    broken = env_with(TRIAGE_APP="tests.no_such_app")
    # When an operator asks for the stats and pauses a queue
    stats = triage("stats", "--json", env=broken)
    paused = triage("pause", "critical", env=broken)
    # Then both work from Redis alone
    assert stats.returncode == 0, stats.stderr
    assert json.loads(stats.stdout)["queues"]["critical"]["queued"] == 1
    assert paused.returncode == 0, paused.stderr
    assert broker.is_paused("critical")
    # While `triage queues`, which needs the app's taxonomy, says which app it could not load
    queues = triage("queues", "critical", env=broken)
    assert queues.returncode == 2
    assert "cannot load the app 'tests.no_such_app' (--app, TRIAGE_APP)" in queues.stderr
    assert "Traceback" not in queues.stderr


def test_queues_takes_the_app_from_the_option() -> None:
    # Given the app named on the command line instead of the default
    done = triage("queues", "background", "--app", "tests.worker_actors")
    # Then its taxonomy is the one listed (the test actors import the service's actors)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["background", "reports"]


def test_config_without_an_app_shows_the_environment(tmp_path: Path) -> None:
    # Given a directory with no `actors` module (a library user's shell)
    done = triage("config", "--json", cwd=tmp_path)
    # Then the environment's settings are shown, with a note that no app was found
    assert done.returncode == 0, done.stderr
    assert "no app 'actors' here" in done.stderr
    assert json.loads(done.stdout)["routes"] == []


def test_demo_with_a_bad_configuration_exits_2_naming_the_variable() -> None:
    done = triage("demo", "--duration", "1", env=env_with(TRIAGE_MAX_PAYLOAD_BYTES="lots"))
    assert done.returncode == 2
    assert "TRIAGE_MAX_PAYLOAD_BYTES: Input should be a valid integer" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://:s3cret@host:notaport/0", "REDIS_URL: host 'host': the port must be a number from 1 to 65535"),
        ("redis://:s3cret@host:99999/0", "REDIS_URL: host 'host': the port must be a number from 1 to 65535"),
        ("redis://:pa&ssl_password=s3cret@127.0.0.1:99999/0", "REDIS_URL: is not valid; the details are not shown"),
    ],
)
def test_a_bad_redis_url_is_one_line_naming_redis_url_and_no_traceback(url: str, expected: str) -> None:
    # Given a REDIS_URL with a port no Redis listens on
    # When an operator asks for the stats
    done = triage("stats", env=env_with(REDIS_URL=url))
    # Then the command fails with one line naming REDIS_URL and the problem: no traceback, no password
    assert done.returncode in (1, 2)
    assert expected in done.stderr
    assert "Traceback" not in done.stderr
    assert "s3cret" not in done.stderr + done.stdout


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--rate", "nan"),
        ("--rate", "inf"),
        ("--rate", "0"),
        ("--rate", "-1"),
        ("--duration", "nan"),
        ("--duration", "inf"),
        ("--duration", "-1"),
    ],
)
def test_demo_refuses_a_rate_or_duration_that_is_not_a_finite_number(option: str, value: str) -> None:
    # Given a demo rate or duration that is NaN, infinite, or below what the option takes
    # When the demo is started with it
    done = triage("demo", option, value, timeout=20)
    # Then click refuses it naming the option, before anything is sent: no traceback
    assert done.returncode == 2
    assert f"Invalid value for '{option}'" in done.stderr
    assert "Traceback" not in done.stderr


# -- version and deploy files -------------------------------------------------------------


def test_version_names_the_package_version_and_the_distribution() -> None:
    # When an operator asks `triage --version`
    done = triage("--version")
    # Then it prints the package's version and the distribution's name, on one line
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"triage {triage_package.__version__} (dramatiq-triage)\n"


def test_deploy_files_writes_each_file_once_and_says_so(tmp_path: Path) -> None:
    # Given an app's directory
    target = tmp_path / "deploy"
    # When the deploy files are written into its `deploy` directory for the app `shop.tasks`
    done = triage("deploy-files", "deploy", "--app", "shop.tasks", cwd=tmp_path)
    # Then every file the package ships is there, as it is in the package
    assert done.returncode == 0, done.stderr
    shipped = sorted(p.relative_to(DEPLOY) for p in DEPLOY.rglob("*") if p.is_file())
    assert sorted(p.relative_to(target) for p in target.rglob("*") if p.is_file()) == shipped
    rules = Path("prometheus", "rules.yml")
    assert (target / rules).read_bytes() == (DEPLOY / rules).read_bytes()
    # And the output has one line per file, naming it, each readable at 100 columns
    lines = done.stdout.splitlines()
    assert len(lines) == len(shipped)
    for line, relative in zip(lines, shipped, strict=True):
        assert line.startswith(f"wrote {Path('deploy', relative)} "), line
        assert len(line) <= 100, line
    # And the Procfile's commands run the app's module, its comments still explain the placeholder
    procfile = (target / "Procfile").read_text()
    commands = [line for line in procfile.splitlines() if line and not line.startswith("#")]
    assert commands[1].startswith(
        "worker_critical: Q=$(triage queues critical --app shop.tasks) && exec dramatiq shop.tasks "
    )
    assert all("myapp.tasks" not in line for line in commands)


def test_deploy_files_without_app_keeps_the_placeholder_and_says_so(tmp_path: Path) -> None:
    # When the deploy files are written with no --app (and no TRIAGE_APP)
    env = env_with()
    env.pop("TRIAGE_APP", None)
    done = triage("deploy-files", "out", cwd=tmp_path, env=env)
    # Then the Procfile is the template, and the output says it must be edited
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "Procfile").read_bytes() == (DEPLOY / "Procfile").read_bytes()
    assert "myapp.tasks is a placeholder" in done.stdout.splitlines()[-1]


def test_deploy_files_refuses_to_overwrite_unless_forced(tmp_path: Path) -> None:
    # Given a directory where the runbook has been edited
    assert triage("deploy-files", "out", "--app", "shop", cwd=tmp_path).returncode == 0
    (tmp_path / "out" / "RUNBOOK.md").write_text("our own runbook")
    (tmp_path / "out" / "grafana" / "triage.json").unlink()
    # When the deploy files are written again
    again = triage("deploy-files", "out", "--app", "shop", cwd=tmp_path)
    # Then it exits 2 naming the files in the way, and writes none (not even the missing one)
    assert again.returncode == 2
    assert "none written (--force overwrites them)" in again.stderr
    assert "out/RUNBOOK.md" in again.stderr
    assert (tmp_path / "out" / "RUNBOOK.md").read_text() == "our own runbook"
    assert not (tmp_path / "out" / "grafana" / "triage.json").exists()
    # And with --force, it overwrites them
    forced = triage("deploy-files", "out", "--app", "shop", "--force", cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert (tmp_path / "out" / "RUNBOOK.md").read_bytes() == (DEPLOY / "RUNBOOK.md").read_bytes()


@pytest.mark.parametrize("app", ["my app", "shop.tasks; rm -rf /", "shop..tasks", "1shop", ""])
def test_deploy_files_refuses_an_app_that_is_not_a_module_name(tmp_path: Path, app: str) -> None:
    # When --app is not a dotted Python module name (it goes into the Procfile's shell lines)
    done = triage("deploy-files", "out", "--app", app, cwd=tmp_path)
    # Then it exits 2 naming the problem, and writes nothing
    assert done.returncode == 2
    assert "--app must be a dotted Python module name" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


def test_deploy_files_refuses_a_file_as_the_directory(tmp_path: Path) -> None:
    # Given a file where the directory should be
    (tmp_path / "out").write_text("x")
    # When the deploy files are written there
    done = triage("deploy-files", "out", cwd=tmp_path)
    # Then it exits 2 naming the problem
    assert done.returncode == 2
    assert "is a file" in done.stderr or "not a directory" in done.stderr


def test_the_procfile_template_runs_the_services_commands_for_an_app() -> None:
    # Given the repository's Procfile (the service: `actors`) and the template the package ships
    service = procfile()
    template = {
        name.strip(): command.strip()
        for name, command in (
            line.split(":", 1) for line in (DEPLOY / "Procfile").read_text().splitlines() if line and line[0] != "#"
        )
    }
    # Then the template has the same processes, with the same commands, for the placeholder module
    app = "myapp.tasks"
    expected = {
        name: command.replace("dramatiq actors ", f"dramatiq {app} ")
        .replace("triage serve ", f"triage serve --app {app} ")
        .replace(") && exec", f" --app {app}) && exec")
        .replace("exec triage scheduler", f"exec triage scheduler --app {app}")
        for name, command in service.items()
    }
    assert template == expected
